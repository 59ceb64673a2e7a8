"""Face tracks on real clips: one per person and shot, gaps filled, alignment smoothed, actors identified."""
import av
import cv2
import numpy as np
import pytest

from tests.assets import asset
from film_restore.faces.align import estimate_similarity, ffhq_template
from film_restore.cast.castfile import DEFAULT_MATCH_THRESHOLD
from film_restore.faces.identity import Identifier
from film_restore.records import Face, Shot, Track, TrackedFace
from film_restore.shots import find_shots, frame_signature
from film_restore.tracking import identify_tracks, smooth_track, smooth_values, track_shot

SIZE = 512
# The made-up film: (clip, first frame, frames); cuts at 40 and 80.
FILM = (("retalk_1", 0, 40), ("liveportrait_d9", 0, 40), ("retalk_3", 0, 20))
# Reference frames for the cast, from the other half of the two cast clips.
REFERENCES = {"retalk_1": range(80, 121, 8), "liveportrait_d9": range(100, 141, 8)}


def _decode(name: str, frames) -> list[np.ndarray]:
    wanted = set(frames)
    out = []
    with av.open(str(asset(f"media/clips/{name}.mp4"))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                out.append(cv2.resize(frame.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA))
            if index >= max(wanted):
                break
    return out


@pytest.fixture(scope="module")
def film(analyzer):
    """Frames of three clips one after another (512 x 512) and the faces found in each."""
    frames = [frame for name, first, count in FILM for frame in _decode(name, range(first, first + count))]
    return frames, {index: analyzer.analyze(frame) for index, frame in enumerate(frames)}


@pytest.fixture(scope="module")
def shots(film):
    return find_shots(np.stack([frame_signature(frame) for frame in film[0]]))


@pytest.fixture(scope="module")
def references(analyzer):
    embeddings = {}
    for name, frames in REFERENCES.items():
        faces = [analyzer.analyze(frame) for frame in _decode(name, frames)]
        assert all(len(found) == 1 for found in faces)
        embeddings[name] = np.stack([found[0].embedding for found in faces])
    return embeddings


@pytest.fixture(scope="module")
def old_film(analyzer):
    paths = sorted(asset("media/oldfilm_001").glob("*.png"))
    return {index: analyzer.analyze(np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])) for index, path in enumerate(paths)}


def _frames(track: Track) -> list[int]:
    return [tracked.frame for tracked in track.faces]


def _keypoints(track: Track) -> np.ndarray:
    return np.stack([tracked.face.keypoints for tracked in track.faces]).astype(np.float64)


def test_the_film_has_its_three_shots(shots):
    assert shots == [Shot(0, 0, 39), Shot(1, 40, 79), Shot(2, 80, 99)]


def test_one_person_gives_one_track_over_every_frame_of_the_shot(film, shots):
    _, faces = film
    for shot in shots:
        tracks = track_shot(shot, faces)
        assert len(tracks) == 1, shot
        assert tracks[0].shot == shot.index
        assert _frames(tracks[0]) == list(shot.frames)
        assert not any(tracked.interpolated for tracked in tracks[0].faces)


def test_tracks_never_cross_a_cut(film, shots):
    _, faces = film
    tracks = [track for shot in shots for track in track_shot(shot, faces)]
    for track in tracks:
        shot = shots[track.shot]
        assert shot.first_frame <= track.first_frame and track.last_frame <= shot.last_frame
    # Even a missed cut does not join two people: the boxes overlap, the embeddings do not.
    before, after = faces[39][0], faces[40][0]
    print(f"across the first cut: box IoU {_iou(before.box, after.box):.2f}, "
          f"embedding cosine {float(before.embedding @ after.embedding):.2f}")
    merged = track_shot(Shot(0, 0, 79), faces)
    assert [(track.first_frame, track.last_frame) for track in merged] == [(0, 39), (40, 79)]


def _iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_a_one_frame_detection_gap_is_filled_by_interpolation(film, shots):
    _, faces = film
    errors = []
    for missing in (10, 20, 30):
        with_gap = {frame: found for frame, found in faces.items() if frame != missing}
        (track,) = track_shot(shots[0], with_gap)
        assert _frames(track) == list(shots[0].frames)
        filled = track.faces[missing]
        assert filled.interpolated and [t.frame for t in track.faces if t.interpolated] == [missing]
        real = faces[missing][0]
        errors.append((np.linalg.norm(filled.face.keypoints - real.keypoints, axis=1),
                       np.linalg.norm(filled.face.landmarks - real.landmarks, axis=1)))
        assert float(filled.face.embedding @ real.embedding) > 0.9
    keypoint_errors = np.concatenate([keypoint for keypoint, _ in errors])
    landmark_errors = np.concatenate([landmark for _, landmark in errors])
    width = faces[20][0].box[2] - faces[20][0].box[0]
    print(f"gap fill error against the real detection (face {width:.0f} px wide): keypoints mean "
          f"{keypoint_errors.mean():.2f} px, max {keypoint_errors.max():.2f} px; landmarks mean {landmark_errors.mean():.2f} px")
    assert keypoint_errors.mean() < 2.0 and keypoint_errors.max() < 5.0
    assert landmark_errors.mean() < 2.5


def test_longer_gaps_are_bridged_for_a_while_then_end_the_track(film, shots):
    _, faces = film
    two_missing = {frame: found for frame, found in faces.items() if frame not in (10, 11)}
    (track,) = track_shot(shots[0], two_missing)
    assert _frames(track) == list(shots[0].frames)
    bridged = {t.frame: t.face for t in track.faces if t.interpolated}
    assert sorted(bridged) == [10, 11]
    for frame, face in bridged.items():
        assert np.abs(face.keypoints - faces[frame][0].keypoints).mean() < 3.0
    five_missing = {frame: found for frame, found in faces.items() if not 10 <= frame < 15}
    assert [(t.first_frame, t.last_frame) for t in track_shot(shots[0], five_missing)] == [(0, 9), (15, 39)]


def test_short_weak_tracks_are_dropped_as_false_positives(film, shots):
    _, faces = film
    real = faces[5][0]
    far_box = (10.0, 10.0, 60.0, 70.0)    # nowhere near the real face
    for score, kept in ((0.55, False), (0.9, True)):
        extra = Face(far_box, score, real.keypoints - 200, real.landmarks - 200, real.embedding)
        with_extra = dict(faces)
        with_extra[5] = [real, extra]
        tracks = track_shot(shots[0], with_extra)
        assert len(tracks) == (2 if kept else 1)
        assert max(len(track.faces) for track in tracks) == 40


def test_two_faces_of_the_old_film_give_two_tracks(old_film):
    counts = [len(old_film[frame]) for frame in range(24)]
    tracks = track_shot(Shot(0, 0, 23), old_film)
    print(f"faces per frame {counts}; tracks {[(t.first_frame, t.last_frame) for t in tracks]}")
    assert len(tracks) == 2
    per_frame = [sum(frame in _frames(track) for track in tracks) for frame in range(24)]
    assert per_frame == counts
    assert _frames(tracks[0]) == list(range(24)) and _frames(tracks[1]) == [16, 17, 18, 19]


def _similarity_parameters(keypoints: np.ndarray) -> np.ndarray:
    """scale, angle (rad) and translation of each frame's alignment to the 512 template."""
    template = ffhq_template(512)
    rows = []
    for points in keypoints:
        matrix = estimate_similarity(points, template)
        rows.append([np.hypot(matrix[0, 0], matrix[1, 0]), np.arctan2(matrix[1, 0], matrix[0, 0]), matrix[0, 2], matrix[1, 2]])
    return np.array(rows)


def test_smoothing_takes_out_jitter_and_keeps_close_to_the_detections(film, shots):
    _, faces = film
    for shot in shots[:2]:
        (raw,) = track_shot(shot, faces)
        smoothed = smooth_track(raw)
        before, after = _keypoints(raw), _keypoints(smoothed)
        energy = lambda points: float((np.diff(points, 2, axis=0) ** 2).sum(axis=-1).mean())
        reduction = 1 - energy(after) / energy(before)
        alignment = 1 - np.diff(_similarity_parameters(after), 2, axis=0).std(0) / np.diff(_similarity_parameters(before), 2, axis=0).std(0)
        deviation = np.linalg.norm(after - before, axis=-1)
        landmarks = np.linalg.norm(np.stack([t.face.landmarks for t in smoothed.faces]) - np.stack([t.face.landmarks for t in raw.faces]), axis=-1)
        print(f"shot {shot.index}: keypoint second-difference energy -{100 * reduction:.0f}%, alignment jitter "
              f"(scale, angle, tx, ty) -{np.round(100 * alignment).astype(int).tolist()}%, mean deviation "
              f"{deviation.mean():.2f} px (max {deviation.max():.2f}), landmarks {landmarks.mean():.2f} px")
        assert reduction >= 0.6
        assert alignment.min() >= 0.4
        assert deviation.mean() <= 1.5
        assert landmarks.mean() <= 1.5
        assert _frames(smoothed) == _frames(raw)
        assert all(np.array_equal(a.face.embedding, b.face.embedding) for a, b in zip(raw.faces, smoothed.faces))


def _synthetic_track(frames, keypoints) -> Track:
    embedding = np.zeros(8, np.float32)
    embedding[0] = 1
    faces = []
    for frame, points in zip(frames, keypoints):
        landmarks = np.resize(points, (68, 2))
        box = (*(points.min(0) - 20), *(points.max(0) + 20))
        faces.append(TrackedFace(frame, Face(box, 0.9, points, landmarks, embedding)))
    return Track(0, tuple(faces))


def test_steady_motion_is_not_lagged():
    frames = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25])
    base = np.array([[100, 120], [160, 120], [130, 150], [108, 180], [152, 180]], dtype=np.float64)
    for velocity, acceleration in (((4.0, -1.5), (0.0, 0.0)), ((-3.0, 2.0), (0.4, -0.2))):
        keypoints = [base + np.multiply(velocity, t) + 0.5 * np.multiply(acceleration, t * t) for t in frames]
        track = _synthetic_track(frames, keypoints)
        smoothed = smooth_track(track)
        assert np.abs(_keypoints(smoothed) - _keypoints(track)).max() < 1e-3   # ends included
        boxes = np.array([t.face.box for t in smoothed.faces]) - np.array([t.face.box for t in track.faces])
        assert np.abs(boxes).max() < 1e-3


def test_smoothing_noise_on_a_moving_face():
    rng = np.random.default_rng(0)
    frames = np.arange(60)
    truth = np.array([[100 + 2.0 * t + 15 * np.sin(t / 8), 120 + 0.5 * t] for t in frames])
    noisy = truth + rng.normal(0, 1.0, truth.shape)
    smoothed = smooth_values(frames, noisy)
    print(f"1 px noise on a moving point: error {np.abs(noisy - truth).mean():.2f} px raw, {np.abs(smoothed - truth).mean():.2f} px smoothed")
    assert np.abs(smoothed - truth).mean() < 0.7 * np.abs(noisy - truth).mean()


def test_short_tracks_are_returned_as_they_are():
    base = np.array([[100, 120], [160, 120], [130, 150], [108, 180], [152, 180]], dtype=np.float64)
    track = _synthetic_track([3, 4], [base, base + 5])
    assert smooth_track(track) is track


def test_tracks_are_identified_against_the_cast(film, shots, references):
    _, faces = film
    identifier = Identifier(references, DEFAULT_MATCH_THRESHOLD)
    tracks = identify_tracks([track for shot in shots for track in track_shot(shot, faces)], identifier)
    for track in tracks:
        query = np.mean([t.face.embedding for t in track.faces], axis=0)
        each = identifier.centroids @ (query / np.linalg.norm(query))
        print(f"shot {track.shot}: {track.actor} at {track.similarity:.3f} "
              f"(to {', '.join(f'{name} {value:.3f}' for name, value in zip(identifier.names, each))})")
    assert [track.actor for track in tracks] == ["retalk_1", "liveportrait_d9", None]
    assert tracks[0].similarity >= 0.6 and tracks[1].similarity >= 0.6
    assert tracks[2].similarity < DEFAULT_MATCH_THRESHOLD


def test_identification_leaves_out_interpolated_faces(film, shots, references):
    _, faces = film
    identifier = Identifier(references, DEFAULT_MATCH_THRESHOLD)
    (track,) = track_shot(shots[0], {frame: found for frame, found in faces.items() if frame != 20})
    (identified,) = identify_tracks([track], identifier)
    detected = np.stack([t.face.embedding for t in track.faces if not t.interpolated])
    assert identified.similarity == pytest.approx(identifier.identify(detected).similarity)
    assert identified.faces is track.faces
