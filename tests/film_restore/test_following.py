"""film_restore.following: detection every k-th frame, faces followed in between, measured against detection on every frame."""
import numpy as np
import pytest

from bench.analysis_recall import compare
from film_restore.faces import FaceAnalyzer
from film_restore.faces.identity import Identifier
from film_restore.following import FaceFollower
from film_restore.records import Shot
from film_restore.settings import DETECT_EVERY
from film_restore.tracking import identify_tracks, smooth_track, track_shot
from tests.assets import asset
from tests.media import clip_frames, old_film


@pytest.fixture(scope="module")
def small_analyzer():
    return FaceAnalyzer.from_models_dir(asset("models"), detector_size=320)


def _tracks(follower, frames, identifier):
    faces = follower.faces_of_shot(enumerate(frames))
    shot = Shot(0, 0, len(frames) - 1)
    return identify_tracks([smooth_track(track) for track in track_shot(shot, faces)], identifier)


@pytest.mark.parametrize("source", ["retalk_2", "oldfilm_001"])
def test_following_finds_what_detecting_every_frame_finds(small_analyzer, analyzer, source):
    # A talking head (30 frames at 320 px) and an old film's two faces (its 24 frames).
    if source == "retalk_2":
        frames, models = clip_frames(asset("media/clips/retalk_2.mp4"), 30, (320, 320)), small_analyzer
    else:
        frames, models = [old_film(path.stem) for path in sorted(asset("media/oldfilm_001").glob("*.png"))], analyzer
    identifier = Identifier({f"actor {i}": face.embedding[None] for i, face in enumerate(models.analyze(frames[-1]))}, 0.45)
    reference = _tracks(FaceFollower(models, 1), frames, identifier)
    follower = FaceFollower(models, DETECT_EVERY)
    result = compare(reference, _tracks(follower, frames, identifier))
    print(f"{source}: detected {follower.detected_frames} of {len(frames)} frames, found {result.recall:.2%}, "
          f"landmarks {100 * result.landmark_errors.mean():.2f}% (p99 {100 * np.percentile(result.landmark_errors, 99):.2f}%) "
          f"keypoints {100 * result.keypoint_errors.mean():.2f}% of the eye distance")
    assert follower.detected_frames <= len(frames) / 2
    assert result.recall >= 0.99 and result.extra <= 0.01 * result.face_frames
    assert result.same_tracks and any(track.actor for track in reference)
    assert result.landmark_errors.mean() <= 0.01 and result.keypoint_errors.mean() <= 0.015


def test_a_face_entering_and_leaving_mid_shot_starts_and_ends_where_the_detector_sees_it(small_analyzer):
    faces = clip_frames(asset("media/clips/retalk_2.mp4"), 12, (320, 320))
    empty = np.zeros_like(faces[0])
    frames = [empty] * 7 + faces + [empty] * 6  # in at frame 7, out at frame 19: neither on a detection frame
    reference = FaceFollower(small_analyzer, 1).faces_of_shot(enumerate(frames))
    followed = FaceFollower(small_analyzer, 5).faces_of_shot(enumerate(frames))
    assert [len(reference[i]) for i in range(len(frames))] == [0] * 7 + [1] * 12 + [0] * 6
    assert {i: len(found) for i, found in followed.items()} == {i: len(found) for i, found in reference.items()}


def test_detecting_every_frame_is_the_analyzer_on_every_frame(small_analyzer):
    frames = clip_frames(asset("media/clips/retalk_2.mp4"), 3, (320, 320))
    faces = FaceFollower(small_analyzer, 1).faces_of_shot(enumerate(frames))
    for index, frame in enumerate(frames):
        expected = small_analyzer.analyze(frame)
        assert [f.box for f in faces[index]] == [f.box for f in expected]
        assert all(np.array_equal(a.landmarks, b.landmarks) for a, b in zip(faces[index], expected))
    with pytest.raises(ValueError, match="detect_every must be a whole number of frames >= 1"):
        FaceFollower(small_analyzer, 0)
