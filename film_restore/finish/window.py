"""What a face's last steps pass along: a window of frames and its faces, each face with what the
steps have added to it so far (film_restore.finish.steps)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from film_restore.faces.align import AlignmentTransform, crop_source
from film_restore.finish import ops
from film_restore.finish.flow import PairFlow
from film_restore.finish.grain_model import grain_window
from film_restore.records import AlignedFace, Frame

# (frame index, track number): a face in a chunk.
FaceKey = tuple[int, int]


@dataclass(eq=False)
class Surround:
    """The frame's RGB around one face (uint8 h x w x 3) and where it lies in the frame (its top-left
    pixel): what the crop is warped from and the grain's window, all the finishing steps read of the frame."""

    origin: tuple[int, int]
    rgb: np.ndarray
    sent: object = None  # the RGB on the device that read it last (uint8), once it is sent

    @classmethod
    def around(cls, frame_rgb: np.ndarray, aligned: AlignedFace, landmarks: np.ndarray) -> "Surround":
        rows, columns = cls.rectangle(frame_rgb.shape, aligned.transform, landmarks)
        return cls((rows.start, columns.start), frame_rgb[rows, columns])

    @staticmethod
    def rectangle(frame_shape: tuple, transform: AlignmentTransform, landmarks: np.ndarray) -> tuple[slice, slice]:
        """The frame rectangle a face's surround holds: what its crop is warped from (faces.align.crop_source)
        and its grain window."""
        source_rows, source_columns = crop_source(transform, frame_shape)
        rows, columns = grain_window(frame_shape, landmarks)
        return np.s_[min(source_rows.start, rows.start):max(source_rows.stop, rows.stop),
                     min(source_columns.start, columns.start):max(source_columns.stop, columns.stop)]

    def aligned(self, transform: AlignmentTransform) -> AlignmentTransform:
        """The face's alignment (frame to crop) for this surround's pixels instead of the frame's."""
        matrix = transform.matrix.copy()
        matrix[:, 2] += matrix[:, :2] @ np.array(self.origin[::-1], np.float64)
        return AlignmentTransform(matrix, transform.size)

    def read(self, region: tuple[slice, slice], like=None):
        """The frame's RGB over a rectangle inside this surround (frame coordinates): uint8 as the frame holds
        it, or float32 of like's kind and device (like: an array; on a device the surround is sent there once
        and each rectangle read there)."""
        rows, columns = region
        y0, x0 = self.origin
        inside = np.s_[rows.start - y0:rows.stop - y0, columns.start - x0:columns.stop - x0]
        if like is None:
            return self.rgb[inside]
        if ops.is_numpy(like):
            return ops.like(like, self.rgb[inside])
        if self.sent is None or self.sent.device != like.device:
            self.sent = ops.send(like, self.rgb)
        return ops.like(like, self.sent[inside])

    def covers(self, region: tuple[slice, slice]) -> bool:
        rows, columns = region
        y0, x0 = self.origin
        return (y0 <= rows.start and x0 <= columns.start and rows.stop <= y0 + self.rgb.shape[0]
                and columns.stop <= x0 + self.rgb.shape[1])


@dataclass(eq=False)
class WindowFace:
    """One face in a window: set by the steps in order (finish.steps)."""

    key: FaceKey
    position: int                   # its place among its track's faces that are restored
    aligned: AlignedFace
    actor: str | None
    landmarks: np.ndarray           # its 68 frame landmarks
    surround: Surround
    restored: object = None         # the restorer's crop (float32; numpy, or a tensor)
    flow: PairFlow | None = None    # from its track's face before it (position - 1)
    final: object = None            # the guarded crop
    region: object = None           # finish.paste.FaceRegion: the face in its frame (None: its matte reaches none)

    @property
    def frame(self) -> int:
        return self.key[0]

    @property
    def track(self) -> int:
        return self.key[1]


@dataclass(eq=False)
class Window:
    """Consecutive frames (or fields) of a chunk and their faces; shape: the frames' (height, width)."""

    frames: list[Frame]
    shape: tuple[int, int]
    faces: dict[FaceKey, WindowFace] = field(default_factory=dict)
    requests: list = field(default_factory=list)  # (keys, what restore returned), one per actor
    pictures: dict = field(default_factory=dict)  # frame index -> its picture with the faces blended in

    def tracks(self) -> dict[int, list[WindowFace]]:
        """The window's faces by track, in frame order."""
        by_track: dict[int, list[WindowFace]] = {}
        for key in sorted(self.faces, key=lambda key: (key[1], key[0])):
            by_track.setdefault(key[1], []).append(self.faces[key])
        return by_track

    def in_frame(self, index: int) -> list[WindowFace]:
        return [face for key, face in sorted(self.faces.items()) if key[0] == index]


def longest_run(faces: list[WindowFace]) -> list[WindowFace]:
    """The longest run of a track's faces at consecutive positions (the first of equal length)."""
    runs = [[faces[0]]] if faces else [[]]
    for face in faces[1:]:
        if face.position == runs[-1][-1].position + 1:
            runs[-1].append(face)
        else:
            runs.append([face])
    return max(runs, key=len)
