"""Face tracks within one shot: association, one-frame gap filling, temporal smoothing, identity.

Association (`track_shot`), frame by frame through the shot:
- every open track predicts its box in the new frame (its last box moved by its last
  per-frame velocity, for the frames since it was last seen);
- a detection and a track are compatible when their boxes overlap (IoU >= MIN_IOU) and the
  detection's embedding is close enough to the track's (cosine >= MIN_COSINE against the
  normalised mean of the track's last EMBEDDING_MEMORY embeddings); their affinity is
  IOU_WEIGHT * IoU + (1 - IOU_WEIGHT) * cosine. Overlap does the work in ordinary frames;
  the embedding keeps two actors apart when their boxes cross.
- pairs are assigned greedily, best affinity first (numpy only; with the few faces of a
  film frame this is almost always the optimal assignment that the Hungarian method would
  give);
- a detection left over starts a track; a track not seen for more than MAX_MISSING frames
  is closed (a short miss, a blink of the detector, keeps the track and so its identity).
Tracks never cross a cut: each shot is tracked on its own.

Gaps: every frame a track bridged (a miss of 1..MAX_MISSING frames) gets an interpolated
face (box, keypoints and landmarks linearly between the faces either side; embedding their
normalised mean; score the lower of the two), marked interpolated=True, so a track's frames
are consecutive and its restored face does not blink off where the detector missed it.

False positives: a track with fewer than MIN_TRACK_DETECTIONS detections is dropped unless
one of them scored at least SHORT_TRACK_MIN_SCORE; a face that really is there is almost
always found in several consecutive frames or found with a high score (a 1-2 frame shot
keeps its confident faces).

Smoothing (`smooth_track`): every coordinate of the box, the 5 keypoints and the 68
landmarks is replaced by a Gaussian-weighted local quadratic fit over the track's frames
(a Savitzky-Golay filter with Gaussian weights: sigma SMOOTH_SIGMA frames, window
SMOOTH_RADIUS frames each side). It is centred, so there is no lag; motion at constant
speed or constant acceleration passes unchanged, at the ends of a track too (the fit there
is one-sided instead of a truncated average, so a face moving as its shot begins or ends is
not pulled back). Time is the real frame number, so a skipped frame is no problem. At
25 fps it passes a 1 Hz head movement whole (99%), a 2 Hz one at 92% amplitude and damps
4 Hz (fast lip movement) to 42%, while white detector noise keeps under 1% of its
second-difference (frame-to-frame jitter) energy.
The measurements behind SMOOTH_SIGMA are in BENCHMARKS.md (track smoothing).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from film_restore.faces.identity import Identifier, centroid
from film_restore.records import Face, Shot, Track, TrackedFace

MIN_IOU = 0.1               # boxes of one face in consecutive frames overlap far more (> 0.8 for talking heads)
MIN_COSINE = 0.25           # one face, consecutive frames: 0.84-0.99 (talking heads), >= 0.45 (small blurred
                            # old-film face); two people: ~0.0, at most 0.4 (compact pack)
IOU_WEIGHT = 0.5
EMBEDDING_MEMORY = 5        # recent embeddings a track is compared by (one bad frame does not derail it)
MAX_MISSING = 3             # frames a track may go unseen and still continue
MIN_TRACK_DETECTIONS = 3
SHORT_TRACK_MIN_SCORE = 0.7

SMOOTH_SIGMA = 2.0          # frames (BENCHMARKS.md: track smoothing)
SMOOTH_RADIUS = 6           # frames each side (3 sigma)
SMOOTH_DEGREE = 2           # local quadratic


class _OpenTrack:
    def __init__(self, frame: int, face: Face):
        self.faces: list[tuple[int, Face]] = [(frame, face)]

    @property
    def last_frame(self) -> int:
        return self.faces[-1][0]

    def predicted_box(self, frame: int) -> np.ndarray:
        last_frame, last = self.faces[-1]
        box = np.asarray(last.box)
        if len(self.faces) >= 2:
            previous_frame, previous = self.faces[-2]
            velocity = (box - np.asarray(previous.box)) / (last_frame - previous_frame)
            box = box + velocity * (frame - last_frame)
        return box

    def embedding(self) -> np.ndarray:
        return centroid(np.stack([face.embedding for _, face in self.faces[-EMBEDDING_MEMORY:]]))


def box_iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return float(intersection / union) if union > 0 else 0.0


def _assign(open_tracks: list[_OpenTrack], faces: Sequence[Face], frame: int) -> list[tuple[int, int]]:
    """Greedy best-affinity-first matching of open tracks to this frame's faces: (track, face) pairs."""
    if not open_tracks or not faces:
        return []
    track_embeddings = np.stack([track.embedding() for track in open_tracks])
    face_embeddings = np.stack([face.embedding for face in faces])
    if track_embeddings.shape[1] != face_embeddings.shape[1]:
        raise ValueError("faces of one shot must come from one recogniser (embeddings of different sizes)")
    cosine = track_embeddings @ face_embeddings.T
    candidates = []
    for t, track in enumerate(open_tracks):
        predicted = track.predicted_box(frame)
        for f, face in enumerate(faces):
            iou = box_iou(predicted, face.box)
            if iou >= MIN_IOU and cosine[t, f] >= MIN_COSINE:
                candidates.append((IOU_WEIGHT * iou + (1 - IOU_WEIGHT) * float(cosine[t, f]), t, f))
    pairs, used_tracks, used_faces = [], set(), set()
    for _, t, f in sorted(candidates, key=lambda item: (-item[0], item[1], item[2])):
        if t not in used_tracks and f not in used_faces:
            pairs.append((t, f))
            used_tracks.add(t)
            used_faces.add(f)
    return pairs


def track_shot(shot: Shot, faces_by_frame: Mapping[int, Sequence[Face]]) -> list[Track]:
    """The face tracks of one shot, ordered by first frame then left to right.

    faces_by_frame: the faces FaceAnalyzer found in each frame of the shot (a frame that is
    missing counts as a frame without faces; frames outside the shot are ignored).
    """
    open_tracks: list[_OpenTrack] = []
    closed: list[_OpenTrack] = []
    for frame in shot.frames:
        faces = list(faces_by_frame.get(frame, ()))
        for face in faces:
            if not isinstance(face, Face):
                raise ValueError(f"faces_by_frame[{frame}] must hold Face records, got {type(face).__name__}")
        still_open = []
        for track in open_tracks:
            (closed if frame - track.last_frame > MAX_MISSING + 1 else still_open).append(track)
        open_tracks = still_open
        pairs = _assign(open_tracks, faces, frame)
        matched = set()
        for t, f in pairs:
            open_tracks[t].faces.append((frame, faces[f]))
            matched.add(f)
        open_tracks.extend(_OpenTrack(frame, face) for f, face in enumerate(faces) if f not in matched)
    closed.extend(open_tracks)

    tracks = []
    for track in closed:
        if len(track.faces) < MIN_TRACK_DETECTIONS and max(face.score for _, face in track.faces) < SHORT_TRACK_MIN_SCORE:
            continue
        tracks.append(Track(shot=shot.index, faces=_fill_gaps(track.faces)))
    return sorted(tracks, key=lambda track: (track.first_frame, track.faces[0].face.box[0]))


def _fill_gaps(faces: list[tuple[int, Face]]) -> tuple[TrackedFace, ...]:
    """Every frame a track bridged (at most MAX_MISSING) gets an interpolated face.

    A restored face that vanished for the frames the detector missed would flicker.
    """
    tracked = []
    for index, (frame, face) in enumerate(faces):
        if index:
            previous_frame, previous = faces[index - 1]
            span = frame - previous_frame
            for missing in range(previous_frame + 1, frame):
                between = interpolate_faces(previous, face, (missing - previous_frame) / span)
                tracked.append(TrackedFace(missing, between, interpolated=True))
        tracked.append(TrackedFace(frame, face))
    return tuple(tracked)


def interpolate_faces(a: Face, b: Face, t: float) -> Face:
    """The face a fraction t of the way from a to b (box, keypoints, landmarks linearly)."""
    mix = lambda x, y: (1 - t) * np.asarray(x, dtype=np.float64) + t * np.asarray(y, dtype=np.float64)
    return Face(
        box=tuple(mix(a.box, b.box)),
        score=min(a.score, b.score),
        keypoints=mix(a.keypoints, b.keypoints),
        landmarks=mix(a.landmarks, b.landmarks),
        embedding=centroid(np.stack([a.embedding, b.embedding])),
    )


def smooth_values(frames: Sequence[int], values: np.ndarray, sigma: float = SMOOTH_SIGMA,
                  radius: int = SMOOTH_RADIUS, degree: int = SMOOTH_DEGREE) -> np.ndarray:
    """values (n x ...) seen at increasing frames, each replaced by its local polynomial fit.

    For each frame, a polynomial of the given degree is fitted by least squares to the
    values within radius frames, weighted by a Gaussian of sigma frames around it, and
    evaluated there (a Savitzky-Golay filter with Gaussian weights, on the real frame
    numbers). Any polynomial of that degree comes through unchanged, at the ends of the
    track too; where a window holds too few frames the degree is lowered.
    """
    frames = np.asarray(frames, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(frames), -1)
    smoothed = np.empty_like(flat)
    for i, frame in enumerate(frames):
        lo, hi = np.searchsorted(frames, [frame - radius, frame + radius + 0.5])
        offsets = frames[lo:hi] - frame
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
        for order in range(min(degree, len(offsets) - 1), -1, -1):
            basis = np.vander(offsets, order + 1, increasing=True)
            normal = basis.T @ (weights[:, None] * basis)
            if np.linalg.cond(normal) < 1e8:
                # The fitted polynomial's value at offset 0 is its constant term.
                row = np.linalg.solve(normal, basis.T * weights)[0]
                break
        smoothed[i] = row @ flat[lo:hi]
    return smoothed.reshape(values.shape)


def smooth_track(track: Track, sigma: float = SMOOTH_SIGMA, radius: int = SMOOTH_RADIUS,
                 degree: int = SMOOTH_DEGREE) -> Track:
    """The track with its boxes, keypoints and landmarks smoothed along time (zero lag).

    Embeddings, scores and the interpolated flags are kept; a track of fewer than 3
    faces is returned as it is.
    """
    if sigma <= 0 or radius < 1 or degree < 0:
        raise ValueError(f"smoothing needs sigma > 0, radius >= 1 and degree >= 0, got {sigma}, {radius}, {degree}")
    frames = [tracked.frame for tracked in track.faces]
    if len(frames) < 3:
        return track
    # One n x (4 + 10 + 136) array: the fit's weights are worked out once per frame.
    values = np.concatenate([
        np.array([tracked.face.box for tracked in track.faces], dtype=np.float64),
        np.array([tracked.face.keypoints for tracked in track.faces], dtype=np.float64).reshape(len(frames), -1),
        np.array([tracked.face.landmarks for tracked in track.faces], dtype=np.float64).reshape(len(frames), -1),
    ], axis=1)
    smoothed = smooth_values(frames, values, sigma, radius, degree)
    boxes = smoothed[:, :4]
    keypoints = smoothed[:, 4:14].reshape(-1, 5, 2)
    landmarks = smoothed[:, 14:].reshape(-1, 68, 2)
    faces = tuple(
        replace(tracked, face=Face(box=_valid_box(boxes[i]), score=tracked.face.score, keypoints=keypoints[i],
                                   landmarks=landmarks[i], embedding=tracked.face.embedding))
        for i, tracked in enumerate(track.faces)
    )
    return replace(track, faces=faces)


def _valid_box(box: np.ndarray) -> tuple:
    # Smoothing cannot invert a box in practice; keep the record valid if it ever would.
    x1, y1, x2, y2 = (float(value) for value in box)
    return (x1, y1, max(x2, x1 + 1e-3), max(y2, y1 + 1e-3))


def identify_tracks(tracks: Sequence[Track], identifier: Identifier) -> list[Track]:
    """Each track with the actor (or None) and similarity Identifier gives for all its detected faces' embeddings.

    Interpolated faces are left out: their embedding is only the mean of their neighbours'.
    """
    identified = []
    for track in tracks:
        embeddings = [tracked.face.embedding for tracked in track.faces if not tracked.interpolated]
        if not embeddings:
            embeddings = [tracked.face.embedding for tracked in track.faces]
        match = identifier.identify(np.stack(embeddings))
        identified.append(replace(track, actor=match.actor, similarity=match.similarity))
    return identified
