"""Shot detection on real footage: frame-accurate hard cuts, none inside talking heads, flashes or old film."""
import time

import av
import cv2
import numpy as np
import pytest

from tests.assets import asset
from film_restore.records import Shot
from film_restore.shots import (
    SIGNATURE_SIZE, chunk_shots, find_cuts, find_shots, frame_differences, frame_signature,
)

CLIPS = ("retalk_1", "retalk_2", "retalk_3", "liveportrait_d0", "liveportrait_d3", "liveportrait_d9", "liveportrait_d10")
SIZE = 256  # common frame size of the made-up films


def _decode(name: str, count: int | None = None) -> list[np.ndarray]:
    with av.open(str(asset(f"media/clips/{name}.mp4"))) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if count is not None and len(frames) == count:
                break
    return frames


@pytest.fixture(scope="module")
def clips():
    """Every frame of every shared clip, as decoded."""
    return {name: _decode(name) for name in CLIPS}


def _resized(frames):
    return [cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for frame in frames]


def _signatures(frames):
    return np.stack([frame_signature(frame) for frame in frames])


def _brighten(frame, gain=2.5, offset=80):
    return np.clip(frame.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def three_shots(clips):
    """retalk_1 (30 frames), liveportrait_d9 (45), retalk_2 (25): cuts at frames 30 and 75."""
    return _resized(clips["retalk_1"][:30]) + _resized(clips["liveportrait_d9"][:45]) + _resized(clips["retalk_2"][:25])


def test_cuts_between_three_clips_are_found_frame_accurately(three_shots):
    signatures = _signatures(three_shots)
    assert signatures.shape == (100, SIGNATURE_SIZE) and signatures.dtype == np.float32
    differences = frame_differences(signatures)
    print(f"differences at the cuts {differences[[30, 75]].round(3).tolist()}, "
          f"largest elsewhere {np.delete(differences, [30, 75]).max():.4f}")
    assert find_shots(signatures) == [Shot(0, 0, 29), Shot(1, 30, 74), Shot(2, 75, 99)]


def test_a_one_frame_shot_is_its_own_shot(clips):
    frames = _resized(clips["retalk_1"][:20]) + _resized(clips["liveportrait_d0"][:1]) + _resized(clips["retalk_3"][:20])
    assert find_cuts(_signatures(frames)) == [20, 21]


@pytest.mark.parametrize("name", CLIPS)
def test_a_whole_talking_head_clip_is_one_shot(clips, name):
    signatures = _signatures(clips[name])
    differences = frame_differences(signatures)
    print(f"{name}: {len(signatures)} frames, largest difference {differences.max():.4f}, median {np.median(differences[1:]):.4f}")
    assert find_shots(signatures) == [Shot(0, 0, len(signatures) - 1)]


def test_old_film_with_grain_and_flicker_is_one_shot():
    paths = sorted(asset("media/oldfilm_001").glob("*.png"))
    assert len(paths) == 24
    signatures = _signatures([np.ascontiguousarray(cv2.imread(str(path))[..., ::-1]) for path in paths])
    print(f"old film: largest difference {frame_differences(signatures).max():.4f}")
    assert find_shots(signatures) == [Shot(0, 0, 23)]


@pytest.mark.parametrize("length", [1, 2])
def test_a_flash_of_one_or_two_frames_stays_inside_its_shot(three_shots, length):
    frames = list(three_shots)
    for index in range(50, 50 + length):          # inside the second shot (30..74)
        frames[index] = _brighten(frames[index])
    signatures = _signatures(frames)
    print(f"{length}-frame flash: jumps {frame_differences(signatures)[50:52 + length].round(3).tolist()}")
    assert find_cuts(signatures) == [30, 75]


def test_a_longer_burst_is_taken_for_a_short_shot(three_shots):
    # Documented limit: more than FLASH_MAX_FRAMES (2) changed frames are a shot of their own.
    frames = list(three_shots)
    for index in range(50, 53):
        frames[index] = _brighten(frames[index])
    assert find_cuts(_signatures(frames)) == [30, 50, 53, 75]


def test_a_flash_on_the_first_frame_of_a_shot_keeps_the_cut(three_shots):
    # Documented limit: the flashed frame becomes a one-frame shot (a strong flash clips
    # the frame, and nothing cheap tells reliably which side of the cut it belongs to).
    frames = list(three_shots)
    frames[30] = _brighten(frames[30])
    assert find_cuts(_signatures(frames)) == [30, 31, 75]


def test_fades_and_dissolves_are_not_cuts(clips):
    a, b = _resized(clips["retalk_1"][:42]), _resized(clips["liveportrait_d3"][:42])
    fade = [(a[29] * (1 - t)).astype(np.uint8) for t in np.linspace(0, 1, 12)]
    fade += [(b[0] * t).astype(np.uint8) for t in np.linspace(0, 1, 12)]
    through_black = a[:30] + fade + b[:30]
    dissolve = a[:30] + [(a[30 + i] * (1 - t) + b[i] * t).astype(np.uint8) for i, t in enumerate(np.linspace(0, 1, 12))] + b[12:42]
    for name, frames in (("fade through black", through_black), ("dissolve", dissolve)):
        signatures = _signatures(frames)
        print(f"{name}: largest difference {frame_differences(signatures).max():.3f}")
        assert len(find_shots(signatures)) == 1, name


def test_a_fast_camera_pan_is_not_a_cut(clips):
    wide = cv2.resize(clips["retalk_2"][0], (640, 640), interpolation=cv2.INTER_AREA)
    # A tenth of the frame width per frame: faster than most pans in films.
    pan = [wide[100:420, 20 * i:20 * i + 320] for i in range(16)]
    signatures = _signatures(pan)
    print(f"pan: differences up to {frame_differences(signatures).max():.3f}")
    assert len(find_shots(signatures)) == 1


def test_signature_is_cheap_on_1080p_frames(clips):
    frame = cv2.resize(clips["retalk_2"][0], (1920, 1080))
    frame_signature(frame)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        frame_signature(frame)
        times.append(time.perf_counter() - start)
    print(f"frame_signature on 1080p: median {1000 * np.median(times):.2f} ms")
    assert np.median(times) < 0.004  # about 0.3-0.6 ms on an idle core; room for a busy machine


def test_empty_and_wrong_inputs():
    assert find_shots(np.zeros((0, SIGNATURE_SIZE), np.float32)) == []
    assert find_shots(np.zeros((1, SIGNATURE_SIZE), np.float32)) == [Shot(0, 0, 0)]
    with pytest.raises(ValueError):
        find_shots(np.zeros((4, 10), np.float32))
    with pytest.raises(ValueError):
        frame_signature(np.zeros((10, 10), np.uint8))


def _shots(lengths):
    shots, first = [], 0
    for index, length in enumerate(lengths):
        shots.append(Shot(index, first, first + length - 1))
        first += length
    return shots


def test_chunks_hold_whole_consecutive_shots_of_about_the_target():
    shots = _shots([40, 30, 50, 10, 10, 250, 20, 90, 60, 5])
    chunks = chunk_shots(shots, 100)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert [shot for chunk in chunks for shot in chunk.shots] == shots          # every shot once, in order
    assert [len(chunk.frames) for chunk in chunks] == [120, 20, 250, 110, 65]
    assert chunks[2].shots == (shots[5],)                                     # longer than the target: alone
    assert chunks[0].first_frame == 0 and chunks[-1].last_frame == shots[-1].last_frame
    assert all(a.last_frame + 1 == b.first_frame for a, b in zip(chunks, chunks[1:]))


def test_chunking_edge_cases():
    assert chunk_shots([], 100) == []
    assert [len(c.shots) for c in chunk_shots(_shots([1] * 10), 3)] == [3, 3, 3, 1]
    assert [len(c.shots) for c in chunk_shots(_shots([500, 500]), 100)] == [1, 1]
    with pytest.raises(ValueError):
        chunk_shots(_shots([10]), 0)
