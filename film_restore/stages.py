"""The pipeline's stages as small classes; `film_restore.pipeline` runs them on Ray.

Scanner     decodes the film once: every frame's timestamp and a signature for shot cuts.
Analyser    per chunk: faces on every frame, tracks within shots, smoothing, identities.
Composer    per chunk: aligned faces to a restorer, restored faces blended into the frames
            in their native pixel format, the chunk encoded.
"""
from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from film_restore.blend import face_layer
from film_restore.faces import FaceAnalyzer, align_face
from film_restore.guards import summarise
from film_restore.identity import Identifier
from film_restore.records import Chunk, Shot, Track
from film_restore.shots import chunk_shots, find_shots, frame_signature
from film_restore.tracking import identify_tracks, smooth_track, track_shot
from film_restore.video import ChunkWriter, VideoInfo, read_frames

# Frames whose faces are sent to the restorers together: faces batch across frames.
COMPOSE_WINDOW = 8
# Side of the before/after thumbnails kept for the report.
SAMPLE_SIDE = 128


@dataclass(frozen=True)
class Scan:
    frame_pts: tuple[int, ...]
    shots: tuple[Shot, ...]
    chunks: tuple[Chunk, ...]


class Scanner:
    """Decodes every frame once; frame count and timestamps come from here, not the header."""

    def __init__(self, chunk_frames: int):
        self.chunk_frames = chunk_frames

    def scan(self, path: Path, progress: Callable[[int], None] = lambda frames: None) -> Scan:
        timestamps, signatures = [], []
        for index, pts, picture in read_frames(path):
            timestamps.append(pts)
            signatures.append(frame_signature(picture.rgb()))
            if index % 100 == 99:
                progress(index + 1)
        progress(len(timestamps))
        shots = find_shots(np.stack(signatures))
        return Scan(tuple(timestamps), tuple(shots), tuple(chunk_shots(shots, self.chunk_frames)))


class Analyser:
    """Face analysis of chunks: one set of face models, loaded once."""

    def __init__(self, models_dir, identifier: Identifier, detector_size: int = 640):
        self.analyzer = FaceAnalyzer.from_models_dir(models_dir, detector_size=detector_size)
        self.identifier = identifier

    def analyse(self, path: Path, chunk: Chunk, frame_pts) -> list[Track]:
        faces_by_frame = {
            index: self.analyzer.analyze(picture.rgb())
            for index, _, picture in read_frames(path, chunk.first_frame, chunk.last_frame, frame_pts)
        }
        tracks = [smooth_track(track) for shot in chunk.shots for track in track_shot(shot, faces_by_frame)]
        return identify_tracks(tracks, self.identifier)


@dataclass
class ChunkResult:
    """What a composed chunk reports: counts, and before/after thumbnails per track (JPEG, base64)."""

    index: int
    frames: int
    faces: int
    faces_by_actor: dict[str, int] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    tracks: list[dict] = field(default_factory=list)  # per guarded track: guards.summarise and its number


def _thumbnail(rgb: np.ndarray) -> str:
    small = cv2.resize(np.clip(rgb, 0, 255).astype(np.uint8), (SAMPLE_SIDE, SAMPLE_SIDE), interpolation=cv2.INTER_AREA)
    return base64.b64encode(cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])[1]).decode()


class Composer:
    """Restores one chunk's faces and encodes the chunk.

    restore(crops, boxes, actor) -> float32 restored crops: a restorer actor's method (on
    Ray, a function that calls it remotely and waits). face_size: the side of the aligned
    faces the model restores (its image_size: 512 for the authors' model). guard: a
    guards.TrackGuard (inputs, restored, actor) -> TrackResult, or None to paste the
    restorer's faces as they are.

    Faces are restored COMPOSE_WINDOW frames at a time; with a guard, a window is written
    only once the next one is restored, and each track's faces in it are guarded with the
    window before and after as context (guards.GUARD_HORIZON <= COMPOSE_WINDOW): the result
    is that of guarding whole tracks (but for the input's effective resolution, estimated
    over those three windows) while no more than three windows are held.
    """

    def __init__(self, info: VideoInfo, codec: str, restore: Callable, face_size: int = 512, guard: Callable | None = None):
        self.info = info
        self.codec = codec
        self.restore = restore
        self.face_size = face_size
        self.guard = guard

    def compose(self, chunk: Chunk, tracks: list[Track], frame_pts, output: Path) -> ChunkResult:
        faces_in_frame = defaultdict(list)
        sample_frames = {}
        for number, track in enumerate(tracks):
            for tracked in track.faces:
                faces_in_frame[tracked.frame].append((number, tracked.face, track.actor))
            sample_frames[number] = track.faces[len(track.faces) // 2].frame
        result = ChunkResult(chunk.index, 0, 0)
        guarded_parts = defaultdict(list)  # track number -> TrackResult of its faces, window by window
        window, restored_windows, next_to_write = [], [], 0

        def write_ready(final: bool) -> None:
            nonlocal next_to_write
            lookahead = 0 if final or self.guard is None else 1
            while next_to_write < len(restored_windows) - lookahead:
                self._write_window(restored_windows, next_to_write, sample_frames, writer, result, guarded_parts)
                next_to_write += 1
                if next_to_write > 1:  # the window before the next one to write is all the context kept
                    restored_windows.pop(0)
                    next_to_write -= 1

        with ChunkWriter(output, self.info, self.codec) as writer:
            for frame in read_frames(self.info.path, chunk.first_frame, chunk.last_frame, frame_pts):
                window.append(frame)
                if len(window) == COMPOSE_WINDOW:
                    restored_windows.append(self._restore_window(window, faces_in_frame, result))
                    window = []
                    write_ready(final=False)
            if window:
                restored_windows.append(self._restore_window(window, faces_in_frame, result))
            write_ready(final=True)
        if result.frames != len(chunk.frames):
            raise RuntimeError(f"chunk {chunk.index}: decoded {result.frames} frames, expected {len(chunk.frames)}")
        result.tracks = [{"track": number, **summarise(parts)} for number, parts in sorted(guarded_parts.items())]
        return result

    def _restore_window(self, window, faces_in_frame, result: ChunkResult) -> tuple:
        """(frames, {(frame, track number): (AlignedFace, actor)}, {(frame, track number): restored crop})."""
        aligned = {}
        for index, _, picture in window:
            faces = faces_in_frame.get(index, [])
            if faces:
                rgb = picture.rgb()
                for number, face, actor in faces:
                    aligned[index, number] = (align_face(rgb, face, self.face_size), actor)
        restored = {}
        by_actor = defaultdict(list)
        for key, (_, actor) in aligned.items():
            by_actor[actor].append(key)
        for actor, keys in by_actor.items():
            crops = np.stack([aligned[key][0].crop for key in keys])
            boxes = np.stack([aligned[key][0].boxes for key in keys])
            restored.update(zip(keys, self.restore(crops, boxes, actor)))
            result.faces_by_actor[actor or ""] = result.faces_by_actor.get(actor or "", 0) + len(keys)
        return window, aligned, restored

    def _guarded(self, restored_windows, position: int, guarded_parts) -> dict:
        """The window's final crops: each track guarded over this window and its neighbours."""
        _, aligned, restored = restored_windows[position]
        if self.guard is None:
            return restored
        context = {}
        for _, near_aligned, near_restored in restored_windows[max(position - 1, 0):position + 2]:
            for key in near_aligned:
                context[key] = (near_aligned[key], near_restored[key])
        final = {}
        for number in sorted({number for _, number in aligned}):
            keys = sorted(key for key in context if key[1] == number)
            actor = context[keys[0]][0][1]
            track_result = self.guard(np.stack([context[k][0][0].crop for k in keys]),
                                      np.stack([context[k][1] for k in keys]), actor)
            mine = np.array([key in aligned for key in keys])
            part = track_result.part(mine)
            guarded_parts[number].append(part)
            final.update(zip([k for k in keys if k in aligned], part.faces))
        return final

    def _write_window(self, restored_windows, position: int, sample_frames, writer, result: ChunkResult, guarded_parts) -> None:
        window, aligned, _ = restored_windows[position]
        final = self._guarded(restored_windows, position, guarded_parts)
        for index, pts, picture in window:
            pairs = [(aligned[key][0], final[key]) for key in aligned if key[0] == index]
            if pairs:
                layer, alpha = face_layer((self.info.height, self.info.width), pairs)
                picture = picture.blended(layer, alpha)
            writer.write(picture, pts)
            result.frames += 1
            result.faces += len(pairs)
        for (index, number), (face, actor) in aligned.items():
            if sample_frames.get(number) == index:
                result.samples.append(
                    {"frame": index, "actor": actor, "before": _thumbnail(face.crop), "after": _thumbnail(final[index, number])}
                )
