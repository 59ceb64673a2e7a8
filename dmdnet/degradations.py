"""Synthetic degradations for training and evaluating DMDNet, as the paper's Eq. 19.

    y = [(x ⊗ k_rho)↓r + n_sigma]_JPEG_q ↑r

(Li et al., "Learning Dual Memory Dictionaries for Blind Face Restoration", TPAMI 2022.)
Every step works on the whole image, in this order:

1. blur: isotropic Gaussian with standard deviation rho pixels (the paper's "kernel
   width" rho is read as the Gaussian's sigma, the authors' usage), kernel side 2 * ceil(3 * rho) + 1, borders reflected
   (cv2.BORDER_REFLECT_101), on float32 so nothing is rounded before the resize;
2. downsample by r: bicubic (cv2.INTER_CUBIC) to round(side / r) pixels, at least 1;
   r = 1 leaves the image as it is;
3. noise: additive white Gaussian noise of standard deviation sigma on the 0..255 scale,
   drawn independently per pixel and channel from the numpy Generator given to degrade
   (always drawn, also for sigma = 0, so a Generator advances the same way for every
   image); then rounded and clipped to uint8, as a JPEG encoder needs;
4. JPEG: cv2.imencode at quality q and decoded again. cv2's libjpeg stores chroma at
   half resolution (4:2:0, the usual JPEG), so even at q = 100 most of the colour part of
   the noise is averaged away: after the whole pipeline a noise of sigma leaves an RGB
   residual of about 0.7 sigma (its luma part, 0.57 sigma in BT.601 Y, survives in full);
5. upsample back to the original size, bicubic, rounded and clipped to uint8.

Training ranges (paper): rho in {1.0, 1.1, ..., 3.0}, r in {1.0, 1.1, ..., 10.0},
sigma in [0, 15], q in {50, ..., 100}. sample_params draws rho, r and q uniformly from
those grids and sigma uniformly from the continuous interval [0, 15] (the paper gives no
step for it).

Evaluation protocol (evaluation_params): the scale is 4 or 8 and every other parameter
sits at the middle of its training range: rho = 2.0, sigma = 7.5, q = 75. This mirrors
common blind-face-restoration test protocols (synthetic x4 / x8 test sets with one fixed
blur, noise and compression rather than random draws); the numbers themselves are this
project's choice, fixed here so results stay comparable across runs. The noise of
degrade_for_evaluation comes from np.random.default_rng(seed), so one seed gives one image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

RHO_RANGE = (1.0, 3.0)        # Gaussian blur sigma, step 0.1
SCALE_RANGE = (1.0, 10.0)     # downsampling factor r, step 0.1
SIGMA_RANGE = (0.0, 15.0)     # noise standard deviation on 0..255, continuous
QUALITY_RANGE = (50, 100)     # JPEG quality, integer
GRID_STEP = 0.1

EVALUATION_SCALES = (4, 8)
EVALUATION_RHO = 2.0
EVALUATION_SIGMA = 7.5
EVALUATION_QUALITY = 75


@dataclass(frozen=True)
class DegradationParams:
    """One degradation: blur sigma rho (px), downsampling factor scale (r), noise sigma (0..255), JPEG quality."""

    rho: float
    scale: float
    sigma: float
    quality: int

    def __post_init__(self):
        values = (self.rho, self.scale, self.sigma)
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) for v in values):
            raise ValueError(f"degradation parameters must be finite numbers, got {self!r}")
        if self.rho < 0:
            raise ValueError(f"blur rho must be >= 0 (0: no blur), got {self.rho}")
        if self.scale < 1:
            raise ValueError(f"downsampling factor must be >= 1, got {self.scale}")
        if self.sigma < 0:
            raise ValueError(f"noise sigma must be >= 0, got {self.sigma}")
        if not isinstance(self.quality, (int, np.integer)) or isinstance(self.quality, bool) or not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be an integer in 1..100, got {self.quality!r}")
        object.__setattr__(self, "rho", float(self.rho))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "quality", int(self.quality))


def _grid_value(rng: np.random.Generator, low: float, high: float) -> float:
    steps = round((high - low) / GRID_STEP)
    return round(low + int(rng.integers(0, steps + 1)) * GRID_STEP, 1)


def sample_params(rng: np.random.Generator) -> DegradationParams:
    """Parameters drawn uniformly from the paper's training ranges (see the module notes)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"sample_params needs a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    rho = _grid_value(rng, *RHO_RANGE)
    scale = _grid_value(rng, *SCALE_RANGE)
    sigma = float(rng.uniform(*SIGMA_RANGE))
    quality = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))
    return DegradationParams(rho, scale, sigma, quality)


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"degrade needs an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def blur(image: np.ndarray, rho: float) -> np.ndarray:
    """Gaussian blur with standard deviation rho (float32 in, float32 out); rho = 0 is no blur."""
    if rho <= 0:
        return image.astype(np.float32)
    side = 2 * math.ceil(3 * rho) + 1
    return cv2.GaussianBlur(image.astype(np.float32), (side, side), sigmaX=rho, sigmaY=rho,
                            borderType=cv2.BORDER_REFLECT_101)


def jpeg(image_uint8_rgb: np.ndarray, quality: int) -> np.ndarray:
    """The RGB image encoded as JPEG at this quality with cv2 and decoded again."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image_uint8_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2 could not encode the image as JPEG")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])


def downsample(image: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic resize to round(side / scale) pixels (at least 1); scale 1 returns the image unchanged."""
    if scale <= 1:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """image + N(0, sigma^2) per pixel and channel (drawn from rng even for sigma 0), rounded and clipped to uint8."""
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return _to_uint8(image.astype(np.float32) + noise * np.float32(sigma))


def upsample(image_uint8_rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize to width x height, rounded and clipped to uint8 (unchanged if already that size)."""
    if image_uint8_rgb.shape[:2] == (height, width):
        return image_uint8_rgb
    return _to_uint8(cv2.resize(image_uint8_rgb.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC))


def degrade(image_uint8_rgb, params: DegradationParams, rng: np.random.Generator) -> np.ndarray:
    """The degraded image, same size as the input (uint8 RGB); the noise is drawn from rng.

    blur -> downsample -> add_noise -> jpeg -> upsample, as the module notes describe.
    """
    image = _check_image(image_uint8_rgb)
    if not isinstance(params, DegradationParams):
        raise TypeError(f"degrade needs DegradationParams, got {type(params).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"degrade needs a numpy Generator for the noise, got {type(rng).__name__}")
    small = downsample(blur(image, params.rho), params.scale)
    small = jpeg(add_noise(small, params.sigma, rng), params.quality)
    return upsample(small, *image.shape[:2])


def evaluation_params(scale: int) -> DegradationParams:
    """The fixed evaluation degradation for x4 or x8 (see the module notes)."""
    if scale not in EVALUATION_SCALES or isinstance(scale, bool):
        raise ValueError(f"evaluation scale must be one of {EVALUATION_SCALES}, got {scale!r}")
    return DegradationParams(EVALUATION_RHO, float(scale), EVALUATION_SIGMA, EVALUATION_QUALITY)


def degrade_for_evaluation(image_uint8_rgb, scale: int, seed: int = 0) -> np.ndarray:
    """The image under the fixed x4 or x8 evaluation degradation, its noise from default_rng(seed)."""
    return degrade(image_uint8_rgb, evaluation_params(scale), np.random.default_rng(seed))
