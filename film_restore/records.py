"""The records that flow one way through film_restore's stages, and across Ray as they are.

    Frame -> Face -> Track (of TrackedFace) within a Shot; Shots grouped into Chunks;
    Scan (the whole film's frames, shots, chunks) -> ChunkResult (what composing a chunk did);
    TrackOutline: a Track without its faces, for the report.

Records are frozen dataclasses (Frame and AlignedFace: named tuples); their numpy arrays
are private read-only copies, so a record cannot change after it is made. Coordinates are
frame pixels unless a field says otherwise. Only film_restore.workdir turns them into JSON.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


def _frozen_array(value, shape: tuple, name: str) -> np.ndarray:
    array = np.array(value, dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite numbers, got NaN or infinity")
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False, repr=False)
class Face:
    """One face found in one frame.

    box: (x1, y1, x2, y2) detector box; score: detector confidence in [0, 1];
    keypoints: 5 x 2 float32 (image-left eye, image-right eye, nose tip, image-left and
    image-right mouth corner); landmarks: 68 x 2 float32 in iBUG 300-W order;
    embedding: unit-length float32 identity vector (compare faces by dot product).
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray
    landmarks: np.ndarray
    embedding: np.ndarray

    def __post_init__(self):
        box = tuple(float(value) for value in np.asarray(self.box, dtype=np.float64).reshape(-1))
        if len(box) != 4 or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"Face box must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {self.box!r}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "keypoints", _frozen_array(self.keypoints, (5, 2), "Face keypoints"))
        object.__setattr__(self, "landmarks", _frozen_array(self.landmarks, (68, 2), "Face landmarks"))
        embedding = np.array(self.embedding, dtype=np.float32)
        if embedding.ndim != 1 or embedding.size == 0 or abs(float(np.linalg.norm(embedding)) - 1.0) > 1e-3:
            raise ValueError(f"Face embedding must be a non-empty unit-length vector, got shape {embedding.shape}")
        embedding.flags.writeable = False
        object.__setattr__(self, "embedding", embedding)

    def __repr__(self) -> str:
        box = ", ".join(f"{value:.1f}" for value in self.box)
        return f"Face(box=({box}), score={self.score:.3f}, embedding={self.embedding.size}-d)"


class Frame(NamedTuple):
    """One decoded frame: its number from 0 in decode order, its timestamp and its picture
    (a film_restore.video.Picture, in the film's own pixel format)."""

    index: int
    pts: int
    picture: object


class AlignedFace(NamedTuple):
    """One face warped to the FFHQ template, ready for DMDNet.

    crop: uint8 RGB size x size x 3 (None where it is left to be warped beside the restorer, on a GPU
    node: film_restore.finish.steps.WarpCrops); landmarks: 68 x 2 float32 in crop pixels;
    boxes: int64 4 x 4 component boxes (rows left eye, right eye, nose, mouth; columns
    x1, y1, x2, y2) as dmdnet.boxes.component_boxes gives them; transform: frame <-> crop
    (a film_restore.faces.align.AlignmentTransform).
    """

    crop: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray
    transform: object


@dataclass(frozen=True)
class Shot:
    """Frames first_frame..last_frame (inclusive, decoded frame numbers from 0) between two hard cuts."""

    index: int
    first_frame: int
    last_frame: int

    @property
    def frames(self) -> range:
        return range(self.first_frame, self.last_frame + 1)


@dataclass(frozen=True)
class Chunk:
    """Whole consecutive shots processed and encoded as one unit of work (and of resume)."""

    index: int
    shots: tuple[Shot, ...]

    @property
    def first_frame(self) -> int:
        return self.shots[0].first_frame

    @property
    def last_frame(self) -> int:
        return self.shots[-1].last_frame

    @property
    def frames(self) -> range:
        return range(self.first_frame, self.last_frame + 1)


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """A track's face in one frame; interpolated when the detector missed it and the track bridged the gap."""

    frame: int
    face: Face
    interpolated: bool = False


@dataclass(frozen=True, eq=False)
class Track:
    """One person's face followed through consecutive frames of one shot; one actor or none."""

    shot: int
    faces: tuple[TrackedFace, ...]
    actor: str | None = None
    similarity: float = 0.0

    @property
    def first_frame(self) -> int:
        return self.faces[0].frame

    @property
    def last_frame(self) -> int:
        return self.faces[-1].frame


@dataclass(frozen=True, eq=False)
class TrackOutline:
    """What the report needs of a Track, without its faces: a film's outlines fit in the driver's memory,
    its faces do not. `faces` stands for the track's faces in number only (len() counts them)."""

    shot: int
    first_frame: int
    last_frame: int
    actor: str | None
    similarity: float
    faces: range

    @classmethod
    def of(cls, track: Track) -> "TrackOutline":
        return cls(track.shot, track.first_frame, track.last_frame, track.actor, track.similarity, range(len(track.faces)))


@dataclass(frozen=True)
class Scan:
    """The whole film as decoded once: every frame's timestamp, its shots and the chunks of work."""

    frame_pts: tuple[int, ...]
    shots: tuple[Shot, ...]
    chunks: tuple[Chunk, ...]


@dataclass
class ChunkResult:
    """What composing one chunk did: counts, and the guards' measures per track.
    An interlaced film's fields are restored as pictures of their own: faces count fields, frames count frames."""

    index: int
    frames: int
    faces: int
    faces_too_small: int = 0  # left as they were: smaller than the run's min_face
    # restored in part only, so they change from frame to frame no more than the input (compose.paste_window)
    faces_held_still: int = 0
    faces_left_by_edits: int = 0  # left as they were: an edits file's actor: none or skip: true (film_restore.edits)
    faces_by_actor: dict[str, int] = field(default_factory=dict)
    tracks: list[dict] = field(default_factory=list)  # per guarded track: guards.summarise and its number
    # Interlaced films: the face regions' combing summed over frames, input and output (film_restore.interlace).
    combing: dict = field(default_factory=dict)
