"""The film's grain near a face, estimated once per track: a model to re-create it from (finish.grain).

Grain is estimated around each face from flat blocks (libaom's noise model is the reference:
plane-fit residuals of blocks without oriented structure), as an amplitude per luma bin, a
causal auto-regressive spatial model (as AV1 film grain) and the colour channels' correlation
(one grey field for black-and-white film). Only the share of it that is new each frame counts:
fine detail that moves with the face (skin, hair, compression texture of a clean source) is
not grain, and re-creating it fresh each frame would be flicker the film does not have. That
share is measured along the track's own flow (finish.flow, brought into frame pixels).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import array_api_compat
import numpy as np

from film_restore.finish import ops
from film_restore.finish.colour import MONOCHROME_CHROMA_STD, chroma_std, luma
from film_restore.finish.landmarks import face_width
from film_restore.finish.measures import HIGH_PASS_SIGMA, fine_detail

# Grain estimation: square blocks (frame pixels) fitted by a plane; a block is flat
# (grain only) when its residual's gradients have no preferred direction (eigenvalue
# ratio of the gradient covariance below FLAT_ANISOTROPY) and its luma is not clipped.
# 12 rather than 8: a smaller block's plane takes more of correlated grain as shading
# (on a real film frame with known grain correlated over 1.2 px: 0.8 of it found at 8,
# within 8% at 12), a larger one finds fewer flat blocks on small faces.
GRAIN_BLOCK = 12
FLAT_ANISOTROPY = 1.6
# A block whose residual's gradients carry less than this (squared levels) holds no grain at all (an
# exact plane: a letterbox bar, grey padding, a digital fade or graphic): what is left of it after the
# plane is float rounding, which has no direction and differs between numpy's sums and torch's.
FLAT_MIN_GRADIENT = 1e-3
UNCLIPPED_LUMA = (8.0, 247.0)
# Luma bins of the grain's amplitude (the luma scaling function); a bin needs this many
# flat blocks, else its amplitude is interpolated from its neighbours.
LUMA_BINS = 8
MIN_BLOCKS_PER_BIN = 3
# Causal neighbourhood of the auto-regressive grain model (AV1 uses lags up to 3).
GRAIN_LAG = 2
# In colour film, grain whose chroma residual is below this fraction of the luma residual
# is grey (one field in all channels).
MONOCHROME_GRAIN_CHROMA = 0.1
# The estimate's window: the landmark hull's bounding box widened by this fraction of the
# face width on each side (the face and its surroundings).
GRAIN_MARGIN = 0.5
# The track's grain is estimated from at most this many consecutive faces (the first run of
# at least two in a window), once per track: with 4, the share new each frame of a clean close-up
# (retalk_2) rose and its texture with it (0.91 against 0.93 from a whole window).
GRAIN_FACES = 8
# A flat block's change from frame to frame counts where the optical flow follows at least
# this share of its pixels (forward-backward consistent); within the block the flow is refined
# by at most this many pixels (the track's flow is computed at up to finish.flow.FLOW_SIDE, coarser
# than a close-up's own pixels).
FOLLOWED_SHARE = 0.5
MAX_REFINEMENT = 0.5

LUMA_BIN_EDGES = np.linspace(0.0, 256.0, LUMA_BINS + 1)
LUMA_BIN_CENTRES = (LUMA_BIN_EDGES[:-1] + LUMA_BIN_EDGES[1:]) / 2
# (dy, dx) of the causal neighbours: the LAG rows above (2 LAG + 1 wide) and LAG to the left.
GRAIN_OFFSETS = tuple((dy, dx) for dy in range(-GRAIN_LAG, 1) for dx in range(-GRAIN_LAG, GRAIN_LAG + 1)
                      if dy < 0 or dx < 0)
# The luma scaling function is read from a table at this many steps per luma level.
AMPLITUDE_STEPS = 4
# Side of the frequency grid on which a grain model's spectrum is integrated.
SPECTRUM_SIDE = 64


def ar_transfer(ar: np.ndarray, height: int, width: int) -> np.ndarray:
    """The AR model's transfer function 1 / (1 - sum a_k e^{-i w.d_k}) on the rfft2 grid of height x width."""
    offsets = np.array(GRAIN_OFFSETS, np.float64)
    # Each neighbour's term e^{2 pi i (fy dy + fx dx)} is a row's factor times a column's: the sum over
    # the neighbours is one product of a rows x neighbours and a neighbours x columns matrix.
    rows = np.exp(2j * np.pi * np.fft.fftfreq(height)[:, None] * offsets[:, 0])
    columns = np.exp(2j * np.pi * np.fft.rfftfreq(width)[:, None] * offsets[:, 1])
    denominator = 1 - (rows * np.asarray(ar, np.float64)) @ columns.T
    # Bounded away from 0 so an AR fit at the edge of stability cannot blow up a frequency.
    return 1.0 / np.maximum(np.abs(denominator), 0.1) * np.exp(-1j * np.angle(denominator))


def ar_autocovariance(transfer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Circular autocovariance (H x W, lag (0, 0) at [0, 0]) of unit white noise through this transfer."""
    return np.fft.irfft2(np.abs(transfer) ** 2, s=shape)


def band_share(ar: np.ndarray, sigma: float) -> float:
    """The share of an AR grain's variance above a Gaussian band split of this sigma (pixels):
    what luma less its blur of this sigma keeps of it."""
    transfer = np.abs(ar_transfer(ar, SPECTRUM_SIDE, SPECTRUM_SIDE)) ** 2
    fy = np.fft.fftfreq(SPECTRUM_SIDE)[:, None]
    fx = np.fft.rfftfreq(SPECTRUM_SIDE)[None, :]
    above = (1 - np.exp(-2 * np.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))) ** 2
    # The half-plane grid holds the columns but the first and the Nyquist one for two.
    columns = np.full(fx.shape[1], 2.0)
    columns[[0, -1]] = 1.0
    return float((transfer * above * columns).sum() / (transfer * columns).sum())


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

    def amplitude_at(self, luma_values):
        """The luma scaling function at these luma values (numpy, or a tensor): linear between bin
        centres, read from a table of quarter levels (both kinds of array read the same values)."""
        xp = ops.namespace(luma_values)
        table = ops.constant(luma_values, self._table)
        index = xp.astype(xp.clip(xp.round(luma_values * AMPLITUDE_STEPS), 0, len(self._table) - 1), xp.int64)
        return xp.reshape(xp.take(table, xp.reshape(index, (-1,)), axis=0), luma_values.shape)

    @functools.cached_property
    def _table(self) -> np.ndarray:
        return np.interp(np.arange(256 * AMPLITUDE_STEPS + 1) / AMPLITUDE_STEPS, LUMA_BIN_CENTRES, self.amplitude).astype(np.float32)

    def std_above(self, luma_values, sigma: float):
        """The luma grain's std at these luma values in the band a Gaussian split of this sigma
        (pixels) leaves above it: what finish.bands must not keep as detail."""
        key = round(float(sigma), 3)
        if key not in self._band_shares:
            self._band_shares[key] = float(np.sqrt(band_share(self.ar, key)))
        return self.amplitude_at(luma_values) * self._band_shares[key]

    @functools.cached_property
    def _band_shares(self) -> dict:
        return {}

    @functools.cached_property
    def _neighbour_correlations(self) -> tuple[float, float, float, float]:
        """The grain's correlation with its neighbour across, down, on the diagonal and the anti-diagonal."""
        size = 4 * GRAIN_BLOCK
        autocovariance = ar_autocovariance(ar_transfer(self.ar, size, size), (size, size))
        return tuple(float(autocovariance[lag] / autocovariance[0, 0]) for lag in ((0, 1), (1, 0), (1, 1), (1, -1)))

    def warped_variance(self, offsets: np.ndarray) -> np.ndarray:
        """The share of a unit grain field's variance left at each sample after it is brought along a
        flow with these offsets (... x 2, pixels) by bilinear interpolation (finish.ops.warp), which
        averages neighbouring grain at the fractional offsets: 1 at whole-pixel offsets, 1/4 for white
        grain halfway."""
        across, down, diagonal, anti_diagonal = self._neighbour_correlations
        a, b = offsets[..., 0] - np.floor(offsets[..., 0]), offsets[..., 1] - np.floor(offsets[..., 1])
        top_left, top_right, bottom_left, bottom_right = (1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b
        return (top_left ** 2 + top_right ** 2 + bottom_left ** 2 + bottom_right ** 2
                + 2 * (across * (top_left * top_right + bottom_left * bottom_right)
                       + down * (top_left * bottom_left + top_right * bottom_right)
                       + diagonal * top_left * bottom_right + anti_diagonal * top_right * bottom_left))


def _blocks(image):
    """N x B x B (x C) blocks tiling the image (the remainder at the right and bottom dropped)."""
    b = GRAIN_BLOCK
    rows, columns = image.shape[0] // b, image.shape[1] // b
    tiles = image[:rows * b, :columns * b].reshape(rows, b, columns, b, *image.shape[2:])
    return tiles.swapaxes(1, 2).reshape(rows * columns, b, b, *image.shape[2:])


_CENTRED = np.arange(GRAIN_BLOCK, dtype=np.float32) - (GRAIN_BLOCK - 1) / 2


def plane_residuals(blocks):
    """Blocks (N x B x B x C) less their least-squares plane, per channel (1, x and y centred are
    orthogonal on the block, so the fit is three projections)."""
    xp = ops.namespace(blocks)
    centred = ops.constant(blocks, _CENTRED)
    x = centred[None, None, :, None]
    y = centred[None, :, None, None]
    norm = np.float32(GRAIN_BLOCK * (_CENTRED ** 2).sum())
    mean = xp.mean(blocks, axis=(1, 2), keepdims=True)
    slope_x = xp.sum(blocks * x, axis=(1, 2), keepdims=True) / norm
    slope_y = xp.sum(blocks * y, axis=(1, 2), keepdims=True) / norm
    return blocks - mean - slope_x * x - slope_y * y


def _flat_selection(rgb, mask: np.ndarray | None = None):
    """(flat: bool per tile of the image, mean luma, luma residual, RGB residual of the flat tiles) of an
    RGB image (numpy, or a tensor on its device); mask: where blocks may lie (numpy images only; None:
    everywhere)."""
    xp = ops.namespace(rgb)
    rgb = ops.as_float(rgb)
    colour = _blocks(rgb)
    inside = None
    if mask is not None:
        inside = _blocks(mask.astype(bool)).all(axis=(1, 2))
        colour = colour[inside]
    flat = xp.zeros((rgb.shape[0] // GRAIN_BLOCK) * (rgb.shape[1] // GRAIN_BLOCK), dtype=xp.bool, device=array_api_compat.device(rgb))
    if not len(colour):
        empty = ops.like(rgb, np.zeros((0, GRAIN_BLOCK, GRAIN_BLOCK, 3)))
        return flat, empty[:, 0, 0, 0], empty[..., 0], empty
    grey = luma(colour)
    residual = plane_residuals(grey[..., None])[..., 0]
    # Central differences at the same pixels: uncorrelated for white noise, unlike forward ones.
    dx = residual[:, 1:-1, 2:] - residual[:, 1:-1, :-2]
    dy = residual[:, 2:, 1:-1] - residual[:, :-2, 1:-1]
    gxx, gyy, gxy = (xp.mean(product, axis=(1, 2)) for product in (dx * dx, dy * dy, dx * dy))
    half_trace, spread = (gxx + gyy) / 2, xp.sqrt(((gxx - gyy) / 2) ** 2 + gxy ** 2)
    anisotropy = (half_trace + spread) / xp.clip(half_trace - spread, 1e-9, None)
    mean = xp.mean(grey, axis=(1, 2))
    chosen = (anisotropy < FLAT_ANISOTROPY) & (mean > UNCLIPPED_LUMA[0]) & (mean < UNCLIPPED_LUMA[1]) & (half_trace > FLAT_MIN_GRADIENT)
    flat[chosen if inside is None else xp.nonzero(inside)[0][chosen]] = True
    return flat, mean[chosen], residual[chosen], plane_residuals(colour[chosen])


def flat_blocks(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grain samples: (mean luma per block, luma residual blocks N x B x B, RGB residual blocks N x B x B x 3) of the flat blocks fully inside mask."""
    return _flat_selection(rgb, mask)[1:]


def grain_amplitude(mean_luma, residual) -> np.ndarray | None:
    """Luma grain std per luma bin from flat blocks' residuals: the median block std in each
    bin with enough blocks, interpolated between them; None without any such bin."""
    stds = ops.to_numpy(ops.namespace(residual).std(residual, axis=(1, 2)))
    bins = np.clip(np.digitize(ops.to_numpy(mean_luma), LUMA_BIN_EDGES) - 1, 0, LUMA_BINS - 1)
    known = [(centre, float(np.median(stds[bins == k]))) for k, centre in enumerate(LUMA_BIN_CENTRES)
             if np.count_nonzero(bins == k) >= MIN_BLOCKS_PER_BIN]
    if not known:
        return None
    centres, values = zip(*known)
    return np.interp(LUMA_BIN_CENTRES, centres, values)


def _fit_ar(residual) -> np.ndarray:
    """Least-squares causal AR coefficients (GRAIN_OFFSETS) over residual blocks N x B x B."""
    xp = ops.namespace(residual)
    lag, b = GRAIN_LAG, GRAIN_BLOCK
    # One row per neighbour and one for the target, each a contiguous copy of its shifted view: the
    # products then run as one matrix product over rows, in the precision of the solve.
    samples = xp.astype(xp.stack([residual[:, lag + dy:b + dy, lag + dx:b - lag + dx].reshape(-1)
                                  for dy, dx in ((0, 0), *GRAIN_OFFSETS)]), xp.float64)
    products = ops.to_numpy(samples[1:] @ samples.T)
    # The normal equations: the same least-squares solution as lstsq, at the cost of a 10 x 10 system.
    return np.linalg.solve(products[:, 1:], products[:, 0])


def _plane_fit_share(ar: np.ndarray) -> float:
    """The share of an AR grain's variance left in a block after its plane is fitted away
    (61/64 for white grain; less for correlated grain, whose slow part looks like shading)."""
    size = 4 * GRAIN_BLOCK
    autocovariance = ar_autocovariance(ar_transfer(ar, size, size), (size, size))
    yy, xx = (grid.ravel() for grid in np.mgrid[0:GRAIN_BLOCK, 0:GRAIN_BLOCK])
    covariance = autocovariance[(yy[:, None] - yy[None]) % size, (xx[:, None] - xx[None]) % size]
    residual = plane_residuals(covariance.reshape(-1, GRAIN_BLOCK, GRAIN_BLOCK, 1)).reshape(covariance.shape)
    # trace((I - P) C) / trace(C), with P the projection onto planes.
    return float(np.trace(residual) / np.trace(covariance))


def estimate_grain(samples) -> GrainModel | None:
    """The grain of (RGB image, boolean mask) samples pooled (frames of one track), or None
    where no flat block was found (a face too small or all structure)."""
    return _model_of([(_flat_selection(rgb, mask), chroma_std(np.asarray(rgb, np.float32)[mask.astype(bool)]))
                      for rgb, mask in samples])


def _model_of(selections) -> GrainModel | None:
    """estimate_grain from each sample's (_flat_selection, chroma std); the selections' arrays are
    numpy, or tensors on one device (the per-pixel sums run there, the small solves in numpy)."""
    xp = ops.namespace(selections[0][0][1])
    mean, residual, colour = (xp.concat([selection[part] for selection, _ in selections]) for part in (1, 2, 3))
    chroma = [value for _, value in selections]
    amplitude = grain_amplitude(mean, residual) if len(mean) else None
    if amplitude is None or not amplitude.any():
        return None
    ar = _fit_ar(residual)
    amplitude = amplitude / np.sqrt(_plane_fit_share(ar))  # the blocks' residuals lack the slowest part of the grain
    pixels = colour.reshape(-1, 3)
    wide = xp.astype(pixels, xp.float64)
    centred = wide - xp.mean(wide, axis=0)
    covariance = ops.to_numpy(centred.T @ centred) / (len(pixels) - 1)
    luma_std = max(float(xp.std(residual)), 1e-6)
    channel_std = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    chroma_residual = pixels - luma(pixels)[:, None]
    if max(chroma) < MONOCHROME_CHROMA_STD or float(xp.max(xp.std(chroma_residual, axis=0))) < MONOCHROME_GRAIN_CHROMA * luma_std:
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


def temporal_detail(pictures: list, flows: list[tuple], flats=None) -> TemporalDetail | None:
    """The TemporalDetail of consecutive same-size RGB pictures of a face, with each later picture's
    (flow to the one before, valid) in its pixels; None for fewer than two pictures or no flat
    block the flow follows. Within each block the flow is refined by one Lucas-Kanade step on the
    fine detail (a shift of at most MAX_REFINEMENT pixels), so detail that moves with the face is
    not taken for new where the flow is a little off: fresh grain cannot be shifted away.
    Pictures and flows: numpy, or tensors on one device (valid: bool, or 0/1 floats).
    flats: the later pictures' flat blocks (_flat_selection's first part), where known."""
    columns = ([], [], [], [])
    flats = flats or [_flat_selection(after)[0] for after in pictures[1:]]
    details = [fine_detail(picture) for picture in pictures]
    for before, after, now, (flow, valid), flat in zip(details, pictures[1:], details[1:], flows, flats):
        xp = ops.namespace(now)
        then = ops.warp(before[None, ..., None], flow[None])[0, ..., 0]
        block_valid = _blocks(xp.astype(valid, xp.float32))
        followed = flat & (xp.sum(block_valid, axis=(1, 2)) >= FOLLOWED_SHARE * GRAIN_BLOCK ** 2)
        if not bool(xp.any(followed)):
            continue
        weights = block_valid[followed]
        now_blocks = _blocks(now)[followed]
        then_blocks = _refined(now_blocks, _blocks(then)[followed], weights)
        mean = lambda values: xp.sum(values * weights, axis=(1, 2)) / xp.sum(weights, axis=(1, 2))  # noqa: E731
        for column, values in zip(columns, (_blocks(luma(after))[followed], (now_blocks - then_blocks) ** 2,
                                            now_blocks ** 2 + then_blocks ** 2, now_blocks ** 2)):
            column.append(ops.to_numpy(mean(values)))
    if not columns[0]:
        return None
    return TemporalDetail(*(np.concatenate(column) for column in columns))


def _gradient(values, axis: int):
    """np.gradient along one axis (central differences inside, one-sided at the two ends), for either kind of array."""
    xp = ops.namespace(values)
    inner = [slice(None)] * values.ndim

    def cut(start, stop):
        inner[axis] = slice(start, stop)
        return values[tuple(inner)]

    return xp.concat([cut(1, 2) - cut(0, 1), (cut(2, None) - cut(None, -2)) / 2.0, cut(-1, None) - cut(-2, -1)], axis=axis)


def _refined(now, then, weights):
    """Blocks of `then` (N x B x B) shifted by the sub-pixel step that best matches `now` (one
    weighted Lucas-Kanade step, at most MAX_REFINEMENT pixels)."""
    xp = ops.namespace(then)
    gy, gx = _gradient(then, 1), _gradient(then, 2)
    difference = now - then
    sums = lambda values: xp.sum(values * weights, axis=(1, 2))  # noqa: E731
    xx, xy, yy = sums(gx * gx), sums(gx * gy), sums(gy * gy)
    bx, by = sums(gx * difference), sums(gy * difference)
    determinant = xx * yy - xy * xy
    solvable = determinant > 1e-6 * xp.clip(xx * yy, 1e-12, None)
    safe = xp.where(solvable, determinant, 1.0)
    dx = xp.where(solvable, (yy * bx - xy * by) / safe, 0.0)
    dy = xp.where(solvable, (xx * by - xy * bx) / safe, 0.0)
    length = xp.clip(xp.hypot(dx, dy) / MAX_REFINEMENT, 1.0, None)
    return then + (dx / length)[:, None, None] * gx + (dy / length)[:, None, None] * gy


def estimate_track_grain(pictures: list, flows: list[tuple]) -> GrainModel | None:
    """The grain of consecutive same-size RGB pictures of one face (frames of a track, cut to
    one window), flows as temporal_detail takes them: only its part new each frame, measured in
    the flat blocks, whose residuals hold fine texture that moves with the face too (so the grain
    is at most their estimate). None where no flat block was found or fewer than two pictures were given.
    Pictures and flows: numpy, or tensors on one device, where the per-pixel work then runs."""
    if len(pictures) < 2:
        return None
    pictures = [ops.as_float(picture) for picture in pictures]
    selections = [_flat_selection(picture) for picture in pictures]
    model = _model_of([(selection, chroma_std(picture)) for selection, picture in zip(selections, pictures)])
    if model is None:
        return None
    detail = temporal_detail(pictures, flows, [selection[0] for selection in selections[1:]])
    if detail is None:
        return None
    # The fine detail holds this share of a grain's variance (its spectrum through the high-pass).
    temporal = np.sqrt(detail.new_energy() / band_share(model.ar, HIGH_PASS_SIGMA))
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
