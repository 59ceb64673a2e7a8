"""The film's texture on restored faces: measured, kept above the model's resolution, grain re-created.

- Measure: the relative texture of a face (std of high-pass luma inside the central face
  over that in a ring around it) and its ratio output/input; 1 means the face has kept
  its texture relative to the untouched frame around it.
- Band split: a face larger in the frame than in the aligned crop was shrunk into the
  crop; above the crop's Nyquist frequency (in frame pixels) the restored layer carries
  nothing, so there the frame keeps its own detail.
- Grain: estimated around each face from flat blocks (libaom's noise model is the
  reference: plane-fit residuals of blocks without oriented structure), as an amplitude
  per luma bin, a causal auto-regressive spatial model (as AV1 film grain) and the
  colour channels' correlation (one grey field for black-and-white film); synthesised
  fresh each frame inside the matte, scaled to the fine texture the restored face lacks
  against the original.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The texture measure's high-pass: luma minus its Gaussian blur of this sigma (frame
# pixels), i.e. detail finer than about three pixels, where grain and pores live.
# --grain: "auto" re-creates the film's grain on restored faces, "off" leaves them clean.
GRAIN_MODES = ("auto", "off")
HIGH_PASS_SIGMA = 1.0
# The central face: the landmark hull shrunk by this fraction of the face width (away
# from the matte's feathered edge).
CENTRAL_FACE_SHRINK = 0.15
# The ring: frame pixels this far (fractions of the face width) outside the landmark hull
# with the forehead lifted by RING_FOREHEAD_LIFT of the brow-to-chin height, more than
# paste.FOREHEAD_LIFT, so the ring is never inside a matte.
RING_DISTANCE = (0.1, 0.35)
RING_FOREHEAD_LIFT = 0.6

# The frame's detail replaces the restored face's from where the Gaussian band split
# passes half: this fraction of the crop's Nyquist frequency in frame pixels. The upper
# half of the crop's band is attenuated by the shrink into the crop and the warp back,
# and our 256 model puts little there: on clean clips the face keeps 0.81-0.87 of its
# texture at 0.5 against 0.68-0.75 at 0.7 (before grain).
BAND_SPLIT_FRACTION = 0.5
# Below this scale (crop pixels per frame pixel) the frame keeps all its detail above the
# split; between it and 1 the share fades in, as the band the crop cannot carry widens.
DETAIL_FULL_BELOW = 0.7

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
# The estimate's window: the landmark hull's bounding box widened by this fraction of the
# face width on each side (the face and its surroundings).
GRAIN_MARGIN = 0.5

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
LUMA_BIN_EDGES = np.linspace(0.0, 256.0, LUMA_BINS + 1)
LUMA_BIN_CENTRES = (LUMA_BIN_EDGES[:-1] + LUMA_BIN_EDGES[1:]) / 2
# (dy, dx) of the causal neighbours: the LAG rows above (2 LAG + 1 wide) and LAG to the left.
GRAIN_OFFSETS = tuple((dy, dx) for dy in range(-GRAIN_LAG, 1) for dx in range(-GRAIN_LAG, GRAIN_LAG + 1)
                      if dy < 0 or dx < 0)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (float32 H x W) of RGB on the 0..255 scale."""
    return np.asarray(rgb, dtype=np.float32) @ LUMA_WEIGHTS


def picture_chroma_std(rgb: np.ndarray) -> float:
    """The larger standard deviation of the two YCrCb chroma channels (0..255 levels) of RGB pixels (... x 3)."""
    rgb = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    grey = rgb @ LUMA_WEIGHTS
    return float(max((0.713 * (rgb[:, 0] - grey)).std(), (0.564 * (rgb[:, 2] - grey)).std())) if len(rgb) else 0.0


def fine_detail(rgb: np.ndarray) -> np.ndarray:
    """The texture measure's high-pass luma (float32 H x W): luma less its HIGH_PASS_SIGMA blur."""
    y = luma(rgb)
    return y - cv2.GaussianBlur(y, (0, 0), HIGH_PASS_SIGMA, borderType=cv2.BORDER_REFLECT)


# ---- measure

def _outline(landmarks: np.ndarray, lift: float) -> np.ndarray:
    jaw, brows = landmarks[0:17], landmarks[17:27]
    raise_by = lift * max(landmarks[8, 1] - brows[:, 1].mean(), 0.0)
    return cv2.convexHull(np.vstack([jaw, brows - (0.0, raise_by)]).astype(np.float32))[:, 0]


def face_width(landmarks: np.ndarray) -> float:
    """Jaw end to jaw end, in the landmarks' pixels."""
    return float(np.linalg.norm(landmarks[16] - landmarks[0]))


def texture_regions(frame_shape: tuple, landmarks) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """(window, central face mask, ring mask): boolean masks over frame[window] for 68 frame landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    width = face_width(landmarks)
    ring_hull = _outline(landmarks, RING_FOREHEAD_LIFT)
    reach = RING_DISTANCE[1] * width + 2
    x0, y0 = np.maximum(np.floor(ring_hull.min(axis=0) - reach).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(ring_hull.max(axis=0) + reach).astype(int), (frame_shape[1], frame_shape[0]))
    shape = (max(y1 - y0, 1), max(x1 - x0, 1))
    offset = np.array([x0, y0], dtype=np.float32)

    def filled(points):
        mask = np.zeros(shape, np.uint8)
        cv2.fillConvexPoly(mask, np.round(points - offset).astype(np.int32), 1)
        return mask

    face = filled(_outline(landmarks, 0.0))
    central = cv2.distanceTransform(face, cv2.DIST_L2, 5) > CENTRAL_FACE_SHRINK * width
    outside = cv2.distanceTransform(1 - filled(ring_hull), cv2.DIST_L2, 5)
    ring = (outside > RING_DISTANCE[0] * width) & (outside <= RING_DISTANCE[1] * width)
    return np.s_[y0:y1, x0:x1], central, ring


def relative_texture(rgb: np.ndarray, landmarks, regions=None) -> float:
    """High-pass luma std inside the central face over that in the ring around it (NaN where either is empty).

    regions: texture_regions(rgb.shape, landmarks), when the caller has them already."""
    window, central, ring = regions or texture_regions(rgb.shape, landmarks)
    detail = fine_detail(rgb[window])
    if not central.any() or not ring.any():
        return float("nan")
    return float(detail[central].std() / max(detail[ring].std(), 1e-6))


def texture_ratio(before: np.ndarray, after: np.ndarray, landmarks) -> float:
    """relative_texture of the output frame over that of the input frame, for one face (68 frame landmarks)."""
    regions = texture_regions(before.shape, landmarks)
    return relative_texture(after, landmarks, regions) / relative_texture(before, landmarks, regions)


# ---- band split

def frame_detail_weight(scale: float) -> float:
    """How much of the frame's detail above the crop's resolution a face keeps: 0 for a face
    no larger in the frame than in the crop (scale >= 1 crop pixels per frame pixel), 1 from
    DETAIL_FULL_BELOW, continuous in between so a zoom does not pop."""
    return float(np.clip(np.log(scale) / np.log(DETAIL_FULL_BELOW), 0.0, 1.0)) if scale > 0 else 1.0


def band_split_sigma(scale: float) -> float:
    """Frame-pixel sigma of the Gaussian whose response is 1/2 at BAND_SPLIT_FRACTION of the crop's Nyquist."""
    cutoff = BAND_SPLIT_FRACTION * 0.5 * scale  # cycles per frame pixel
    return float(np.sqrt(2 * np.log(2)) / (2 * np.pi * cutoff))


def keep_frame_detail(face: np.ndarray, original: np.ndarray, scale: float) -> np.ndarray:
    """The restored face (float32 frame region, H x W x 3) with the original region's detail
    above the crop's resolution in place of its own; the face itself where the crop had
    the frame's resolution (scale >= 1)."""
    weight = frame_detail_weight(scale)
    if weight == 0:
        return face
    difference = np.asarray(original, dtype=np.float32) - face
    low = cv2.GaussianBlur(difference, (0, 0), band_split_sigma(scale), borderType=cv2.BORDER_REFLECT)
    return face + weight * (difference - low)


# ---- grain

@dataclass(frozen=True, eq=False)
class GrainModel:
    """A film's grain near one face.

    amplitude: luma grain std per luma bin (LUMA_BINS, 0..255 scale), the luma scaling
    function. ar: coefficients of the causal neighbours GRAIN_OFFSETS. channel_gain: each RGB
    channel's grain std over the luma grain's. channel_mix: 3 x 3 lower-triangular factor of
    the channels' grain correlation; None for monochrome grain (one field in all channels).
    """

    amplitude: np.ndarray
    ar: np.ndarray
    channel_gain: np.ndarray
    channel_mix: np.ndarray | None

    @property
    def monochrome(self) -> bool:
        return self.channel_mix is None

    def amplitude_at(self, luma_values: np.ndarray) -> np.ndarray:
        """The luma scaling function at these luma values (linear between bin centres)."""
        return np.interp(luma_values, LUMA_BIN_CENTRES, self.amplitude).astype(np.float32)


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


def flat_blocks(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grain samples: (mean luma per block, luma residual blocks N x B x B, RGB residual blocks N x B x B x 3) of the flat blocks fully inside mask."""
    rgb = np.asarray(rgb, dtype=np.float32)
    inside = _blocks(mask.astype(bool)).all(axis=(1, 2))
    colour = _blocks(rgb)[inside]
    if not len(colour):
        return np.zeros(0), np.zeros((0, GRAIN_BLOCK, GRAIN_BLOCK)), np.zeros((0, GRAIN_BLOCK, GRAIN_BLOCK, 3))
    grey = colour @ LUMA_WEIGHTS
    residual = _plane_residuals(grey[..., None])[..., 0]
    # Central differences at the same pixels: uncorrelated for white noise, unlike forward ones.
    dx = residual[:, 1:-1, 2:] - residual[:, 1:-1, :-2]
    dy = residual[:, 2:, 1:-1] - residual[:, :-2, 1:-1]
    gxx, gyy, gxy = (dx * dx).mean(axis=(1, 2)), (dy * dy).mean(axis=(1, 2)), (dx * dy).mean(axis=(1, 2))
    half_trace, spread = (gxx + gyy) / 2, np.sqrt(((gxx - gyy) / 2) ** 2 + gxy ** 2)
    anisotropy = (half_trace + spread) / np.maximum(half_trace - spread, 1e-9)
    mean = grey.mean(axis=(1, 2))
    flat = (anisotropy < FLAT_ANISOTROPY) & (mean > UNCLIPPED_LUMA[0]) & (mean < UNCLIPPED_LUMA[1]) & (half_trace > 0)
    return mean[flat], residual[flat], _plane_residuals(colour[flat])


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


def add_missing_grain(face: np.ndarray, original: np.ndarray, alpha: np.ndarray, model: GrainModel, seed) -> np.ndarray:
    """The face layer region (float32 H x W x 3) with grain of the model's kind in the amount of
    fine texture it lacks against the original region: the high-pass luma energy (the texture
    measure's) inside alpha = 1, at most GRAIN_MAX_GAIN times the film's own grain. Fresh
    grain for each seed (e.g. frame and track)."""
    inside = alpha >= 1
    if not inside.any():
        return face
    grain = synthesise_grain(model, luma(face), np.random.default_rng(seed))
    missing = detail_energy(original, inside) - detail_energy(face, inside)
    gain = np.sqrt(np.clip(missing / max(detail_energy(grain, inside), 1e-9), 0.0, GRAIN_MAX_GAIN ** 2))
    return face + gain * grain if gain > 0 else face


def detail_energy(rgb: np.ndarray, inside: np.ndarray) -> float:
    """Mean square of the fine detail (the texture measure's high-pass luma) over the pixels inside."""
    return float(np.mean(fine_detail(rgb)[inside] ** 2))


class TrackGrain:
    """Grain models of one chunk's face tracks, each estimated once from the frames where
    the track first appears (pooled), and a seed per frame and track."""

    def __init__(self):
        self.models: dict[int, GrainModel | None] = {}

    def observe(self, faces) -> None:
        """faces: {(frame index, track number): (frame RGB, 68 frame landmarks)} of one window."""
        pooled: dict[int, list] = {}
        for (_, number), (rgb, landmarks) in faces.items():
            if number not in self.models:
                window = grain_window(rgb.shape, landmarks)
                pooled.setdefault(number, []).append((rgb[window], np.ones(rgb[window].shape[:2], bool)))
        for number, samples in pooled.items():
            self.models[number] = estimate_grain(samples)

    def for_face(self, index: int, number: int):
        """(model, seed) for the face of this track on this frame, or None without a model."""
        model = self.models.get(number)
        return None if model is None else (model, (index, number))
