"""The measures of film_restore.quality on a real talking-head track."""
import numpy as np
import pytest

from film_restore import quality


def test_flow_follows_a_real_face(talking_head):
    crops = talking_head["crops"].astype(np.float32)
    first, later = talking_head["crops"][0], talking_head["crops"][3]
    flow, valid, _, _ = quality.flow_pair(later, first)
    # The earlier face brought onto the later one matches it better than it did unmoved.
    assert np.abs(quality.warp(first, flow) - crops[3]).mean() < 0.7 * np.abs(crops[0] - crops[3]).mean()
    assert 0.7 < valid.mean() <= 1.0


def test_flicker_is_one_for_the_input_and_rises_with_added_flicker(talking_head):
    crops = talking_head["crops"][:8]
    assert quality.flicker(crops, crops).ratio == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(0, 4, crops.shape).astype(np.float32)
    flickering = quality.flicker(crops, crops + noise)
    assert flickering.ratio > 1.3
    # The same change on every frame (a steady tint) adds no flicker.
    assert quality.flicker(crops, crops.astype(np.float32) + 10).ratio == pytest.approx(1.0, abs=0.02)


def test_identity_of_a_real_face_to_its_actor(talking_head):
    embeddings = talking_head["embed"](talking_head["crops"][:4])
    assert (quality.identity(embeddings, talking_head["reference"]) > 0.6).all()
    assert quality.identity(embeddings, embeddings) == pytest.approx(np.ones(4), abs=1e-5)
    with pytest.raises(ValueError, match="one recogniser"):
        quality.identity(embeddings, np.ones(3, np.float32))


def test_fidelity_and_change_in_a_face_box(talking_head):
    frame = talking_head["frames"][0]
    box = talking_head["faces"][0].face.box
    noisy = np.clip(frame + np.random.default_rng(1).normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    psnr, ssim = quality.fidelity(noisy, frame, box)
    assert 31.5 < psnr < 33.0  # 20 log10(255 / 6) = 32.6 dB, less a little clipping
    assert 0.5 < ssim < 0.99
    assert quality.fidelity(frame, frame, box)[0] == float("inf")
    assert quality.mean_change(noisy, frame, box) == pytest.approx(6 * np.sqrt(2 / np.pi), rel=0.1)
    with pytest.raises(ValueError, match="outside"):
        quality.box_region(frame, (400, 400, 500, 500))


def test_steady_share_keeps_the_restoration_that_changes_no_more_than_the_input():
    # Two samples changing by 1 level; a restoration changing them by 3 and -1: the mean |change|
    # stays 1 up to half of it, then grows.
    assert quality.steady_share(np.array([1.0, 1.0]), np.array([3.0, -1.0])) == pytest.approx(0.5, abs=1e-4)
    assert quality.steady_share(np.array([2.0, -2.0]), np.array([1.0, -1.0])) == 1.0  # changes less: kept whole
    assert quality.steady_share(np.array([0.0, 0.0]), np.array([0.0, 0.00005])) == 1.0  # float rounding is not flicker
    assert quality.steady_share(np.array([0.0, 0.0]), np.array([0.5, -0.5])) < 0.01  # a still face must stay still
