"""The film's texture on restored faces, on real frames: the texture measure, and the frame's
detail above the crop's resolution kept at paste-back but for the film's grain."""
import cv2
import numpy as np
import pytest

from tests.media import clip_frame, largest_face, old_film
from film_restore.finish import bands, grain_model, measures
from film_restore.finish.colour import luma
from film_restore.finish.paste import face_layer, frame_matte
from film_restore.faces import align_face

CROP = 256  # our shipped model's crop


def identity_paste(rgb, face, original=None):
    """Paste-back of the aligned crop itself (a restorer that changes nothing), as float."""
    aligned = align_face(rgb, face, CROP)
    return aligned, face_layer(rgb.shape, [(aligned, aligned.crop.astype(np.float32))], original)


def blend(rgb, layer, alpha):
    return np.clip(rgb + alpha[..., None] * (layer - rgb), 0, 255)


def test_texture_ratio_is_one_for_an_untouched_face_and_drops_for_a_smoothed_one(analyzer):
    rgb = clip_frame("retalk_2")
    face = largest_face(analyzer, rgb)
    assert measures.texture_ratio(rgb, rgb, face.landmarks) == pytest.approx(1.0)
    matte = frame_matte(rgb.shape, align_face(rgb, face, CROP))
    smoothed = blend(rgb.astype(np.float32), cv2.GaussianBlur(rgb, (0, 0), 2).astype(np.float32), matte)
    assert measures.texture_ratio(rgb, smoothed, face.landmarks) < 0.5
    # The ring is outside the face's matte: the paste-back never changes it.
    window, central, ring = measures.texture_regions(rgb.shape, face.landmarks)
    assert ring.sum() > 1000 and central.sum() > 1000
    assert not (matte[window] > 0)[ring].any()


def fine_pattern(shape, period: float, amplitude: float) -> np.ndarray:
    x = np.arange(shape[1], dtype=np.float32)
    return np.broadcast_to(amplitude * np.sin(2 * np.pi * x / period), shape[:2]).astype(np.float32)


def pattern_amplitude(image: np.ndarray, period: float, mask: np.ndarray) -> float:
    """The amplitude of the horizontal sinusoid of this period in the luma within mask (lock-in)."""
    x = np.broadcast_to(np.arange(image.shape[1]), image.shape[:2])[mask]
    values = luma(image)[mask]
    values = values - values.mean()
    phase = 2 * np.pi * x / period
    return float(2 * np.hypot((values * np.sin(phase)).mean(), (values * np.cos(phase)).mean()))


def test_close_up_larger_than_the_crop_keeps_its_fine_detail(analyzer):
    # A real face enlarged 1.6x: it spans ~480 frame pixels, so the 256 crop holds it at
    # ~0.3 crop pixels per frame pixel (crop Nyquist 0.15 cycles per frame pixel). A
    # pattern of 0.3 cycles per pixel lies above it.
    source = clip_frame("retalk_2")
    big = cv2.resize(source, None, fx=1.6, fy=1.6, interpolation=cv2.INTER_CUBIC)
    big_face = largest_face(analyzer, big)
    frequency = 0.3  # cycles per frame pixel
    period = 1 / frequency
    patterned = np.clip(big.astype(np.float32) + fine_pattern(big.shape, period, 6.0)[..., None], 0, 255).astype(np.uint8)
    aligned = align_face(patterned, big_face, CROP)
    assert 0.5 * aligned.transform.scale < frequency  # above the crop's Nyquist, in frame pixels
    window, central, _ = measures.texture_regions(big.shape, big_face.landmarks)
    mask = np.zeros(big.shape[:2], bool)
    mask[window] = central
    before = pattern_amplitude(patterned.astype(np.float32), period, mask)
    assert before == pytest.approx(6.0, rel=0.1)
    _, (layer, alpha) = identity_paste(patterned, big_face, original=patterned)
    # A restorer that changes nothing gives the close-up back as it was, not its resampled crop.
    assert np.abs(blend(patterned.astype(np.float32), layer, alpha) - patterned)[mask].max() < 0.01
    kept = pattern_amplitude(blend(patterned.astype(np.float32), layer, alpha), period, mask)
    _, (layer, alpha) = identity_paste(patterned, big_face)
    lost = pattern_amplitude(blend(patterned.astype(np.float32), layer, alpha), period, mask)
    assert kept == pytest.approx(before, rel=0.05)
    assert lost < 0.2 * before  # without the band split the crop cannot carry it


def test_close_up_keeps_its_detail_but_not_the_grain_the_restoration_removed(analyzer):
    # The enlarged real face with white grey grain of 4 levels, and on its left half a pattern
    # above the crop's Nyquist; a "restorer" that removed the grain (returns the clean crop).
    big = cv2.resize(clip_frame("retalk_2"), None, fx=1.6, fy=1.6, interpolation=cv2.INTER_CUBIC)
    face = largest_face(analyzer, big)
    period, centre = 1 / 0.3, int(face.landmarks[:, 0].mean())
    pattern = fine_pattern(big.shape, period, 12.0).copy()
    pattern[:, centre:] = 0
    sharp = big.astype(np.float32) + pattern[..., None]
    grainy = sharp + 4.0 * np.random.default_rng(0).standard_normal(big.shape[:2]).astype(np.float32)[..., None]
    white = grain_model.GrainModel(np.full(grain_model.LUMA_BINS, 4.0), np.zeros(len(grain_model.GRAIN_OFFSETS)), np.ones(3), None)
    aligned = align_face(np.clip(grainy, 0, 255).astype(np.uint8), face, CROP)
    clean_crop = align_face(np.clip(sharp, 0, 255).astype(np.uint8), face, CROP).crop.astype(np.float32)
    window, central, _ = measures.texture_regions(big.shape, face.landmarks)
    left, right = np.zeros(big.shape[:2], bool), np.zeros(big.shape[:2], bool)
    left[window], right[window] = central, central
    left[:, centre - int(period):] = False
    right[:, :centre + int(period)] = False

    def pasted(grain_std=None):
        layer, alpha = face_layer(big.shape, [(aligned, clean_crop)], grainy, grain_std)
        return blend(grainy, layer, alpha)

    cored = pasted(grain_std=[white.std_above])
    grain_left = lambda image: measures.fine_detail(image - sharp)[right].std()  # noqa: E731
    assert grain_left(pasted()) > 0.8 * grain_left(grainy)  # the band split alone gives the grain back
    assert grain_left(cored) < 0.35 * grain_left(grainy)
    assert pattern_amplitude(cored, period, left) > 0.8 * pattern_amplitude(sharp, period, left)


def test_face_no_larger_than_the_crop_is_exactly_unaffected(analyzer):
    rgb = old_film()
    face = largest_face(analyzer, rgb)
    aligned, (with_original, alpha) = identity_paste(rgb, face, original=rgb)
    assert aligned.transform.scale >= 1
    _, (without, alpha_without) = identity_paste(rgb, face)
    assert np.array_equal(with_original, without) and np.array_equal(alpha, alpha_without)
    assert bands.frame_detail_weight(1.0) == 0 and bands.frame_detail_weight(0.7) == 1
    assert 0 < bands.frame_detail_weight(0.85) < 1  # faded in, so a zoom does not pop
