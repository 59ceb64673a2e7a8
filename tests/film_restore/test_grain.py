"""The film's grain on real frames: estimated (only the share new each frame), re-created
fresh on restored faces with the film's spectrum, luma scaling and colour correlation; the
hold-still's share of a flickering restoration."""
import cv2
import numpy as np
import pytest

from film_restore.compose import ComposeSettings, Composer
from film_restore.faces import align_face
from film_restore.finish import grain, grain_model, measures, ops, steps
from film_restore.finish.colour import luma
from film_restore.finish.flow import image_flow
from film_restore.finish.paste import face_layer, paste_back
from film_restore.finish.window import Window
from film_restore.records import ChunkResult, Frame, Track, TrackedFace
from film_restore.video import RGBPicture
from tests.film_restore.test_texture import CROP, blend
from tests.media import clip_frame, largest_face, old_film


def correlated_noise(rng, shape, sigma_px: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma_px)
    return noise / noise.std()


def test_grain_estimate_recovers_known_grain_on_a_real_frame():
    # Black-and-white film (its own grain ~2 levels) plus known grey grain of 8 levels,
    # correlated over about a pixel: the estimate is close to their sum, per luma bin.
    rgb = old_film().astype(np.float32)
    own = grain_model.estimate_grain([(rgb, np.ones(rgb.shape[:2], bool))])
    added = 8.0 * correlated_noise(np.random.default_rng(1), rgb.shape[:2], 0.7)
    model = grain_model.estimate_grain([(rgb + added[..., None], np.ones(rgb.shape[:2], bool))])
    assert model.monochrome and own.monochrome
    populated = slice(1, 6)  # the luma bins this frame fills
    expected = np.sqrt(own.amplitude ** 2 + 8.0 ** 2)[populated]
    assert np.allclose(model.amplitude[populated], expected, rtol=0.1), (model.amplitude, expected)


def test_a_digital_black_bar_is_no_grain_sample():
    # A letterbox bar (digital black with a faint ramp, as padding or a digital fade) is flat but holds
    # no grain: the film's estimate is the same with the bar above it as without (before, what float
    # rounding left of the bar's planes was taken for grain and brought the darkest luma bin's to 0).
    rgb = old_film().astype(np.float32)
    noisy = rgb + 6.0 * correlated_noise(np.random.default_rng(3), rgb.shape[:2], 0.8)[..., None]
    bar = 12 * (len(rgb) // 48)  # whole blocks: no block holds both bar and film
    barred = noisy.copy()
    barred[:bar] = (16.0 + 0.01 * np.arange(rgb.shape[1], dtype=np.float32))[None, :, None]
    without = grain_model.estimate_grain([(noisy[bar:], np.ones(noisy[bar:].shape[:2], bool))])
    with_bar = grain_model.estimate_grain([(barred, np.ones(barred.shape[:2], bool))])
    assert without.amplitude[0] > 3
    assert np.allclose(with_bar.amplitude, without.amplitude, rtol=1e-6), (with_bar.amplitude, without.amplitude)


def test_the_grain_estimate_in_torch_is_the_numpy_one(analyzer):
    # A GPU node estimates each track's grain on its device: the same model from torch tensors
    # (here on the CPU) as from numpy, on a real noisy clip's face and its flows.
    import torch

    clean = [clip_frame("retalk_2", number) for number in range(3)]
    frames = [np.clip(frame + np.random.default_rng(number).normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
              for number, frame in enumerate(clean)]
    window = grain_model.grain_window(frames[0].shape, largest_face(analyzer, frames[0]).landmarks)
    regions = [frame[window] for frame in frames]
    flows = flows_of(regions)
    numpy_model = grain_model.estimate_track_grain(regions, flows)
    torch_model = grain_model.estimate_track_grain([torch.as_tensor(region) for region in regions],
                                                   [(torch.as_tensor(flow), torch.as_tensor(valid)) for flow, valid in flows])
    assert torch_model.monochrome == numpy_model.monochrome
    assert np.allclose(torch_model.amplitude, numpy_model.amplitude, rtol=1e-3)
    assert np.allclose(torch_model.ar, numpy_model.ar, atol=1e-5)
    assert torch_model.new_each_frame == pytest.approx(numpy_model.new_each_frame, abs=1e-4)


def autocorrelation(fields: np.ndarray, dy: int, dx: int) -> float:
    """Correlation of ... x H x W fields with themselves shifted by (dy, dx) (dy, dx >= 0), pooled."""
    height, width = fields.shape[-2:]
    a, b = fields[..., dy:, dx:], fields[..., :height - dy, :width - dx]
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_synthesised_grain_matches_the_estimate_of_a_real_noisy_frame():
    rgb = old_film().astype(np.float32)
    noisy = rgb + 6.0 * correlated_noise(np.random.default_rng(2), rgb.shape[:2], 0.8)[..., None]
    everywhere = np.ones(rgb.shape[:2], bool)
    model = grain_model.estimate_grain([(noisy, everywhere)])
    # Amplitude per luma bin: the synthesised grain's std among pixels of each luma bin.
    grey = cv2.GaussianBlur(luma(rgb), (0, 0), 3)
    synthesised = grain.synthesise_grain(grain.GrainTile(model, 3), grey, 3)
    bins = np.clip(np.digitize(grey, grain_model.LUMA_BIN_EDGES) - 1, 0, grain_model.LUMA_BINS - 1)
    for k in range(grain_model.LUMA_BINS):
        inside = bins == k
        if inside.sum() > 5000:
            expected = model.amplitude_at(grey[inside])
            assert synthesised[..., 0][inside].std() == pytest.approx(np.sqrt((expected ** 2).mean()), rel=0.1)
    # Spectrum: re-estimated from the synthesised grain on a flat grey picture, the model comes back.
    flat = np.full(rgb.shape, 128, np.float32)
    unit = grain_model.GrainModel(np.full(grain_model.LUMA_BINS, 6.0), model.ar, np.ones(3), None)
    again = grain_model.estimate_grain([(flat + grain.synthesise_grain(grain.GrainTile(unit, 4), flat[..., 0], 4), everywhere)])
    residual = grain_model.flat_blocks(noisy, everywhere)[1]
    synthetic = grain_model.flat_blocks(flat + grain.synthesise_grain(grain.GrainTile(unit, 5), flat[..., 0], 5), everywhere)[1]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (0, 2)):
        source, synthesised = autocorrelation(residual, dy, dx), autocorrelation(synthetic, dy, dx)
        assert synthesised == pytest.approx(source, abs=0.07), (dy, dx)
    assert again.amplitude[4] == pytest.approx(6.0, rel=0.07)


def test_black_and_white_film_gets_monochrome_grain_and_colour_keeps_its_channel_correlation():
    rng = np.random.default_rng(6)
    old = old_film().astype(np.float32)
    mono = grain_model.estimate_grain([(old, np.ones(old.shape[:2], bool))])
    field = grain.synthesise_grain(grain.GrainTile(mono, 6), luma(old), 6)
    assert mono.monochrome and np.array_equal(field[..., 0], field[..., 2])
    # Colour stock: each dye layer its own grain plus a shared part; red and green closer.
    rgb = clip_frame("liveportrait_d9").astype(np.float32)
    shared, red_green, own = (correlated_noise(rng, rgb.shape[:2], 0.6) for _ in range(3))
    channels = np.stack([5 * shared + 4 * red_green + 2 * own, 5 * shared + 4 * red_green - 2 * own,
                         5 * shared + 4 * correlated_noise(rng, rgb.shape[:2], 0.6)], axis=-1)
    model = grain_model.estimate_grain([(rgb + channels, np.ones(rgb.shape[:2], bool))])
    assert not model.monochrome
    estimated = model.channel_mix @ model.channel_mix.T
    synthesised = np.corrcoef(grain.synthesise_grain(grain.GrainTile(model, 7), luma(rgb), 7).reshape(-1, 3).T)
    # The estimate sees the colour frame's own fine texture too, so the truth is met loosely.
    truth = np.corrcoef(channels.reshape(-1, 3).T)
    assert np.allclose(synthesised, estimated, atol=0.03)
    assert np.allclose(estimated, truth, atol=0.12), (estimated, truth)
    assert estimated[0, 1] > estimated[0, 2] + 0.1


def face_track(analyzer, frames: list[np.ndarray]) -> Track:
    """One track of the largest face on each of these consecutive frames (numbered from 0)."""
    return Track(0, tuple(TrackedFace(index, largest_face(analyzer, rgb)) for index, rgb in enumerate(frames)))


def in_memory(frames: list[np.ndarray]) -> list[Frame]:
    return [Frame(index, index, RGBPicture(rgb)) for index, rgb in enumerate(frames)]


def film_track(analyzer, frames: list[np.ndarray]) -> grain.GrainTile | None:
    """Track 0's grain from consecutive frames of one face (its largest), as the Composer's steps estimate it."""
    grain_models = steps.GrainModels()
    plan = steps.FacePlan.of([face_track(analyzer, frames)], min_face=0)
    steps.Chain([steps.Align(plan, CROP), steps.Follow(), grain_models])(Window(in_memory(frames), frames[0].shape[:2]))
    return grain_models.tiles.get(0)


def flows_of(pictures: list[np.ndarray]) -> list:
    """Each later picture's (flow to the one before, valid), at its full size."""
    return [image_flow(before, after, side=1024) for before, after in zip(pictures, pictures[1:])]


def test_grain_change_along_a_real_flow_is_predicted_with_the_flows_interpolation():
    # The flicker measure brings the earlier frame along the optical flow with bilinear
    # interpolation, which averages its grain: white grain halfway between pixels keeps a
    # quarter of its variance. The prediction holds pixel by pixel for white, for the real
    # film's and for diagonally correlated grain, on the flow between two real consecutive frames.
    before, after = clip_frame("retalk_2", 0), clip_frame("retalk_2", 1)
    flow = image_flow(before, after)[0][200:328, 300:428]
    correlated = grain_model.estimate_grain([(old_film(), np.ones(old_film().shape[:2], bool))]).ar
    lopsided = np.zeros(len(grain_model.GRAIN_OFFSETS))  # correlated along one diagonal only: each lag in its place
    lopsided[grain_model.GRAIN_OFFSETS.index((-1, 1))] = 0.6
    for ar in (np.zeros(len(grain_model.GRAIN_OFFSETS)), correlated, lopsided):
        fields = grain.unit_grain(ar, flow.shape[:2], np.random.default_rng(0), 256)
        inner = np.s_[:, 16:-16, 16:-16]  # the flow's reach stays inside the fields
        empirical = ops.warp(fields[..., None], np.broadcast_to(flow, (len(fields), *flow.shape)))[..., 0][inner].var(axis=0)
        model = grain_model.GrainModel(np.ones(grain_model.LUMA_BINS), ar, np.ones(3), None)
        predicted = model.warped_variance(flow)[inner[1:]]
        assert empirical.mean() == pytest.approx(predicted.mean(), rel=0.02)
        # Pixel by pixel: in each quarter of the predicted values the mean agrees.
        quarters = np.digitize(predicted, np.quantile(predicted, [0.25, 0.5, 0.75]))
        for quarter in range(4):
            assert empirical[quarters == quarter].mean() == pytest.approx(predicted[quarters == quarter].mean(), rel=0.03)
    assert predicted.min() < 0.9 * predicted.max()  # the flow's fractional offsets vary


def test_only_the_share_of_texture_new_each_frame_counts_as_grain(analyzer):
    # A clean real clip: its fine texture (skin, hair, compression) moves with the face.
    clean = [clip_frame("retalk_2", number) for number in range(3)]
    noisy = [np.clip(frame + np.random.default_rng(number).normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
             for number, frame in enumerate(clean)]
    face = largest_face(analyzer, clean[0])
    window = grain_model.grain_window(clean[0].shape, face.landmarks)
    for frames, least, most in ((clean, 0.0, 0.35), (noisy, 0.85, 1.0)):  # noise is new each frame
        regions = [frame[window] for frame in frames]
        assert least <= grain_model.temporal_detail(regions, flows_of(regions)).new_each_frame <= most
    assert grain_model.temporal_detail(clean[:1], []) is None
    # The same from the track's own flow (aligned crops, brought into the frame), as the Composer estimates it.
    clean_track, noisy_track = film_track(analyzer, clean), film_track(analyzer, noisy)
    assert clean_track.model.new_each_frame < 0.35 and noisy_track.model.new_each_frame > 0.85
    assert noisy_track.model.amplitude[3] == pytest.approx(0.668 * 6, rel=0.15)  # the luma of RGB noise of 6
    # A restorer that smoothed the face: the noise it removed comes back as fresh grain, the
    # clean face's lost texture (which moved with the face) mostly does not.
    for frames, tile, least, most in ((noisy, noisy_track, 0.6, 0.95), (clean, clean_track, 0.0, 0.35)):
        regions = [frame[window].astype(np.float32) for frame in frames]
        smooth = [cv2.GaussianBlur(region, (0, 0), 2) for region in regions]
        inside = np.ones(regions[0].shape[:2], bool)
        change = measures.change_samples(regions, smooth, [inside] * len(regions), flows_of(regions))
        allowed = grain.grain_allowed(change, tile.model)
        grained = [grain.add_missing_grain(picture, region, inside.astype(np.float32), tile, (t, 0), allowed)
                   for t, (picture, region) in enumerate(zip(smooth, regions))]
        before, after, added = grain.detail_energies([regions[1], smooth[1], grained[1] - smooth[1]], inside)
        assert least <= added / (before - after) <= most
        # The grain does not count as flicker: the face changes no more from frame to frame than before.
        assert measures.flicker(np.stack(regions), np.stack(grained)).ratio <= 1.0
    # One frame shows nothing of its grain's change: no model until two consecutive frames come.
    grain_models = steps.GrainModels()
    gapped = Track(0, (TrackedFace(0, face), TrackedFace(2, face)))
    plan = steps.FacePlan.of([gapped], min_face=0)
    plan.positions[2, 0] = 2  # the face between them is missing (not restored), not merely small
    steps.Chain([steps.Align(plan, CROP), steps.Follow(), grain_models])(Window(in_memory(clean), clean[0].shape[:2]))
    assert grain_models.tiles == {}


def test_a_restorer_that_flickers_keeps_only_the_share_that_changes_no_more_than_the_film(analyzer):
    # A restorer that smooths the face but adds fresh noise of 1 level on each frame makes it
    # change more from frame to frame than the film: only the share of it that does not is kept,
    # and the face then changes as much as the input. One that only smooths is kept whole.
    frames = [clip_frame("retalk_2", number) for number in range(4)]
    track = face_track(analyzer, frames)
    aligned = [align_face(frame, tracked.face, CROP) for frame, tracked in zip(frames, track.faces)]
    smooth = [cv2.GaussianBlur(a.crop, (0, 0), 2).astype(np.float32) for a in aligned]
    rng = np.random.default_rng(3)
    restorers = {"flickers": [crop + rng.normal(0, 1, crop.shape).astype(np.float32) for crop in smooth], "smooths": smooth}
    window = grain_model.grain_window(frames[0].shape, np.concatenate([tracked.face.landmarks for tracked in track.faces]))
    inputs = np.stack([frame[window] for frame in frames])
    grain_std = film_track(analyzer, frames).model.std_above
    for name, restored in restorers.items():
        composer = Composer(None, ComposeSettings("ffv1", CROP, grain="off"), lambda crops, boxes, actor: np.stack(restored))
        result = ChunkResult(0, 0, 0)
        [composed] = composer.windows(in_memory(frames), [track], result)
        outputs = np.stack([composed.pictures[t].rgb()[window].astype(np.float32) for t in range(4)])
        # Restored whole: pasted as the Composer pastes (the frame's detail kept above the crop's
        # resolution but for the track's grain), without the hold-still.
        layers = [face_layer(frames[t].shape, [(aligned[t], restored[t])], frames[t], [grain_std]) for t in range(4)]
        whole = np.stack([blend(frames[t].astype(np.float32), *layers[t])[window] for t in range(4)])
        inside = np.stack([layers[t][1][window] >= 1 for t in range(4)])
        held, unheld = (measures.flicker(inputs, np.round(pictures), inside).ratio for pictures in (outputs, whole))
        restoration = (whole - inputs)[inside]
        share = float(((outputs - inputs)[inside] * restoration).sum() / (restoration ** 2).sum())
        if name == "flickers":
            # The hold-still measures the change along the track's own flow; the frames' own flow here agrees within 3%.
            assert unheld > 1.05 and 0.2 < share < 0.9 and result.faces_held_still == 4
            assert held == pytest.approx(1.0, abs=0.03)
        else:
            assert unheld < 1.0 and result.faces_held_still == 0 and np.array_equal(outputs, np.round(whole))


def grained_layer(rgb, aligned, crop, tile, seed, allowed=np.inf):
    """The frame-sized layer of one face pasted with fresh grain (the Composer's Paste, then AddGrain)."""
    layer, alpha = face_layer(rgb.shape, [(aligned, crop)], rgb)
    inside = alpha > 0
    rows, columns = np.nonzero(inside)
    region = np.s_[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    grained = layer.copy()
    grained[region] = grain.add_missing_grain(layer[region], rgb[region].astype(np.float32), alpha[region], tile, seed, allowed)
    return grained, alpha


def test_grain_is_fresh_each_frame_and_reproducible(analyzer):
    rgb = old_film()
    face = largest_face(analyzer, rgb)
    tile = film_track(analyzer, [rgb, old_film("102")])
    aligned = align_face(rgb, face, CROP)
    smooth = cv2.GaussianBlur(aligned.crop, (0, 0), 2).astype(np.float32)  # a "restored" face without grain
    (first, alpha), (again, _), (second, _) = (grained_layer(rgb, aligned, smooth, tile, (frame, 0)) for frame in (10, 10, 11))
    inside = alpha >= 1
    plain, _ = face_layer(rgb.shape, [(aligned, smooth)], rgb)
    grain_t, grain_next = (first - plain)[inside][:, 0], (second - plain)[inside][:, 0]
    assert np.array_equal(first, again)
    assert abs(np.corrcoef(grain_t, grain_next)[0, 1]) < 0.1  # about 2,000 pixels of correlated grain
    assert 0.3 < grain_t.std() <= grain.GRAIN_MAX_GAIN * tile.model.amplitude.max() * 1.1


def test_grain_fills_only_the_texture_the_face_lacks():
    rgb = old_film().astype(np.float32)
    model = grain_model.estimate_grain([(rgb, np.ones(rgb.shape[:2], bool))])
    tile = grain.GrainTile(model, 0)
    region, alpha = rgb[100:228, 200:328], np.ones((128, 128), np.float32)
    assert np.array_equal(grain.add_missing_grain(region, region, alpha, tile, (0, 0), np.inf), region)
    # A restorer that removed exactly the film's grain: the grain comes back in its amount,
    # up to GRAIN_TEXTURE_SHARE of the texture (the rest would only be distance from the scene).
    smooth = cv2.GaussianBlur(region, (0, 0), 3)
    grainy = smooth + grain.synthesise_grain(grain.GrainTile(model, 1), luma(smooth), 1)
    filled = grain.add_missing_grain(smooth, grainy, alpha, tile, (0, 0), np.inf)
    detail = lambda image: grain.detail_energies([image], alpha >= 1)[0]  # noqa: E731
    assert detail(smooth) < 0.3 * detail(grainy)
    assert detail(filled) == pytest.approx(grain.GRAIN_TEXTURE_SHARE ** 2 * detail(grainy), rel=0.1)
    # A loss of structure beyond the film's grain is filled only up to GRAIN_MAX_GAIN times it.
    capped = grain.add_missing_grain(smooth, region + 20 * (region - smooth), alpha, tile, (0, 0), np.inf) - smooth
    assert capped.std() < grain.GRAIN_MAX_GAIN * model.amplitude.max() * 1.2
    # ... and no more than the grain allowed (what keeps the face's flicker).
    added = luma(grain.add_missing_grain(smooth, grainy, alpha, tile, (0, 0), 0.5) - smooth)
    assert np.sqrt(np.mean(added ** 2)) == pytest.approx(0.5, rel=0.05)


def test_paste_back_with_texture_leaves_pixels_outside_the_matte(analyzer):
    rgb = clip_frame("retalk_2")
    face = largest_face(analyzer, rgb)
    tile = film_track(analyzer, [rgb, clip_frame("retalk_2", 1)])
    aligned = align_face(rgb, face, CROP)
    layer, alpha = grained_layer(rgb, aligned, aligned.crop.astype(np.float32), tile, (0, 0))
    result = blend(rgb.astype(np.float32), layer, alpha)
    assert np.array_equal(result[alpha == 0], rgb[alpha == 0].astype(np.float32))
    assert paste_back(rgb, [(aligned, aligned.crop)]).shape == rgb.shape
