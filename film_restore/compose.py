"""The compose stage: a chunk's faces restored, guarded along their tracks, pasted back into the
frames in their native pixel format with the film's texture, and the chunk encoded."""
from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np

from film_restore.faces import align_face
from film_restore.guards import AUTO, TrackGuard, TrackResult, strength_of, summarise
from film_restore.interlace import FieldWeaver, field_frames, restored_field_order
from film_restore.paste import composite, face_regions, with_grain
from film_restore.records import Chunk, ChunkResult, Track
from film_restore.settings import GRAIN, MIN_FACE, STRENGTH
from film_restore.grain import TrackGrain
from film_restore.texture import texture_ratio
from film_restore.video import ChunkWriter, VideoInfo, read_frames

# Frames whose faces are sent to the restorers together: faces batch across frames.
COMPOSE_WINDOW = 8
# Side of the before/after thumbnails of the aligned face kept for the report.
SAMPLE_SIDE = 128
# Largest side of the before/after crops of the frame around the face, kept at 1:1 scale (the film's texture).
DETAIL_SIDE = 160
THUMBNAIL_QUALITY = 85
DETAIL_QUALITY = 90
# Per-face series kept for the report's plots are rounded to this many decimals.
SERIES_DECIMALS = 3


@dataclass(frozen=True)
class ComposeSettings:
    """How a film's chunks are composed. face_size: the side of the aligned faces the model
    restores (its image_size: 512 for the authors' model). Faces whose box is narrower or
    shorter than min_face pixels are left as they are, and counted. grain: "auto" re-creates
    the film's grain on restored faces (grain.TrackGrain), "off" does not (the grain is
    estimated either way: the frame's detail kept above the crop's resolution leaves it out). strength: the
    run's (guards.parse_strength), actor_strengths: the cast file's per actor (auto also holds each face
    to the film's own change from frame to frame: paste_window); references:
    actor -> identity centroid and models_dir: the face models whose recogniser the identity
    guard uses (None: no guards, the restorer's faces are pasted as they are)."""

    codec: str
    face_size: int
    min_face: int = MIN_FACE
    grain: str = GRAIN
    strength: float | str = STRENGTH
    actor_strengths: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
    models_dir: str | None = None


class _SentWindow(NamedTuple):
    """A window whose faces are aligned and sent to the restorers."""

    frames: list
    aligned: dict
    requests: dict          # actor -> (the window's keys of that actor, what restore returned: crops or a request in flight)
    rgb: dict
    landmarks: dict


class _RestoredWindow(NamedTuple):
    frames: list            # the window's Frames
    aligned: dict           # (frame, track number) -> (AlignedFace, actor)
    restored: dict          # (frame, track number) -> restored crop
    rgb: dict               # frame -> its RGB (frames with faces)
    landmarks: dict         # (frame, track number) -> the face's 68 landmarks in the frame


def _jpeg(rgb: np.ndarray, quality: int) -> str:
    picture = np.clip(rgb, 0, 255).astype(np.uint8)
    return base64.b64encode(cv2.imencode(".jpg", picture[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1]).decode()


def _thumbnail(rgb: np.ndarray) -> str:
    return _jpeg(cv2.resize(np.clip(rgb, 0, 255).astype(np.uint8), (SAMPLE_SIDE, SAMPLE_SIDE),
                            interpolation=cv2.INTER_AREA), THUMBNAIL_QUALITY)


def _detail(before: np.ndarray, after: np.ndarray, landmarks: np.ndarray) -> tuple[str, str]:
    """The frame around a face at 1:1 scale, input and output: at most DETAIL_SIDE square, centred on the landmarks."""
    height, width = before.shape[:2]
    side_x, side_y = min(DETAIL_SIDE, width), min(DETAIL_SIDE, height)
    centre_x, centre_y = np.asarray(landmarks, np.float64).mean(axis=0)
    x = int(np.clip(round(centre_x - side_x / 2), 0, width - side_x))
    y = int(np.clip(round(centre_y - side_y / 2), 0, height - side_y))
    return tuple(_jpeg(rgb[y:y + side_y, x:x + side_x], DETAIL_QUALITY) for rgb in (before, after))


def _series(parts: list[tuple[list[int], TrackResult]]) -> dict:
    """A track's per-face measures in frame order, small enough for the report: frame, identity in/out, strength."""
    rounded = lambda name: [round(float(value), SERIES_DECIMALS) for _, part in parts for value in getattr(part, name)]
    return {"frame": [frame for frames, _ in parts for frame in frames], "identity_in": rounded("identity_in"),
            "identity_out": rounded("identity_out"), "strength": rounded("strength")}


def paste_window(shape: tuple, window_faces: dict, rgb: dict, landmarks: dict, track_grain: TrackGrain,
                 add_grain: bool, held: set) -> dict:
    """One window's faces pasted back: frame -> (keys, pairs, (layer, alpha)) (paste.composite).

    window_faces: frame -> (keys (frame, track number), (AlignedFace, final crop) pairs);
    rgb: frame -> its RGB; landmarks: key -> the face's 68 frame landmarks. Each track's faces
    are measured on their layers without grain (grain.TrackGrain.measure_change): for the tracks
    in held (their strength is auto), where the restoration would make a face change more from
    frame to frame than its input, only the share that does not is kept; with add_grain, the
    layers then get fresh grain, adding no more change from frame to frame than the restoration
    took from the track."""
    regions = {index: face_regions(shape, pairs, rgb[index], [track_grain.for_face(*key) for key in keys])
               for index, (keys, pairs) in window_faces.items()}
    plain = {index: composite(shape, regions[index]) for index in window_faces}
    track_grain.measure_change({key: (rgb[index], *plain[index], landmarks[key])
                                for index, (keys, _) in window_faces.items() for key in keys}, held)
    pasted = {}
    for index, (keys, pairs) in window_faces.items():
        faces = [face.kept(rgb[index], track_grain.kept_share(keys[face.number][1])) for face in regions[index]]
        if add_grain:
            faces = with_grain(faces, rgb[index], [track_grain.for_face(*key) for key in keys])
        unchanged = all(face is region for face, region in zip(faces, regions[index]))
        pasted[index] = (keys, pairs, plain[index] if unchanged else composite(shape, faces))
    return pasted


class Composer:
    """Restores one chunk's faces and encodes the chunk (an interlaced film's field by field: film_restore.interlace).

    restore(crops, boxes, actor) -> float32 restored crops, or a request in flight whose
    result() gives them (on Ray, pipeline.cluster.RemoteRestore): the next window is decoded,
    aligned and sent before the previous window's faces are waited for, so decoding, blending
    and encoding overlap the restorer's work (the output is the same either way).

    Faces are restored COMPOSE_WINDOW frames at a time; with guards, a window is written only
    once the next one is restored, and each track's faces in it are guarded with the window
    before and after as context (guards.GUARD_HORIZON <= COMPOSE_WINDOW): the result is that
    of guarding whole tracks (but for the input's effective resolution, estimated over those
    three windows) while no more than three windows are held.
    """

    def __init__(self, info: VideoInfo, settings: ComposeSettings, restore: Callable):
        self.info = info
        self.settings = settings
        self.restore = restore
        self.guard = None if settings.models_dir is None else TrackGuard.from_models_dir(
            settings.models_dir, settings.references, settings.strength, settings.actor_strengths)

    def __call__(self, chunk: Chunk, tracks: list[Track], frame_pts, output: Path) -> ChunkResult:
        result = ChunkResult(chunk.index, 0, 0)
        faces_in_frame = defaultdict(list)
        sample_frames = {}
        for number, track in enumerate(tracks):
            for tracked in track.faces:
                x1, y1, x2, y2 = tracked.face.box
                if min(x2 - x1, y2 - y1) < self.settings.min_face:
                    result.faces_too_small += 1
                else:
                    faces_in_frame[tracked.frame].append((number, tracked.face, track.actor))
            sample_frames[number] = track.faces[len(track.faces) // 2].frame
        track_grain = TrackGrain()  # track numbers are per chunk
        guarded_parts = defaultdict(list)  # track number -> (frames, TrackResult) of its faces, window by window
        restored_windows, next_to_write = [], 0

        def write_ready(final: bool) -> None:
            nonlocal next_to_write
            lookahead = 0 if final or self.guard is None else 1
            while next_to_write < len(restored_windows) - lookahead:
                self._write_window(restored_windows, next_to_write, sample_frames, track_grain, writer, result,
                                   guarded_parts)
                next_to_write += 1
                if next_to_write > 1:  # the window before the next one to write is all the context kept
                    restored_windows.pop(0)
                    next_to_write -= 1

        order = restored_field_order(self.info)  # interlaced: each field restored as a picture of its own
        with ChunkWriter(output, self.info, self.settings.codec) as encoder:
            writer = encoder if order is None else FieldWeaver(encoder, order)
            frames = read_frames(self.info.path, chunk.first_frame, chunk.last_frame, frame_pts)
            window, sent = [], None  # sent: the window whose faces the restorers have

            def send_and_collect(pictures) -> None:
                nonlocal sent
                previous, sent = sent, self._send_window(pictures, faces_in_frame, result) if pictures else None
                if previous is not None:
                    restored_windows.append(self._collect_window(previous, track_grain))
                    write_ready(final=False)

            for frame in frames if order is None else field_frames(frames, order):
                window.append(frame)
                if len(window) == COMPOSE_WINDOW:
                    send_and_collect(window)
                    window = []
            send_and_collect(window)
            send_and_collect(None)
            write_ready(final=True)
            if order is not None:
                writer.close()
                result.combing = writer.combing
        result.frames = encoder.frames_written
        if result.frames != len(chunk.frames):
            raise RuntimeError(f"chunk {chunk.index}: decoded {result.frames} frames, expected {len(chunk.frames)}")
        result.tracks = [{"track": number, **summarise([part for _, part in parts]), "series": _series(parts)}
                         for number, parts in sorted(guarded_parts.items())]
        return result

    def _send_window(self, window, faces_in_frame, result: ChunkResult) -> _SentWindow:
        """The window's faces aligned and sent to the restorers, one request per actor."""
        aligned, rgb, landmarks = {}, {}, {}
        for frame in window:
            faces = faces_in_frame.get(frame.index, [])
            if faces:
                rgb[frame.index] = frame.picture.rgb()
                for number, face, actor in faces:
                    aligned[frame.index, number] = (align_face(rgb[frame.index], face, self.settings.face_size), actor)
                    landmarks[frame.index, number] = face.landmarks
        by_actor = defaultdict(list)
        for key, (_, actor) in aligned.items():
            by_actor[actor].append(key)
        requests = {}
        for actor, keys in by_actor.items():
            crops = np.stack([aligned[key][0].crop for key in keys])
            boxes = np.stack([aligned[key][0].boxes for key in keys])
            requests[actor] = (keys, self.restore(crops, boxes, actor))
            result.faces_by_actor[actor or ""] = result.faces_by_actor.get(actor or "", 0) + len(keys)
        return _SentWindow(window, aligned, requests, rgb, landmarks)

    @staticmethod
    def _collect_window(sent: _SentWindow, track_grain: TrackGrain) -> _RestoredWindow:
        """The window with its restored faces, waited for. The grain observes the window here, where
        it did when each window was restored before the next was read, so the output is unchanged."""
        track_grain.observe({key: (sent.rgb[key[0]], points) for key, points in sent.landmarks.items()})
        restored = {}
        for keys, request in sent.requests.values():
            restored.update(zip(keys, request.result() if hasattr(request, "result") else request))
        return _RestoredWindow(sent.frames, sent.aligned, restored, sent.rgb, sent.landmarks)

    def _guarded(self, restored_windows, position: int, guarded_parts) -> dict:
        """The window's final crops: each track guarded over this window and its neighbours."""
        current = restored_windows[position]
        if self.guard is None:
            return current.restored
        context = {}
        for near in restored_windows[max(position - 1, 0):position + 2]:
            for key in near.aligned:
                context[key] = (near.aligned[key], near.restored[key])
        final = {}
        for number in sorted({number for _, number in current.aligned}):
            keys = sorted(key for key in context if key[1] == number)
            actor = context[keys[0]][0][1]
            track_result = self.guard(np.stack([context[k][0][0].crop for k in keys]),
                                      np.stack([context[k][1] for k in keys]), actor)
            part = track_result.part(np.array([key in current.aligned for key in keys]))
            current_keys = [k for k in keys if k in current.aligned]
            guarded_parts[number].append(([frame for frame, _ in current_keys], part))
            final.update(zip(current_keys, part.faces))
        return final

    def _write_window(self, restored_windows, position: int, sample_frames, track_grain, writer, result: ChunkResult,
                      guarded_parts) -> None:
        current = restored_windows[position]
        final = self._guarded(restored_windows, position, guarded_parts)
        details = {}  # (frame, track number) -> texture ratio and the 1:1 crops, on each track's sample frame
        window_faces = {}
        for frame in current.frames:
            keys = [key for key in current.aligned if key[0] == frame.index]
            if keys:
                window_faces[frame.index] = keys, [(current.aligned[key][0], final[key]) for key in keys]
        held = {number for (_, number), (_, actor) in current.aligned.items()
                if strength_of(actor, self.settings.strength, self.settings.actor_strengths) == AUTO}
        faces = paste_window((self.info.height, self.info.width), window_faces, current.rgb, current.landmarks,
                             track_grain, self.settings.grain == "auto", held)
        result.faces_held_still += sum(track_grain.kept_share(number) < 1
                                       for keys, _ in window_faces.values() for _, number in keys)
        for frame in current.frames:
            keys, pairs, (layer, alpha) = faces.get(frame.index, ([], [], (None, None)))
            picture = frame.picture
            if pairs:
                picture = picture.blended(layer, alpha)
                sampled = [key for key in keys if sample_frames.get(key[1]) == frame.index]
                before, after = current.rgb[frame.index], picture.rgb() if sampled else None
                for key in sampled:
                    ratio = texture_ratio(before, after, current.landmarks[key])
                    details[key] = {"texture_ratio": round(ratio, 3) if np.isfinite(ratio) else None,
                                    **dict(zip(("before_1to1", "after_1to1"), _detail(before, after, current.landmarks[key])))}
            writer.write(picture, frame.pts)
            result.faces += len(pairs)
        for (index, number), (face, actor) in current.aligned.items():
            if sample_frames.get(number) == index:
                result.samples.append({
                    "frame": index, "actor": actor, "before": _thumbnail(face.crop),
                    "after": _thumbnail(final[index, number]), **details[index, number],
                })
