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
from film_restore.identity import Identifier
from film_restore.records import Chunk, Shot, Track
from film_restore.shots import chunk_shots, find_shots, frame_signature
from film_restore.texture import TrackGrain, texture_ratio
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


def _thumbnail(rgb: np.ndarray) -> str:
    small = cv2.resize(np.clip(rgb, 0, 255).astype(np.uint8), (SAMPLE_SIDE, SAMPLE_SIDE), interpolation=cv2.INTER_AREA)
    return base64.b64encode(cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])[1]).decode()


class Composer:
    """Restores one chunk's faces and encodes the chunk.

    restore(crops, boxes, actor) -> float32 restored crops: a restorer actor's method (on
    Ray, a function that calls it remotely and waits). face_size: the side of the aligned
    faces the model restores (its image_size: 512 for the authors' model). grain: "auto"
    re-creates the film's grain on restored faces (texture.TrackGrain), "off" does not.
    """

    def __init__(self, info: VideoInfo, codec: str, restore: Callable, face_size: int = 512, grain: str = "auto"):
        self.info = info
        self.codec = codec
        self.restore = restore
        self.face_size = face_size
        self.grain = grain
        self.track_grain = None

    def compose(self, chunk: Chunk, tracks: list[Track], frame_pts, output: Path) -> ChunkResult:
        faces_in_frame = defaultdict(list)
        sample_frames = {}
        for number, track in enumerate(tracks):
            for tracked in track.faces:
                faces_in_frame[tracked.frame].append((number, tracked.face, track.actor))
            sample_frames[number] = track.faces[len(track.faces) // 2].frame
        result = ChunkResult(chunk.index, 0, 0)
        self.track_grain = TrackGrain() if self.grain == "auto" else None  # track numbers are per chunk
        window = []
        with ChunkWriter(output, self.info, self.codec) as writer:
            for frame in read_frames(self.info.path, chunk.first_frame, chunk.last_frame, frame_pts):
                window.append(frame)
                if len(window) == COMPOSE_WINDOW:
                    self._compose_window(window, faces_in_frame, sample_frames, writer, result)
                    window = []
            if window:
                self._compose_window(window, faces_in_frame, sample_frames, writer, result)
        if result.frames != len(chunk.frames):
            raise RuntimeError(f"chunk {chunk.index}: decoded {result.frames} frames, expected {len(chunk.frames)}")
        return result

    def _compose_window(self, window, faces_in_frame, sample_frames, writer, result: ChunkResult) -> None:
        aligned = {}  # (frame, track number) -> (AlignedFace, actor)
        frames_rgb, landmarks = {}, {}
        for index, _, picture in window:
            faces = faces_in_frame.get(index, [])
            if faces:
                rgb = frames_rgb[index] = picture.rgb()
                for number, face, actor in faces:
                    aligned[index, number] = (align_face(rgb, face, self.face_size), actor)
                    landmarks[index, number] = face.landmarks
        if self.track_grain is not None:
            self.track_grain.observe({key: (frames_rgb[key[0]], points) for key, points in landmarks.items()})
        restored = {}
        by_actor = defaultdict(list)
        for key, (_, actor) in aligned.items():
            by_actor[actor].append(key)
        for actor, keys in by_actor.items():
            crops = np.stack([aligned[key][0].crop for key in keys])
            boxes = np.stack([aligned[key][0].boxes for key in keys])
            restored.update(zip(keys, self.restore(crops, boxes, actor)))
            result.faces_by_actor[actor or ""] = result.faces_by_actor.get(actor or "", 0) + len(keys)
        texture = {}  # (frame, track number) -> texture ratio, on each track's sample frame
        for index, pts, picture in window:
            keys = [key for key in aligned if key[0] == index]
            pairs = [(aligned[key][0], restored[key]) for key in keys]
            if pairs:
                grain = [self.track_grain.for_face(*key) for key in keys] if self.track_grain is not None else None
                layer, alpha = face_layer((self.info.height, self.info.width), pairs, frames_rgb[index], grain)
                picture = picture.blended(layer, alpha)
                for key in keys:
                    if sample_frames.get(key[1]) == index:
                        ratio = texture_ratio(frames_rgb[index], picture.rgb(), landmarks[key])
                        texture[key] = round(ratio, 3) if np.isfinite(ratio) else None
            writer.write(picture, pts)
            result.frames += 1
            result.faces += len(pairs)
        for (index, number), (face, actor) in aligned.items():
            if sample_frames.get(number) == index:
                result.samples.append(
                    {"frame": index, "actor": actor, "before": _thumbnail(face.crop), "after": _thumbnail(restored[index, number]),
                     "texture_ratio": texture[index, number]}
                )
