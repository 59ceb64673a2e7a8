"""The compose stage: a chunk's faces restored, pasted back into its frames in their native
pixel format, and the chunk encoded."""
from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from film_restore.faces import align_face
from film_restore.paste import face_layer
from film_restore.records import Chunk, ChunkResult, Track
from film_restore.settings import GRAIN, MIN_FACE
from film_restore.texture import TrackGrain, texture_ratio
from film_restore.video import ChunkWriter, VideoInfo, read_frames

# Frames whose faces are sent to the restorers together: faces batch across frames.
COMPOSE_WINDOW = 8
# Side of the before/after thumbnails kept for the report.
SAMPLE_SIDE = 128


def _thumbnail(rgb: np.ndarray) -> str:
    small = cv2.resize(np.clip(rgb, 0, 255).astype(np.uint8), (SAMPLE_SIDE, SAMPLE_SIDE), interpolation=cv2.INTER_AREA)
    return base64.b64encode(cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])[1]).decode()


class Composer:
    """Restores one chunk's faces and encodes the chunk.

    restore(crops, boxes, actor) -> float32 restored crops: a restorer's method (on Ray, a
    function that calls a restore actor and waits). face_size: the side of the aligned faces
    the model restores (its image_size: 512 for the authors' model). Faces whose box is
    narrower or shorter than min_face pixels are left as they are, and counted. grain:
    "auto" re-creates the film's grain on restored faces (texture.TrackGrain), "off" does not.
    """

    def __init__(self, info: VideoInfo, codec: str, restore: Callable, face_size: int, min_face: int = MIN_FACE,
                 grain: str = GRAIN):
        self.info = info
        self.codec = codec
        self.restore = restore
        self.face_size = face_size
        self.min_face = min_face
        self.grain = grain
        self.track_grain = None

    def __call__(self, chunk: Chunk, tracks: list[Track], frame_pts, output: Path) -> ChunkResult:
        result = ChunkResult(chunk.index, 0, 0)
        faces_in_frame = defaultdict(list)
        sample_frames = {}
        for number, track in enumerate(tracks):
            for tracked in track.faces:
                x1, y1, x2, y2 = tracked.face.box
                if min(x2 - x1, y2 - y1) < self.min_face:
                    result.faces_too_small += 1
                else:
                    faces_in_frame[tracked.frame].append((number, tracked.face, track.actor))
            sample_frames[number] = track.faces[len(track.faces) // 2].frame
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
        for frame in window:
            faces = faces_in_frame.get(frame.index, [])
            if faces:
                rgb = frames_rgb[frame.index] = frame.picture.rgb()
                for number, face, actor in faces:
                    aligned[frame.index, number] = (align_face(rgb, face, self.face_size), actor)
                    landmarks[frame.index, number] = face.landmarks
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
        for frame in window:
            keys = [key for key in aligned if key[0] == frame.index]
            pairs = [(aligned[key][0], restored[key]) for key in keys]
            picture = frame.picture
            if pairs:
                grain = [self.track_grain.for_face(*key) for key in keys] if self.track_grain is not None else None
                layer, alpha = face_layer((self.info.height, self.info.width), pairs, frames_rgb[frame.index], grain)
                picture = picture.blended(layer, alpha)
                for key in keys:
                    if sample_frames.get(key[1]) == frame.index:
                        ratio = texture_ratio(frames_rgb[frame.index], picture.rgb(), landmarks[key])
                        texture[key] = round(ratio, 3) if np.isfinite(ratio) else None
            writer.write(picture, frame.pts)
            result.frames += 1
            result.faces += len(pairs)
        for (index, number), (face, actor) in aligned.items():
            if sample_frames.get(number) == index:
                result.samples.append(
                    {"frame": index, "actor": actor, "before": _thumbnail(face.crop), "after": _thumbnail(restored[index, number]),
                     "texture_ratio": texture[index, number]}
                )
