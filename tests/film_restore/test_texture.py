"""The film's texture on restored faces, on real frames: the texture measure, the frame's
detail above the crop's resolution kept at paste-back, and grain estimated and re-created."""
import cv2
import numpy as np
import pytest

from tests.assets import asset
from film_restore import texture
from film_restore.paste import face_layer, frame_matte, paste_back
from film_restore.faces import FaceAnalyzer, align_face

CROP = 256  # our shipped model's crop


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer.from_models_dir(asset("models"), detector_size=640)


def clip_frame(name: str, number: int = 0) -> np.ndarray:
    import av

    with av.open(str(asset(f"media/clips/{name}.mp4"))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == number:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{name} has no frame {number}")


def old_film(name: str = "100") -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(asset(f"media/oldfilm_001/{name}.png")))[:, :, ::-1])


def largest_face(analyzer, rgb):
    faces = analyzer.analyze(rgb)
    assert faces, "the real frame shows a face"
    return max(faces, key=lambda face: texture.face_width(face.landmarks))


def identity_paste(rgb, face, **options):
    """Paste-back of the aligned crop itself (a restorer that changes nothing), as float."""
    aligned = align_face(rgb, face, CROP)
    return aligned, face_layer(rgb.shape, [(aligned, aligned.crop.astype(np.float32))], **options)


def blend(rgb, layer, alpha):
    return np.clip(rgb + alpha[..., None] * (layer - rgb), 0, 255)


def test_texture_ratio_is_one_for_an_untouched_face_and_drops_for_a_smoothed_one(analyzer):
    rgb = clip_frame("retalk_2")
    face = largest_face(analyzer, rgb)
    assert texture.texture_ratio(rgb, rgb, face.landmarks) == pytest.approx(1.0)
    matte = frame_matte(rgb.shape, align_face(rgb, face, CROP))
    smoothed = blend(rgb.astype(np.float32), cv2.GaussianBlur(rgb, (0, 0), 2).astype(np.float32), matte)
    assert texture.texture_ratio(rgb, smoothed, face.landmarks) < 0.5
    # The ring is outside the face's matte: the paste-back never changes it.
    window, central, ring = texture.texture_regions(rgb.shape, face.landmarks)
    assert ring.sum() > 1000 and central.sum() > 1000
    assert not (matte[window] > 0)[ring].any()


def fine_pattern(shape, period: float, amplitude: float) -> np.ndarray:
    x = np.arange(shape[1], dtype=np.float32)
    return np.broadcast_to(amplitude * np.sin(2 * np.pi * x / period), shape[:2]).astype(np.float32)


def pattern_amplitude(image: np.ndarray, period: float, mask: np.ndarray) -> float:
    """The amplitude of the horizontal sinusoid of this period in the luma within mask (lock-in)."""
    x = np.broadcast_to(np.arange(image.shape[1]), image.shape[:2])[mask]
    values = texture.luma(image)[mask]
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
    window, central, _ = texture.texture_regions(big.shape, big_face.landmarks)
    mask = np.zeros(big.shape[:2], bool)
    mask[window] = central
    before = pattern_amplitude(patterned.astype(np.float32), period, mask)
    assert before == pytest.approx(6.0, rel=0.1)
    _, (layer, alpha) = identity_paste(patterned, big_face, original=patterned)
    kept = pattern_amplitude(blend(patterned.astype(np.float32), layer, alpha), period, mask)
    _, (layer, alpha) = identity_paste(patterned, big_face)
    lost = pattern_amplitude(blend(patterned.astype(np.float32), layer, alpha), period, mask)
    assert kept == pytest.approx(before, rel=0.05)
    assert lost < 0.2 * before  # without the band split the crop cannot carry it


def test_face_no_larger_than_the_crop_is_exactly_unaffected(analyzer):
    rgb = old_film()
    face = largest_face(analyzer, rgb)
    aligned, (with_original, alpha) = identity_paste(rgb, face, original=rgb)
    assert aligned.transform.scale >= 1
    _, (without, alpha_without) = identity_paste(rgb, face)
    assert np.array_equal(with_original, without) and np.array_equal(alpha, alpha_without)
    assert texture.frame_detail_weight(1.0) == 0 and texture.frame_detail_weight(0.7) == 1
    assert 0 < texture.frame_detail_weight(0.85) < 1  # faded in, so a zoom does not pop


def correlated_noise(rng, shape, sigma_px: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma_px)
    return noise / noise.std()


def test_grain_estimate_recovers_known_grain_on_a_real_frame():
    # Black-and-white film (its own grain ~2 levels) plus known grey grain of 8 levels,
    # correlated over about a pixel: the estimate is close to their sum, per luma bin.
    rgb = old_film().astype(np.float32)
    own = texture.estimate_grain([(rgb, np.ones(rgb.shape[:2], bool))])
    added = 8.0 * correlated_noise(np.random.default_rng(1), rgb.shape[:2], 0.7)
    model = texture.estimate_grain([(rgb + added[..., None], np.ones(rgb.shape[:2], bool))])
    assert model.monochrome and own.monochrome
    populated = slice(1, 6)  # the luma bins this frame fills
    expected = np.sqrt(own.amplitude ** 2 + 8.0 ** 2)[populated]
    assert np.allclose(model.amplitude[populated], expected, rtol=0.1), (model.amplitude, expected)


def autocorrelation(fields: np.ndarray, dy: int, dx: int) -> float:
    """Correlation of ... x H x W fields with themselves shifted by (dy, dx) (dy, dx >= 0), pooled."""
    height, width = fields.shape[-2:]
    a, b = fields[..., dy:, dx:], fields[..., :height - dy, :width - dx]
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_synthesised_grain_matches_the_estimate_of_a_real_noisy_frame():
    rgb = old_film().astype(np.float32)
    noisy = rgb + 6.0 * correlated_noise(np.random.default_rng(2), rgb.shape[:2], 0.8)[..., None]
    everywhere = np.ones(rgb.shape[:2], bool)
    model = texture.estimate_grain([(noisy, everywhere)])
    # Amplitude per luma bin: the synthesised grain's std among pixels of each luma bin.
    grey = cv2.GaussianBlur(texture.luma(rgb), (0, 0), 3)
    grain = texture.synthesise_grain(model, grey, np.random.default_rng(3))
    bins = np.clip(np.digitize(grey, texture.LUMA_BIN_EDGES) - 1, 0, texture.LUMA_BINS - 1)
    for k in range(texture.LUMA_BINS):
        inside = bins == k
        if inside.sum() > 5000:
            expected = model.amplitude_at(grey[inside])
            assert grain[..., 0][inside].std() == pytest.approx(np.sqrt((expected ** 2).mean()), rel=0.1)
    # Spectrum: re-estimated from the synthesised grain on a flat grey picture, the model comes back.
    flat = np.full(rgb.shape, 128, np.float32)
    unit = texture.GrainModel(np.full(texture.LUMA_BINS, 6.0), model.ar, np.ones(3), None)
    again = texture.estimate_grain([(flat + texture.synthesise_grain(unit, flat[..., 0], np.random.default_rng(4)), everywhere)])
    residual = texture.flat_blocks(noisy, everywhere)[1]
    synthetic = texture.flat_blocks(flat + texture.synthesise_grain(unit, flat[..., 0], np.random.default_rng(5)), everywhere)[1]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (0, 2)):
        source, synthesised = autocorrelation(residual, dy, dx), autocorrelation(synthetic, dy, dx)
        assert synthesised == pytest.approx(source, abs=0.07), (dy, dx)
    assert again.amplitude[4] == pytest.approx(6.0, rel=0.07)


def test_black_and_white_film_gets_monochrome_grain_and_colour_keeps_its_channel_correlation():
    rng = np.random.default_rng(6)
    old = old_film().astype(np.float32)
    mono = texture.estimate_grain([(old, np.ones(old.shape[:2], bool))])
    grain = texture.synthesise_grain(mono, texture.luma(old), rng)
    assert mono.monochrome and np.array_equal(grain[..., 0], grain[..., 2])
    # Colour stock: each dye layer its own grain plus a shared part; red and green closer.
    rgb = clip_frame("liveportrait_d9").astype(np.float32)
    shared, red_green, own = (correlated_noise(rng, rgb.shape[:2], 0.6) for _ in range(3))
    channels = np.stack([5 * shared + 4 * red_green + 2 * own, 5 * shared + 4 * red_green - 2 * own,
                         5 * shared + 4 * correlated_noise(rng, rgb.shape[:2], 0.6)], axis=-1)
    model = texture.estimate_grain([(rgb + channels, np.ones(rgb.shape[:2], bool))])
    assert not model.monochrome
    estimated = model.channel_mix @ model.channel_mix.T
    synthesised = np.corrcoef(texture.synthesise_grain(model, texture.luma(rgb), rng).reshape(-1, 3).T)
    # The estimate sees the colour frame's own fine texture too, so the truth is met loosely.
    truth = np.corrcoef(channels.reshape(-1, 3).T)
    assert np.allclose(synthesised, estimated, atol=0.03)
    assert np.allclose(estimated, truth, atol=0.12), (estimated, truth)
    assert estimated[0, 1] > estimated[0, 2] + 0.1


def test_grain_is_fresh_each_frame_and_reproducible(analyzer):
    rgb = old_film()
    face = largest_face(analyzer, rgb)
    tracks = texture.TrackGrain()
    tracks.observe({(0, 0): (rgb, face.landmarks)})
    aligned = align_face(rgb, face, CROP)
    smooth = cv2.GaussianBlur(aligned.crop, (0, 0), 2).astype(np.float32)  # a "restored" face without grain

    def layer(frame):
        return face_layer(rgb.shape, [(aligned, smooth)], rgb, [tracks.for_face(frame, 0)])

    (first, alpha), (again, _), (second, _) = layer(10), layer(10), layer(11)
    inside = alpha >= 1
    plain, _ = face_layer(rgb.shape, [(aligned, smooth)], rgb)
    grain_t, grain_next = (first - plain)[inside][:, 0], (second - plain)[inside][:, 0]
    assert np.array_equal(first, again)
    assert abs(np.corrcoef(grain_t, grain_next)[0, 1]) < 0.05
    assert 0.3 < grain_t.std() <= texture.GRAIN_MAX_GAIN * tracks.models[0].amplitude.max() * 1.1


def test_grain_fills_only_the_texture_the_face_lacks():
    rgb = old_film().astype(np.float32)
    model = texture.estimate_grain([(rgb, np.ones(rgb.shape[:2], bool))])
    region, alpha = rgb[100:228, 200:328], np.ones((128, 128), np.float32)
    assert np.array_equal(texture.add_missing_grain(region, region, alpha, model, (0, 0)), region)
    # A restorer that removed exactly the film's grain: the grain comes back in its amount.
    smooth = cv2.GaussianBlur(region, (0, 0), 3)
    grainy = smooth + texture.synthesise_grain(model, texture.luma(smooth), np.random.default_rng(1))
    filled = texture.add_missing_grain(smooth, grainy, alpha, model, (0, 0))
    detail = lambda image: texture.detail_energy(image, alpha >= 1)  # noqa: E731
    assert detail(smooth) < 0.3 * detail(grainy)
    assert detail(filled) == pytest.approx(detail(grainy), rel=0.1)
    # A loss of structure beyond the film's grain is filled only up to GRAIN_MAX_GAIN times it.
    capped = texture.add_missing_grain(smooth, region + 20 * (region - smooth), alpha, model, (0, 0)) - smooth
    assert capped.std() < texture.GRAIN_MAX_GAIN * model.amplitude.max() * 1.2


def test_paste_back_with_texture_leaves_pixels_outside_the_matte(analyzer):
    rgb = clip_frame("retalk_2")
    face = largest_face(analyzer, rgb)
    tracks = texture.TrackGrain()
    tracks.observe({(0, 0): (rgb, face.landmarks)})
    aligned = align_face(rgb, face, CROP)
    layer, alpha = face_layer(rgb.shape, [(aligned, aligned.crop)], rgb, [tracks.for_face(0, 0)])
    result = blend(rgb.astype(np.float32), layer, alpha)
    assert np.array_equal(result[alpha == 0], rgb[alpha == 0].astype(np.float32))
    assert paste_back(rgb, [(aligned, aligned.crop)]).shape == rgb.shape
