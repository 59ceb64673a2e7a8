"""The film's grain near each face: estimated per track, re-created fresh on restored faces.

Grain is estimated around each face from flat blocks (libaom's noise model is the
reference: plane-fit residuals of blocks without oriented structure), as an amplitude per
luma bin, a causal auto-regressive spatial model (as AV1 film grain) and the colour
channels' correlation (one grey field for black-and-white film). Only the share of it that
is new each frame counts: fine detail that moves with the face (skin, hair, compression
texture of a clean source) is not grain, and re-creating it fresh each frame would be
flicker the film does not have. That share is measured along the track's optical flow.
Grain is synthesised fresh each frame inside the matte, in the amount of fine texture the
restored face lacks against the original.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.special import erf

from film_restore.quality import flow_pair, steady_share, warp
from film_restore.texture import HIGH_PASS_SIGMA, LUMA_WEIGHTS, face_width, fine_detail, luma

# --grain: "auto" re-creates the film's grain on restored faces, "off" leaves them clean
# (the grain is still estimated: the frame's detail kept above the crop's resolution leaves it out).
GRAIN_MODES = ("auto", "off")

# Grain estimation: square blocks (frame pixels) fitted by a plane; a block is flat
# (grain only) when its residual's gradients have no preferred direction (eigenvalue
# ratio of the gradient covariance below FLAT_ANISOTROPY) and its luma is not clipped.
# 12 rather than 8: a smaller block's plane takes more of correlated grain as shading
# (on a real film frame with known grain correlated over 1.2 px: 0.8 of it found at 8,
# within 8% at 12), a larger one finds fewer flat blocks on small faces.
GRAIN_BLOCK = 12
FLAT_ANISOTROPY = 1.6
UNCLIPPED_LUMA = (8.0, 247.0)
# Luma bins of the grain's amplitude (the luma scaling function); a bin needs this many
# flat blocks, else its amplitude is interpolated from its neighbours.
LUMA_BINS = 8
MIN_BLOCKS_PER_BIN = 3
# Causal neighbourhood of the auto-regressive grain model (AV1 uses lags up to 3).
GRAIN_LAG = 2
# A picture whose chroma (YCrCb, 0..255 levels) varies less than this standard deviation
# is monochrome film, grey or toned. Measured here: black-and-white film faces 0.3-1.1,
# colour faces 3.5-12.
MONOCHROME_CHROMA_STD = 2.0
# In colour film, grain whose chroma residual is below this fraction of the luma residual
# is grey (one field in all channels).
MONOCHROME_GRAIN_CHROMA = 0.1
# Grain fills the texture a restored face lacks up to this many times the film's own
# grain: beyond that the loss is of structure, which grain cannot stand in for.
GRAIN_MAX_GAIN = 2.0
# ... and up to this share of the original's fine texture (energy share squared): every level
# of grain re-created is a level of difference from the scene, so it stops inside the
# texture a viewer sees as the film's (issue bar: 0.8-1.25 of the input's texture) with room
# left for fidelity: on the degraded film_look copies (x3 down and up, noise 6) 0.9 gave
# texture 0.89-0.90 but face PSNR only 0.15 dB above the degraded input's, 0.85 gives 0.85 and 0.38 dB.
GRAIN_TEXTURE_SHARE = 0.85
# The estimate's window: the landmark hull's bounding box widened by this fraction of the
# face width on each side (the face and its surroundings).
GRAIN_MARGIN = 0.5

LUMA_BIN_EDGES = np.linspace(0.0, 256.0, LUMA_BINS + 1)
LUMA_BIN_CENTRES = (LUMA_BIN_EDGES[:-1] + LUMA_BIN_EDGES[1:]) / 2
# (dy, dx) of the causal neighbours: the LAG rows above (2 LAG + 1 wide) and LAG to the left.
GRAIN_OFFSETS = tuple((dy, dx) for dy in range(-GRAIN_LAG, 1) for dx in range(-GRAIN_LAG, GRAIN_LAG + 1)
                      if dy < 0 or dx < 0)
# Side of the frequency grid on which a grain model's spectrum is integrated.
SPECTRUM_SIDE = 64
# The grain's change from frame to frame is followed by optical flow on pictures of at most
# this side: fine detail needs the flow's sub-pixel accuracy, which a smaller flow loses.
GRAIN_FLOW_SIDE = 1024
# A flat block's change from frame to frame counts where the optical flow follows at least
# this share of its pixels (forward-backward consistent).
FOLLOWED_SHARE = 0.5
# The grain a face takes without more flicker is found by this many bisections, on its
# frame-to-frame changes rounded to 1 / CHANGE_STEPS of a level and the grain's change per
# unit of grain rounded to 1 / STD_STEPS.
ALLOWED_BISECTIONS = 24
CHANGE_STEPS = 8
STD_STEPS = 64
# ... and keeps the face inside its matte changing from frame to frame by at most this share of
# the input's: the matte's feathered edge, where no grain goes, has its own share of the
# restoration's change (measured: the face box's flicker 1.001 at 1.0, on a clean clip).
FLICKER_HEADROOM = 0.98


def _band_share(ar: np.ndarray, sigma: float) -> float:
    """The share of an AR grain's variance above a Gaussian band split of this sigma (pixels):
    what luma less its blur of this sigma keeps of it."""
    transfer = np.abs(_ar_transfer(ar, SPECTRUM_SIDE, SPECTRUM_SIDE)) ** 2
    fy = np.fft.fftfreq(SPECTRUM_SIDE)[:, None]
    fx = np.fft.rfftfreq(SPECTRUM_SIDE)[None, :]
    above = (1 - np.exp(-2 * np.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))) ** 2
    # The half-plane grid holds the columns but the first and the Nyquist one for two.
    columns = np.full(fx.shape[1], 2.0)
    columns[[0, -1]] = 1.0
    return float((transfer * above * columns).sum() / (transfer * columns).sum())


def picture_chroma_std(rgb: np.ndarray) -> float:
    """The larger standard deviation of the two YCrCb chroma channels (0..255 levels) of RGB pixels (... x 3)."""
    rgb = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    grey = rgb @ LUMA_WEIGHTS
    return float(max((0.713 * (rgb[:, 0] - grey)).std(), (0.564 * (rgb[:, 2] - grey)).std())) if len(rgb) else 0.0


@dataclass(frozen=True, eq=False)
class GrainModel:
    """A film's grain near one face.

    amplitude: luma grain std per luma bin (LUMA_BINS, 0..255 scale), the luma scaling
    function. ar: coefficients of the causal neighbours GRAIN_OFFSETS. channel_gain: each RGB
    channel's grain std over the luma grain's. channel_mix: 3 x 3 lower-triangular factor of
    the channels' grain correlation; None for monochrome grain (one field in all channels).
    new_each_frame: the share of the fine texture's energy that is new each frame (1 for
    grain alone; the amplitude counts only that share).
    """

    amplitude: np.ndarray
    ar: np.ndarray
    channel_gain: np.ndarray
    channel_mix: np.ndarray | None
    new_each_frame: float = 1.0

    @property
    def monochrome(self) -> bool:
        return self.channel_mix is None

    def amplitude_at(self, luma_values: np.ndarray) -> np.ndarray:
        """The luma scaling function at these luma values (linear between bin centres)."""
        return np.interp(luma_values, LUMA_BIN_CENTRES, self.amplitude).astype(np.float32)

    def std_above(self, luma_values: np.ndarray, sigma: float) -> np.ndarray:
        """The luma grain's std at these luma values in the band a Gaussian split of this sigma
        (pixels) leaves above it: what texture.keep_frame_detail must not keep as detail."""
        return self.amplitude_at(luma_values) * np.float32(np.sqrt(_band_share(self.ar, sigma)))


def _blocks(image: np.ndarray) -> np.ndarray:
    """N x B x B (x C) blocks tiling the image (the remainder at the right and bottom dropped)."""
    b = GRAIN_BLOCK
    rows, columns = image.shape[0] // b, image.shape[1] // b
    tiles = image[:rows * b, :columns * b].reshape(rows, b, columns, b, *image.shape[2:])
    return np.moveaxis(tiles, 2, 1).reshape(rows * columns, b, b, *image.shape[2:])


def _plane_residuals(blocks: np.ndarray) -> np.ndarray:
    """Blocks (N x B x B x C) less their least-squares plane, per channel."""
    b = GRAIN_BLOCK
    yy, xx = np.mgrid[0:b, 0:b]
    design = np.stack([np.ones(b * b), xx.ravel(), yy.ravel()], axis=1)
    fit = design @ np.linalg.pinv(design)  # projection onto planes
    flat = blocks.reshape(len(blocks), b * b, -1)
    return (flat - np.einsum("ij,njc->nic", fit, flat)).reshape(blocks.shape)


def _flat_selection(rgb: np.ndarray, mask: np.ndarray):
    """(flat: bool per tile of the image, mean luma, luma residual, RGB residual of the flat tiles)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    inside = _blocks(mask.astype(bool)).all(axis=(1, 2))
    colour = _blocks(rgb)[inside]
    flat = np.zeros(len(inside), bool)
    if not len(colour):
        return flat, np.zeros(0), np.zeros((0, GRAIN_BLOCK, GRAIN_BLOCK)), np.zeros((0, GRAIN_BLOCK, GRAIN_BLOCK, 3))
    grey = colour @ LUMA_WEIGHTS
    residual = _plane_residuals(grey[..., None])[..., 0]
    # Central differences at the same pixels: uncorrelated for white noise, unlike forward ones.
    dx = residual[:, 1:-1, 2:] - residual[:, 1:-1, :-2]
    dy = residual[:, 2:, 1:-1] - residual[:, :-2, 1:-1]
    gxx, gyy, gxy = (dx * dx).mean(axis=(1, 2)), (dy * dy).mean(axis=(1, 2)), (dx * dy).mean(axis=(1, 2))
    half_trace, spread = (gxx + gyy) / 2, np.sqrt(((gxx - gyy) / 2) ** 2 + gxy ** 2)
    anisotropy = (half_trace + spread) / np.maximum(half_trace - spread, 1e-9)
    mean = grey.mean(axis=(1, 2))
    chosen = (anisotropy < FLAT_ANISOTROPY) & (mean > UNCLIPPED_LUMA[0]) & (mean < UNCLIPPED_LUMA[1]) & (half_trace > 0)
    flat[np.flatnonzero(inside)[chosen]] = True
    return flat, mean[chosen], residual[chosen], _plane_residuals(colour[chosen])


def flat_blocks(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grain samples: (mean luma per block, luma residual blocks N x B x B, RGB residual blocks N x B x B x 3) of the flat blocks fully inside mask."""
    return _flat_selection(rgb, mask)[1:]


def grain_amplitude(mean_luma: np.ndarray, residual: np.ndarray) -> np.ndarray | None:
    """Luma grain std per luma bin from flat blocks' residuals: the median block std in each
    bin with enough blocks, interpolated between them; None without any such bin."""
    stds = residual.std(axis=(1, 2))
    bins = np.clip(np.digitize(mean_luma, LUMA_BIN_EDGES) - 1, 0, LUMA_BINS - 1)
    known = [(centre, float(np.median(stds[bins == k]))) for k, centre in enumerate(LUMA_BIN_CENTRES)
             if np.count_nonzero(bins == k) >= MIN_BLOCKS_PER_BIN]
    if not known:
        return None
    centres, values = zip(*known)
    return np.interp(LUMA_BIN_CENTRES, centres, values)


def _fit_ar(residual: np.ndarray) -> np.ndarray:
    """Least-squares causal AR coefficients (GRAIN_OFFSETS) over residual blocks N x B x B."""
    lag, b = GRAIN_LAG, GRAIN_BLOCK
    target = residual[:, lag:, lag:b - lag]
    neighbours = np.stack([residual[:, lag + dy:b + dy, lag + dx:b - lag + dx] for dy, dx in GRAIN_OFFSETS], axis=-1)
    coefficients, *_ = np.linalg.lstsq(neighbours.reshape(-1, len(GRAIN_OFFSETS)), target.ravel(), rcond=None)
    return coefficients.astype(np.float64)


def estimate_grain(samples) -> GrainModel | None:
    """The grain of (RGB image, boolean mask) samples pooled (frames of one track), or None
    where no flat block was found (a face too small or all structure)."""
    means, residuals, colours, chroma_std = [], [], [], []
    for rgb, mask in samples:
        mean, residual, colour = flat_blocks(rgb, mask)
        means.append(mean), residuals.append(residual), colours.append(colour)
        chroma_std.append(picture_chroma_std(np.asarray(rgb, np.float32)[mask.astype(bool)]))
    mean, residual, colour = np.concatenate(means), np.concatenate(residuals), np.concatenate(colours)
    amplitude = grain_amplitude(mean, residual) if len(mean) else None
    if amplitude is None or not amplitude.any():
        return None
    ar = _fit_ar(residual)
    amplitude = amplitude / np.sqrt(_plane_fit_share(ar))  # the blocks' residuals lack the slowest part of the grain
    covariance = np.cov(colour.reshape(-1, 3), rowvar=False)
    luma_std = max(float(residual.std()), 1e-6)
    channel_std = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    chroma = colour.reshape(-1, 3) - (colour.reshape(-1, 3) @ LUMA_WEIGHTS)[:, None]
    if max(chroma_std) < MONOCHROME_CHROMA_STD or chroma.std(axis=0).max() < MONOCHROME_GRAIN_CHROMA * luma_std:
        return GrainModel(amplitude, ar, np.ones(3), None)
    correlation = covariance / np.maximum(np.outer(channel_std, channel_std), 1e-12)
    # A little on the diagonal keeps the factor defined for nearly grey colour grain.
    mix = np.linalg.cholesky(correlation + 1e-3 * np.eye(3)) / np.sqrt(1 + 1e-3)
    return GrainModel(amplitude, ar, channel_std / luma_std, mix)


@dataclass(frozen=True)
class TemporalDetail:
    """Fine detail (the texture measure's high-pass luma) of consecutive pictures of a face,
    compared along their optical flow, per flat block (those the grain is estimated from)
    of each later picture: luma, the mean of (now - then)^2 (changed), of now^2 + then^2
    (total) and of now^2 (now), over the block's pixels the flow follows. Detail new each
    frame gives changed = total; detail that moves with the face, about 0."""

    luma: np.ndarray
    changed: np.ndarray
    total: np.ndarray
    now: np.ndarray

    @property
    def new_each_frame(self) -> float:
        """The share (0..1) of the fine detail's energy that is new each frame."""
        return float(np.clip(self.changed.sum() / self.total.sum(), 0.0, 1.0))

    def new_energy(self) -> np.ndarray:
        """Per luma bin, the median over blocks of the energy of fine detail new each frame
        (robust to blocks the flow mistracks: hair, an opening mouth); NaN for bins with
        fewer than MIN_BLOCKS_PER_BIN blocks."""
        energy = np.clip(self.changed / np.maximum(self.total, 1e-9), 0.0, 1.0) * self.now
        bins = np.clip(np.digitize(self.luma, LUMA_BIN_EDGES) - 1, 0, LUMA_BINS - 1)
        return np.array([float(np.median(energy[bins == k])) if np.count_nonzero(bins == k) >= MIN_BLOCKS_PER_BIN
                         else np.nan for k in range(LUMA_BINS)])


def temporal_detail(pictures: list[np.ndarray]) -> TemporalDetail | None:
    """The TemporalDetail of consecutive same-size RGB pictures of a face; None for fewer
    than two pictures or no flat block the flow follows."""
    columns = ([], [], [], [])
    for before, after in zip(pictures, pictures[1:]):
        flow, valid, _, _ = flow_pair(after, before, GRAIN_FLOW_SIDE)
        now, then = fine_detail(after), warp(fine_detail(before), flow)
        flat = _flat_selection(after, np.ones(after.shape[:2], bool))[0]
        block_valid = _blocks(valid.astype(np.float32))
        followed = flat & (block_valid.sum(axis=(1, 2)) >= FOLLOWED_SHARE * GRAIN_BLOCK ** 2)
        if not followed.any():
            continue
        weights = block_valid[followed]
        mean = lambda values: (_blocks(values)[followed] * weights).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))  # noqa: E731
        for column, values in zip(columns, (luma(after), (now - then) ** 2, now ** 2 + then ** 2, now ** 2)):
            column.append(mean(values))
    if not columns[0]:
        return None
    return TemporalDetail(*(np.concatenate(column) for column in columns))


def estimate_track_grain(pictures: list[np.ndarray]) -> GrainModel | None:
    """The grain of consecutive same-size RGB pictures of one face (frames of a track, cut to
    one window): only its part new each frame, measured in the flat blocks, whose residuals
    hold fine texture that moves with the face too (so the grain is at most their estimate).
    None where no flat block was found or fewer than two pictures were given."""
    model = estimate_grain([(picture, np.ones(picture.shape[:2], bool)) for picture in pictures])
    detail = temporal_detail(pictures)
    if model is None or detail is None:
        return None
    # The fine detail holds this share of a grain's variance (its spectrum through the high-pass).
    temporal = np.sqrt(detail.new_energy() / _band_share(model.ar, HIGH_PASS_SIGMA))
    seen = np.isfinite(temporal)
    if not seen.any():
        return None
    temporal = np.interp(LUMA_BIN_CENTRES, LUMA_BIN_CENTRES[seen], temporal[seen])
    return replace(model, amplitude=np.minimum(model.amplitude, temporal), new_each_frame=detail.new_each_frame)


def grain_window(frame_shape: tuple, landmarks) -> tuple[slice, slice]:
    """The frame rectangle whose grain is estimated for a face with these 68 frame landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    margin = GRAIN_MARGIN * face_width(landmarks)
    x0, y0 = np.maximum(np.floor(landmarks.min(axis=0) - margin).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(landmarks.max(axis=0) + margin).astype(int), (frame_shape[1], frame_shape[0]))
    return np.s_[y0:y1, x0:x1]


def _ar_transfer(ar: np.ndarray, height: int, width: int) -> np.ndarray:
    """The AR model's transfer function 1 / (1 - sum a_k e^{-i w.d_k}) on the rfft2 grid of height x width."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    denominator = np.ones((height, width // 2 + 1), np.complex128)
    for coefficient, (dy, dx) in zip(ar, GRAIN_OFFSETS):
        denominator -= coefficient * np.exp(-2j * np.pi * (fy * -dy + fx * -dx))
    # Bounded away from 0 so an AR fit at the edge of stability cannot blow up a frequency.
    return 1.0 / np.maximum(np.abs(denominator), 0.1) * np.exp(-1j * np.angle(denominator))


def unit_grain(ar: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, fields: int = 1) -> np.ndarray:
    """fields x H x W float32 independent grain fields of unit std with the AR model's spectrum.

    White noise filtered in the frequency domain by the AR transfer function: the AR
    process's stationary spectrum without the recursion's pixel-by-pixel loop.
    """
    height, width = shape
    transfer = _ar_transfer(ar, height, width)
    noise = rng.standard_normal((fields, height, width))
    grain = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(height, width))
    return (grain / np.sqrt(_ar_autocovariance(transfer, shape)[0, 0])).astype(np.float32)


def _ar_autocovariance(transfer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Circular autocovariance (H x W, lag (0, 0) at [0, 0]) of unit white noise through this transfer."""
    return np.fft.irfft2(np.abs(transfer) ** 2, s=shape)


def _plane_fit_share(ar: np.ndarray) -> float:
    """The share of an AR grain's variance left in a block after its plane is fitted away
    (61/64 for white grain; less for correlated grain, whose slow part looks like shading)."""
    size = 4 * GRAIN_BLOCK
    autocovariance = _ar_autocovariance(_ar_transfer(ar, size, size), (size, size))
    yy, xx = (grid.ravel() for grid in np.mgrid[0:GRAIN_BLOCK, 0:GRAIN_BLOCK])
    covariance = autocovariance[(yy[:, None] - yy[None]) % size, (xx[:, None] - xx[None]) % size]
    residual = _plane_residuals(covariance.reshape(-1, GRAIN_BLOCK, GRAIN_BLOCK, 1)).reshape(covariance.shape)
    # trace((I - P) C) / trace(C), with P the projection onto planes.
    return float(np.trace(residual) / np.trace(covariance))


def synthesise_grain(model: GrainModel, luma_values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """H x W x 3 float32 grain for an image of this luma: the model's spectrum, channel
    correlation and luma scaling function."""
    scale = model.amplitude_at(luma_values)
    if model.monochrome:
        field = unit_grain(model.ar, luma_values.shape, rng)[0]
        return np.repeat((field * scale)[..., None], 3, axis=2)
    fields = unit_grain(model.ar, luma_values.shape, rng, 3)
    mixed = np.einsum("ij,jhw->hwi", model.channel_mix, fields)
    return (mixed * model.channel_gain.astype(np.float32) * scale[..., None]).astype(np.float32)


def add_missing_grain(face: np.ndarray, original: np.ndarray, alpha: np.ndarray, model: GrainModel, seed,
                      allowed: float) -> np.ndarray:
    """The face layer region (float32 H x W x 3) with fresh grain of the model's kind (a fresh
    field for each seed, e.g. frame and track) inside alpha = 1, in the amount of fine texture
    (the texture measure's high-pass luma energy) the face lacks against GRAIN_TEXTURE_SHARE of
    the original's, at most GRAIN_MAX_GAIN times the film's grain, and at most `allowed` luma
    std (grain_allowed, TrackGrain.measure_change: grain adds no more change from frame to frame
    than the restoration took away; it must not count as flicker)."""
    inside = alpha >= 1
    if not inside.any():
        return face
    grain = synthesise_grain(model, luma(face), np.random.default_rng(seed))
    missing = GRAIN_TEXTURE_SHARE ** 2 * detail_energy(original, inside) - detail_energy(face, inside)
    gain_squared = min(missing / max(detail_energy(grain, inside), 1e-9),
                       allowed ** 2 / max(float(np.mean(luma(grain)[inside] ** 2)), 1e-9), GRAIN_MAX_GAIN ** 2)
    return face + np.sqrt(gain_squared) * grain if gain_squared > 0 else face


def warped_variance(ar: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """H x W: the share of a unit grain field's variance left at each pixel after it is brought
    along this flow (quality.warp's bilinear interpolation, which averages neighbouring grain
    at the flow's fractional offsets): 1 at whole-pixel offsets, 1/4 for white grain halfway."""
    size = 4 * GRAIN_BLOCK
    autocovariance = _ar_autocovariance(_ar_transfer(ar, size, size), (size, size))
    across, down, diagonal, anti_diagonal = (autocovariance[lag] / autocovariance[0, 0]
                                             for lag in ((0, 1), (1, 0), (1, 1), (1, -1)))
    a, b = flow[..., 0] - np.floor(flow[..., 0]), flow[..., 1] - np.floor(flow[..., 1])
    top_left, top_right, bottom_left, bottom_right = (1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b
    return (top_left ** 2 + top_right ** 2 + bottom_left ** 2 + bottom_right ** 2
            + 2 * (across * (top_left * top_right + bottom_left * bottom_right)
                   + down * (top_left * bottom_left + top_right * bottom_right)
                   + diagonal * top_left * bottom_right + anti_diagonal * top_right * bottom_left))


@dataclass(frozen=True, eq=False)
class WindowChange:
    """One face's change from frame to frame over consecutive frames, before and after restoration
    (per channel, N x 3, along the input's optical flow where its masks are set, as flicker measures
    it), and at each of those samples the share of the earlier frame's grain that the flow's
    interpolation leaves (warped_variance; None where no grain model was given)."""

    input: np.ndarray
    output: np.ndarray
    interpolated: np.ndarray | None

    def kept(self, share: float) -> "WindowChange":
        """The change with only this share of the restoration (input + share (output - input): warping is linear)."""
        return replace(self, output=self.input + np.float32(share) * (self.output - self.input))


def window_change(inputs: list[np.ndarray], outputs: list[np.ndarray], masks: list[np.ndarray],
                  ar: np.ndarray | None) -> WindowChange | None:
    """The WindowChange of consecutive same-size RGB pictures of one face, before and after
    restoration, where masks (bool) are set, for grain of this AR model (None: no grain); None
    for fewer than two pictures or no sample the flow follows."""
    input_change, output_change, interpolated = [], [], []
    for t in range(1, len(inputs)):
        flow, valid, _, _ = flow_pair(inputs[t], inputs[t - 1])
        counting = valid & masks[t]
        if counting.any():
            for changes, pictures in ((input_change, inputs), (output_change, outputs)):
                changes.append((np.asarray(pictures[t], np.float32) - warp(pictures[t - 1], flow))[counting])
            if ar is not None:
                interpolated.append(warped_variance(ar, flow[counting]))
    if not input_change:
        return None
    return WindowChange(np.concatenate(input_change), np.concatenate(output_change),
                        np.concatenate(interpolated) if ar is not None else None)


def grain_allowed(change: WindowChange, model: GrainModel) -> float:
    """The largest luma std of fresh grain of the model's kind that leaves the output changing no
    more from frame to frame than FLICKER_HEADROOM of the input (the mean absolute change over
    the channels, as quality.flicker measures it). Fresh grain of luma std s adds Gaussian change
    of std s g sqrt(1 + w) to a channel whose grain is g times the luma's, w the share of the
    earlier frame's grain the flow's interpolation leaves (the input's grain is averaged alike)."""
    target = FLICKER_HEADROOM * float(np.abs(change.input).mean())
    change_std = np.round(np.sqrt(1 + change.interpolated) * STD_STEPS) / STD_STEPS
    channels = []
    for c in range(3):
        pairs = np.stack([np.round(change.output[:, c] * CHANGE_STEPS) / CHANGE_STEPS, change_std], axis=1)
        values, counts = np.unique(pairs, axis=0, return_counts=True)
        channels.append((values[:, 0], values[:, 1], counts))

    def mean_change(luma_std: float) -> float:
        """E|c + g| over the outputs' changes c, g fresh grain's change, averaged over the channels."""
        total = 0.0
        for (values, spread, counts), gain in zip(channels, model.channel_gain):
            std = luma_std * gain * spread
            expected = np.abs(values) if luma_std * gain == 0 else (
                std * np.sqrt(2 / np.pi) * np.exp(-values ** 2 / (2 * std ** 2)) + values * erf(values / (std * np.sqrt(2))))
            total += float((expected * counts).sum() / counts.sum())
        return total / len(channels)

    if mean_change(0.0) >= target:
        return 0.0
    low, high = 0.0, 2 * target / max(float(np.min(model.channel_gain)), 1e-3)  # alone, grain this strong changes more
    for _ in range(ALLOWED_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_change(middle) <= target else (low, middle)
    return low


def detail_energy(rgb: np.ndarray, inside: np.ndarray) -> float:
    """Mean square of the fine detail (the texture measure's high-pass luma) over the pixels inside."""
    return float(np.mean(fine_detail(rgb)[inside] ** 2))


class TrackGrain:
    """What one chunk's face tracks take from frame to frame. Grain models, each estimated once,
    from the first window of frames in which the track shows on at least two consecutive frames
    (its grain's change from frame to frame must be seen). Window by window: the share of the
    restoration each track keeps so that its face changes no more from frame to frame than its
    input (quality.steady_share), and how much grain it then takes without changing more than
    FLICKER_HEADROOM of the input (none for a face held to its input's change: it has no change
    left to give). A seed per frame and track."""

    def __init__(self):
        self.models: dict[int, GrainModel | None] = {}
        self.allowed: dict[int, float] = {}
        self.kept: dict[int, float] = {}

    def observe(self, faces) -> None:
        """faces: {(frame index, track number): (frame RGB, 68 frame landmarks)} of one window."""
        seen = defaultdict(dict)
        for (index, number), (rgb, landmarks) in faces.items():
            if number not in self.models:
                seen[number][index] = (rgb, landmarks)
        for number, frames in seen.items():
            run = _longest_run(sorted(frames))
            if len(run) < 2:
                continue
            window = grain_window(frames[run[0]][0].shape, np.concatenate([frames[i][1] for i in run]))
            self.models[number] = estimate_track_grain([frames[i][0][window] for i in run])

    def measure_change(self, faces, held: set) -> None:
        """faces: {(frame index, track number): (input RGB, face layer and alpha without new grain
        (paste.composite), 68 frame landmarks)} of one window: for each track, over its longest
        run of consecutive frames and where alpha is 1, the share of the restoration it keeps
        (tracks in held; the others keep all of it) and the grain it then takes (grain_allowed);
        a track seen on one frame keeps its last measures."""
        seen = defaultdict(dict)
        for (index, number), face in faces.items():
            if number in held or self.models.get(number) is not None:  # else nothing to measure for
                seen[number][index] = face
        for number, frames in seen.items():
            run = _longest_run(sorted(frames))
            if len(run) < 2:
                continue
            window = grain_window(frames[run[0]][0].shape, np.concatenate([frames[i][3] for i in run]))
            inputs, layers, alphas = ([frames[i][part][window] for i in run] for part in range(3))
            outputs = [picture + alpha[..., None] * (layer - picture)
                       for picture, layer, alpha in zip((p.astype(np.float32) for p in inputs), layers, alphas)]
            model = self.models.get(number)
            change = window_change(inputs, outputs, [alpha >= 1 for alpha in alphas], None if model is None else model.ar)
            if change is None:
                continue
            self.kept[number] = steady_share(change.input, change.output) if number in held else 1.0
            if model is not None:
                self.allowed[number] = grain_allowed(change.kept(self.kept[number]), model)

    def kept_share(self, number: int) -> float:
        """The share of the restoration this track keeps in the window last measured (1 before any measure)."""
        return self.kept.get(number, 1.0)

    def for_face(self, index: int, number: int):
        """(model, seed, grain allowed) for the face of this track on this frame (add_missing_grain's
        last three arguments), or None without a model; no grain before it is measured."""
        model = self.models.get(number)
        return None if model is None else (model, (index, number), self.allowed.get(number, 0.0))


def _longest_run(indices: list[int]) -> list[int]:
    """The longest run of consecutive numbers in sorted indices (the first of equal length)."""
    runs = [[indices[0]]] if indices else [[]]
    for index in indices[1:]:
        if index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return max(runs, key=len)
