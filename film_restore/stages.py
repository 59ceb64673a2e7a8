"""The pipeline's first two stages, as small classes that load in __init__ and work in __call__.

Scanner      decodes the film once: every frame's timestamp, a signature for shot cuts,
             shots, and chunks of whole shots.
FaceTracker  per chunk: faces on every frame (every field of an interlaced film; detected on
             every DETECT_EVERY-th, followed in between), tracks within shots, smoothing, identities.

The third, composing a chunk (restore, paste back, encode), is film_restore.compose.Composer;
film_restore.pipeline runs all three on Ray.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from film_restore.faces import FaceAnalyzer
from film_restore.faces.identity import Identifier
from film_restore.interlace import field_frames, field_shot
from film_restore.records import Chunk, Scan, Track
from film_restore.following import FaceFollower
from film_restore.settings import DETECT_EVERY, DETECTOR_SIZE
from film_restore.shots import chunk_shots, find_shots, frame_signature
from film_restore.tracking import identify_tracks, smooth_track, track_shot
from film_restore.video import read_frames


class Scanner:
    """Decodes every frame once; frame count and timestamps come from here, not the header."""

    def __init__(self, chunk_frames: int):
        self.chunk_frames = chunk_frames

    def __call__(self, path: Path, progress: Callable[[int], None] = lambda frames: None) -> Scan:
        timestamps, signatures = [], []
        for frame in read_frames(path):
            timestamps.append(frame.pts)
            signatures.append(frame_signature(frame.picture.rgb()))
            if frame.index % 100 == 99:
                progress(frame.index + 1)
        progress(len(timestamps))
        shots = find_shots(np.stack(signatures))
        return Scan(tuple(timestamps), tuple(shots), tuple(chunk_shots(shots, self.chunk_frames)))


class FaceTracker:
    """Tracks and identities of chunks' faces: one set of face models, loaded once."""

    def __init__(self, models_dir, identifier: Identifier, detector_size: int = DETECTOR_SIZE,
                 field_order: str | None = None, detect_every: int = DETECT_EVERY):
        self.follower = FaceFollower(FaceAnalyzer.from_models_dir(models_dir, detector_size=detector_size), detect_every)
        self.identifier = identifier
        self.field_order = field_order  # interlace.restored_field_order: tracks then count fields, not frames

    def __call__(self, path: Path, chunk: Chunk, frame_pts) -> list[Track]:
        frames = read_frames(path, chunk.first_frame, chunk.last_frame, frame_pts)
        shots = chunk.shots
        if self.field_order is not None:
            frames, shots = field_frames(frames, self.field_order), [field_shot(shot) for shot in shots]
        faces_by_frame = self.follower.faces_of_shots(frames, shots)
        tracks = [smooth_track(track) for shot in shots for track in track_shot(shot, faces_by_frame)]
        return identify_tracks(tracks, self.identifier)
