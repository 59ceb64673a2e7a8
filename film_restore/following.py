"""Faces on every frame of a shot with the detector on some frames only; between them, faces are followed.

The detector, with landmarks and embeddings (FaceAnalyzer.analyze), runs on the first frame
of a shot, then on every `detect_every`-th frame, and on the last. Between two detections
each face is followed by its landmarks alone: the landmarker runs on the crop predicted
from the face's previous two frames, and the face's box and 5 keypoints move with the
similarity that carries its landmarks from its last detection to this frame (the keypoints
keep their offsets from the landmarks they sit among, so mouth corners follow the mouth).
Once the next detection has found the face, the box and keypoints are carried from both
detections, each weighted by its nearness, so a track has no step where detection takes over.
A followed face keeps the embedding of its detection (identity needs a few per track, not
one per frame) and the lower detector score of the detections either side.

The detections either side of an interval decide whether following held within it: where
every face followed into the closing detection frame overlaps one detection there (IoU >=
MATCH_MIN_IOU) and every detection one followed face, the followed faces stand. Otherwise a
face came, went, or the detector missed one, and every frame of the interval is detected, as
without following. So a track begins and ends on the frames the detector finds it, and
track_shot links the same faces as it would with detection on every frame.

Following stops early, and the frame is detected, where a face's landmarks fit the
similarity badly (residual over MAX_FIT_RESIDUAL of the eye distance: a turn, an occlusion,
a landmarker lost on a background) or its eyes or nose leave the frame. BENCHMARKS.md
("Face analysis: detection every k-th frame") measures all of it against detection on
every frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Iterable, Sequence

import numpy as np

from film_restore.faces import FaceAnalyzer
from film_restore.faces.align import estimate_similarity
from film_restore.records import Face, Frame, Shot
from film_restore.settings import DETECT_EVERY
from film_restore.tracking import box_iou

# Landmarks that move with the head, not with speech or expression: nose and eyes (iBUG 27-47).
RIGID_POINTS = np.arange(27, 48)
LEFT_EYE, RIGHT_EYE, NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = slice(36, 42), slice(42, 48), 30, 48, 54
MAX_FIT_RESIDUAL = 0.06     # RMS of the rigid points about the similarity, / eye distance
MATCH_MIN_IOU = 0.5         # a followed face and a detection of it (one face in one frame: > 0.8)


@dataclass
class _Lineage:
    """One detected face and the faces it was followed to in the frames after it."""

    detected: Face
    followed: list[Face] = field(default_factory=list)

    @property
    def last(self) -> Face:
        return self.followed[-1] if self.followed else self.detected

    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        """(box, keypoints) in the next frame: the last two frames' motion carried on."""
        last = self.last
        box, keypoints = np.asarray(last.box), last.keypoints.astype(np.float64)
        if self.followed:
            before = self.followed[-2] if len(self.followed) > 1 else self.detected
            box, keypoints = 2 * box - np.asarray(before.box), 2 * keypoints - before.keypoints
        return box, keypoints


def landmark_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """The detector's 5 keypoints as the 68 landmarks place them: eye centres, nose tip, mouth corners."""
    return np.stack([landmarks[LEFT_EYE].mean(axis=0), landmarks[RIGHT_EYE].mean(axis=0),
                     landmarks[NOSE_TIP], landmarks[MOUTH_LEFT], landmarks[MOUTH_RIGHT]])


def eye_distance(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[LEFT_EYE].mean(axis=0) - landmarks[RIGHT_EYE].mean(axis=0)))


class FaceFollower:
    """The faces of every frame of a shot, detecting on every `detect_every`-th frame (1: on every frame)."""

    def __init__(self, analyzer: FaceAnalyzer, detect_every: int = DETECT_EVERY):
        if not isinstance(detect_every, (int, np.integer)) or detect_every < 1:
            raise ValueError(f"detect_every must be a whole number of frames >= 1, got {detect_every!r}")
        self.analyzer = analyzer
        self.detect_every = int(detect_every)
        self.detected_frames = 0  # frames the detector ran on, for the benches

    def faces_of_shots(self, frames: Iterable[Frame], shots: Sequence[Shot]) -> dict[int, list[Face]]:
        """Faces of each frame, by frame number; frames in order, each in one of the shots."""
        starts = [shot.first_frame for shot in shots]
        shot_of = lambda frame: int(np.searchsorted(starts, frame.index, side="right"))  # noqa: E731
        faces: dict[int, list[Face]] = {}
        for _, shot_frames in groupby(frames, key=shot_of):
            faces.update(self.faces_of_shot((frame.index, frame.picture.rgb()) for frame in shot_frames))
        return faces

    def faces_of_shot(self, frames: Iterable[tuple[int, np.ndarray]]) -> dict[int, list[Face]]:
        """Faces of each (frame number, uint8 RGB) of one shot, in order, by frame number."""
        faces: dict[int, list[Face]] = {}
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            return faces
        lineages = self._detect(*first, faces)
        interval: list[tuple[int, np.ndarray]] = []  # frames followed since the last detection
        for index, image in frames:
            if len(interval) + 1 < self.detect_every:
                follows = [self._follow(lineage, image) for lineage in lineages]
                if all(follows):
                    for lineage, face in zip(lineages, follows):
                        lineage.followed.append(face)
                    interval.append((index, image))
                    continue
            lineages = self._close(lineages, interval, index, image, faces)
            interval = []
        if interval:
            # The shot's last frame is detected, so its ends are the detector's.
            index, image = interval.pop()
            for lineage in lineages:
                lineage.followed.pop()
            self._close(lineages, interval, index, image, faces)
        return faces

    def _detect(self, index: int, image: np.ndarray, faces: dict) -> list[_Lineage]:
        self.detected_frames += 1
        faces[index] = self.analyzer.analyze(image)
        return [_Lineage(face) for face in faces[index]]

    def _close(self, lineages: list[_Lineage], interval: list, index: int, image: np.ndarray, faces: dict) -> list[_Lineage]:
        """Detect at frame `index`; keep the interval's followed faces where both ends agree, else detect them too."""
        closing = self._detect(index, image, faces)
        pairs = _match([lineage.predicted()[0] for lineage in lineages], [np.asarray(c.detected.box) for c in closing])
        if len(pairs) == len(lineages) == len(closing):
            for position, (frame, _) in enumerate(interval):
                fraction = (position + 1) / (len(interval) + 1)
                faces[frame] = [between(lineages[a].followed[position], lineages[a].detected, closing[b].detected, fraction)
                                for a, b in pairs]
        else:
            for frame, frame_image in interval:
                self._detect(frame, frame_image, faces)
        return closing

    def _follow(self, lineage: _Lineage, image: np.ndarray) -> Face | None:
        """The lineage's face in this frame, or None where following cannot be trusted."""
        box, keypoints = lineage.predicted()
        height, width = image.shape[:2]
        inside = lambda points: np.all(points >= 0) and np.all(points < (width, height))  # noqa: E731
        if not (np.all(box[2:] > box[:2]) and inside(keypoints[:3])):
            return None
        landmarks = self.analyzer.landmarks(image, box, keypoints)
        box, keypoints, residual = carried(lineage.detected, landmarks)
        if residual > MAX_FIT_RESIDUAL or not inside(keypoints[:3]):
            return None
        detected = lineage.detected
        return Face(box=box, score=detected.score, keypoints=keypoints, landmarks=landmarks, embedding=detected.embedding)


def carried(detected: Face, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(box, keypoints, residual) of a detected face carried to where its landmarks are now.

    The similarity that best maps the detection's rigid landmarks onto these carries its box;
    each keypoint keeps its offset from the landmarks it sits among (eye, nose tip, mouth
    corner), turned and scaled by that similarity. residual: the rigid landmarks' RMS distance
    from the similarity's fit, / eye distance.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    similarity = estimate_similarity(detected.landmarks[RIGID_POINTS], landmarks[RIGID_POINTS])
    linear, shift = similarity[:, :2], similarity[:, 2]
    fitted = detected.landmarks[RIGID_POINTS] @ linear.T + shift
    residual = np.sqrt(((fitted - landmarks[RIGID_POINTS]) ** 2).sum(axis=1).mean()) / max(eye_distance(landmarks), 1e-6)
    keypoints = landmark_keypoints(landmarks) + (detected.keypoints - landmark_keypoints(detected.landmarks)) @ linear.T
    box = np.asarray(detected.box)
    centre = (box[:2] + box[2:]) / 2 @ linear.T + shift
    half = (box[2:] - box[:2]) / 2 * np.sqrt(abs(np.linalg.det(linear)))
    return np.concatenate([centre - half, centre + half]), keypoints, float(residual)


def between(followed: Face, start: Face, end: Face, fraction: float) -> Face:
    """A followed face a fraction of the way from detection `start` to detection `end`, with its box and
    keypoints carried from both, weighted by nearness, so a track has no step where detection takes over."""
    box, keypoints, _ = carried(end, followed.landmarks)
    return replace(followed, box=(1 - fraction) * np.asarray(followed.box) + fraction * box,
                   keypoints=(1 - fraction) * followed.keypoints + fraction * keypoints, score=min(start.score, end.score))


def _match(followed: Sequence[np.ndarray], detected: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (followed, detected) of boxes overlapping by MATCH_MIN_IOU or more, best first."""
    candidates = sorted(((box_iou(a, b), i, j) for i, a in enumerate(followed) for j, b in enumerate(detected)), reverse=True)
    pairs, used_followed, used_detected = [], set(), set()
    for iou, i, j in candidates:
        if iou >= MATCH_MIN_IOU and i not in used_followed and j not in used_detected:
            pairs.append((i, j))
            used_followed.add(i)
            used_detected.add(j)
    return pairs
