"""film_restore.finish.guards on a real talking-head track: exact for a restorer that changes nothing,
steady where a restorer flickers, faithful to the actor, identical in overlapping segments."""
import numpy as np
import pytest

from film_restore import settings
from film_restore.finish import guards, measures as quality


def _run(talking_head, restored, count=10, **options):
    crops = talking_head["crops"][:count]
    return guards.guard_track(crops, restored[:count], talking_head["embed"], talking_head["reference"], **options)


def test_a_restorer_that_returns_its_input_changes_nothing(talking_head):
    crops = talking_head["crops"][:10]
    result = _run(talking_head, crops.astype(np.float32), fusion=False)
    assert np.array_equal(result.faces, crops.astype(np.float32))
    assert (result.strength == 1).all() and not any(result.reasons)
    assert result.identity_out == pytest.approx(result.identity_in, abs=1e-6)


def test_flicker_added_by_a_restorer_is_filtered_away(talking_head):
    crops = talking_head["crops"][:10]
    flickering = crops + np.random.default_rng(0).normal(0, 5, crops.shape).astype(np.float32)
    result = _run(talking_head, flickering, strength=1.0)
    before = quality.flicker(crops, flickering, guards.face_mask(128)).ratio
    after = result.change_out.sum() / result.change_in.sum()
    assert before > 1.5 and after < 1.05 + 0.25 * (before - 1)


def test_noise_a_restorer_removes_stays_removed(talking_head):
    clean = talking_head["crops"][:10].astype(np.float32)
    noisy = np.clip(np.round(clean + np.random.default_rng(1).normal(0, 6, clean.shape)), 0, 255).astype(np.uint8)
    residuals = clean - noisy
    stabilised = guards.stabilise(noisy, residuals)
    error = lambda faces: np.sqrt(((faces - clean) ** 2).mean())
    # Residual filtering alone would put ~70% of the noise back; the cancelling share keeps it out.
    assert error(noisy + stabilised) < 0.45 * error(noisy.astype(np.float32))


def test_detail_that_moves_with_the_face_is_not_smeared(talking_head):
    crops = talking_head["crops"][:10].astype(np.float32)
    import cv2

    sharpened = np.stack([crop + 1.5 * (crop - cv2.GaussianBlur(crop, (0, 0), 2)) for crop in crops])
    residuals = sharpened - crops
    stabilised = guards.stabilise(talking_head["crops"][:10], residuals)
    assert np.abs(stabilised - residuals).mean() < 0.35 * np.abs(residuals).mean()


def test_a_restorer_that_changes_who_it_is_is_held_back(talking_head):
    crops = talking_head["crops"][:10]
    # Another person: the same clip's face mirrored top to bottom and shifted keeps the
    # colours and texture but not the identity.
    stranger = np.roll(crops[:, ::-1], 6, axis=1).astype(np.float32)
    result = _run(talking_head, stranger, resolution=0.05)
    assert result.strength.max() < 1 and all(result.reasons)
    assert "identity" in result.reasons[0]
    assert result.identity_out.mean() >= result.identity_in.mean() - guards.IDENTITY_TOLERANCE
    fixed = _run(talking_head, stranger, resolution=0.05, strength=1.0)
    assert (fixed.strength == 1).all() and fixed.identity_out.mean() < result.identity_out.mean() - 0.05


def test_strengths_never_exceed_a_limit_and_do_not_pump():
    limits = np.array([1, 1, 1, 1, 0.25, 1, 1, 1, 1, 1, 1, 1, 0.5, 0.5] + [1] * 12, np.float32)
    strengths = guards.smooth_strengths(limits)
    assert (strengths <= limits).all()
    assert np.abs(np.diff(strengths)).max() <= guards.STRENGTH_SLOPE + 1e-6
    assert strengths[-1] == 1 and guards.smooth_strengths(np.ones(5, np.float32)) == pytest.approx(np.ones(5))


def test_a_segment_with_the_horizon_either_side_gives_the_whole_tracks_faces(talking_head):
    # The clip's faces there and back until the track is long enough for a middle beyond the horizon.
    there_and_back = np.concatenate([talking_head["crops"], talking_head["crops"][::-1]])
    crops = np.concatenate([there_and_back] * 3)[:2 * guards.GUARD_HORIZON + 2]
    assert len(crops) == 2 * guards.GUARD_HORIZON + 2
    restored = crops + np.random.default_rng(2).normal(0, 8, crops.shape).astype(np.float32)
    kept = guards.GUARD_HORIZON
    whole = guards.guard_track(crops, restored, talking_head["embed"], talking_head["reference"], resolution=0.5)
    part = guards.guard_track(crops[1:], restored[1:], talking_head["embed"], talking_head["reference"], resolution=0.5)
    middle = slice(1 + kept, len(crops) - kept)
    assert np.allclose(whole.faces[middle], part.faces[middle.start - 1:middle.stop - 1], atol=1e-3)
    assert np.array_equal(whole.strength[middle], part.strength[middle.start - 1:middle.stop - 1])


def test_strength_is_a_number_from_0_to_1_or_auto():
    assert settings.parse_strength("auto") == settings.AUTO and settings.parse_strength("0.4") == 0.4
    for bad in ("1.5", "-0.1", "strong", None):
        with pytest.raises(ValueError, match="strength must be a number from 0 to 1 or 'auto'"):
            settings.parse_strength(bad)


def test_composer_with_guards_and_a_restorer_that_changes_nothing_writes_todays_round_trip(talking_head, tmp_path):
    from tests.assets import asset
    from film_restore.faces.identity import Identifier
    from film_restore.compose import Composer, ComposeSettings
    from film_restore.stages import FaceTracker, Scanner
    from film_restore.video import probe, read_frames
    from tests.media import make_film

    film = tmp_path / "film.mkv"
    make_film(film, [asset("media/clips/retalk_2.mp4")], 11, size=(256, 256), with_audio=False)
    scan = Scanner(250)(film)
    chunk = scan.chunks[0]
    identifier = Identifier({"Speaker": talking_head["reference"][None]}, 0.45)
    tracks = FaceTracker(asset("models"), identifier, detector_size=320)(film, chunk, scan.frame_pts)
    assert [t.actor for t in tracks] == ["Speaker"]
    unchanged = lambda crops, boxes, actor: crops.astype(np.float32)
    today = ComposeSettings("ffv1", 128, grain="off")
    guarded = ComposeSettings("ffv1", 128, grain="off", fusion="off", references={"Speaker": talking_head["reference"]},
                              models_dir=str(asset("models")))
    outputs = {}
    for name, compose_settings in (("today", today), ("guarded", guarded)):
        outputs[name] = tmp_path / f"{name}.mkv"
        result = Composer(probe(film), compose_settings, unchanged)(chunk, tracks, scan.frame_pts, outputs[name])
    frames = {name: [picture.rgb() for _, _, picture in read_frames(path)] for name, path in outputs.items()}
    assert len(frames["today"]) == 11 and all(np.array_equal(a, b) for a, b in zip(frames["today"], frames["guarded"]))
    [summary] = result.tracks
    assert summary["faces"] == 11 and summary["held_back"] == 0 and summary["flicker_ratio"] == pytest.approx(1.0)
    assert summary["identity_out"] == pytest.approx(summary["identity_in"], abs=1e-4)
    series = summary["series"]  # what the report plots, per face in frame order
    assert series["frame"] == list(range(11)) and series["strength"] == [1.0] * 11
    assert np.mean(series["identity_in"]) == pytest.approx(summary["identity_in"], abs=1e-3)


def test_the_strength_used_changes_smoothly_along_a_track_window_edges_included(talking_head):
    # A restorer that turns the face into a stranger on the first two frames and flickers: the
    # identity guard holds the track's start back, the hold-still its flicker as the strength
    # rises again, and the strength each face is restored with (the guards' strength times the
    # hold-still's share) never jumps by more than 0.1 from one frame to the next. Fusion off: its
    # steadier base leaves the frame's face changing less than the film here, nothing to hold.
    from film_restore.compose import COMPOSE_WINDOW, ComposeSettings
    from film_restore.faces.identity import Identifier
    from film_restore.finish import steps
    from film_restore.records import ChunkResult, Frame, Track
    from film_restore.tracking import identify_tracks
    from film_restore.video import RGBPicture
    from film_restore.finish.window import Window
    from tests.assets import asset

    frames = talking_head["frames"]
    tracks = identify_tracks([Track(0, talking_head["faces"])], Identifier({"Speaker": talking_head["reference"][None]}, 0.45))
    served = []
    rng = np.random.default_rng(4)

    def restore(crops, boxes, actor):
        faces = crops.astype(np.float32) + rng.normal(0, 12, crops.shape).astype(np.float32)
        for index in range(len(crops)):
            if len(served) + index < 2:
                faces[index] = np.roll(crops[index, ::-1], 6, axis=0)
        served.extend(range(len(crops)))
        return faces

    settings = ComposeSettings("ffv1", 128, grain="off", fusion="off", references={"Speaker": talking_head["reference"]},
                               models_dir=str(asset("models")))
    plan = steps.FacePlan.of(tracks, settings.min_face, {0: settings.strength})
    result = ChunkResult(0, 0, 0)
    finishing, guard = steps.finishing(restore, plan, settings, result)
    [hold] = [step for step in finishing if isinstance(step, steps.HoldStill)]
    chain = steps.Chain([steps.Align(plan, settings.face_size), *finishing])
    pictures = [Frame(index, index, RGBPicture(frame)) for index, frame in enumerate(frames)]
    for start in range(0, len(frames), COMPOSE_WINDOW):
        chain(Window(pictures[start:start + COMPOSE_WINDOW], frames[0].shape[:2]))
    chain.flush()
    strength = np.concatenate([part.strength for _, part in guard.parts[0]])
    share = np.array([hold.used[index, 0] for index in range(len(frames))])
    used = strength * share
    assert used.min() <= 0.5 and share.min() < 1, (strength, share)  # both held back
    assert np.abs(np.diff(used)).max() <= 0.1, np.round(used, 3)
