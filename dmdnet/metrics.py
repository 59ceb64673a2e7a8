"""Image quality and identity metrics for evaluating face restoration (numpy and cv2 only).

psnr(a, b, channel="rgb"):  10 log10(255^2 / MSE), MSE over every pixel and channel of the
    uint8 RGB images (channel="y": on the luma below); inf for identical images.
ssim(a, b, channel="y"):    Wang et al. 2004 SSIM with an 11 x 11 Gaussian window of
    sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, population (not sample) statistics,
    averaged over the pixels whose window lies inside the image (5-pixel border left out).
    By default on the Y channel of YCbCr (BT.601, studio range as MATLAB's rgb2ycbcr:
    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in 0..255), unrounded, as
    blind-face-restoration papers report it (the BasicSR convention); channel="rgb" gives
    the mean of the three RGB channels' SSIM.
    These equal skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255) on the same channels.
identity_similarity(a, b):  cosine similarity of one identity embedding with one or many.
"""
from __future__ import annotations

import cv2
import numpy as np

_CHANNELS = ("rgb", "y")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2, _RANGE = 0.01, 0.03, 255.0


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    for name, image in (("first", a), ("second", b)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"metrics need H x W x 3 uint8 RGB images; the {name} is {image.dtype} {image.shape}")
    if a.shape != b.shape:
        raise ValueError(f"metrics need images of the same size, got {a.shape} and {b.shape}")
    return a, b


def _check_channel(channel: str) -> None:
    if channel not in _CHANNELS:
        raise ValueError(f"channel must be one of {_CHANNELS}, got {channel!r}")


def rgb_to_y(image_uint8_rgb) -> np.ndarray:
    """BT.601 studio-range luma (16..235) of a uint8 RGB image, float64, unrounded."""
    rgb = np.asarray(image_uint8_rgb, dtype=np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def psnr(a, b, channel: str = "rgb") -> float:
    """PSNR in dB of two uint8 RGB images (see the module notes); inf where they are identical."""
    a, b = _check_pair(a, b)
    _check_channel(channel)
    if channel == "y":
        difference = rgb_to_y(a) - rgb_to_y(b)
    else:
        difference = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(difference**2))
    return float("inf") if mse == 0 else float(10 * np.log10(_RANGE**2 / mse))


def _ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    pad = SSIM_WINDOW // 2
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {x.shape[1]} x {x.shape[0]}")
    kernel = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA, cv2.CV_64F)
    window = kernel @ kernel.T

    def local_mean(plane):
        return cv2.filter2D(plane, cv2.CV_64F, window, borderType=cv2.BORDER_REFLECT)[pad:-pad, pad:-pad]

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def ssim(a, b, channel: str = "y") -> float:
    """SSIM of two uint8 RGB images (see the module notes); 1.0 for identical images."""
    a, b = _check_pair(a, b)
    _check_channel(channel)
    if channel == "y":
        return _ssim_plane(rgb_to_y(a), rgb_to_y(b))
    return float(np.mean([_ssim_plane(a[..., c].astype(np.float64), b[..., c].astype(np.float64)) for c in range(3)]))


def identity_similarity(embedding_a, embeddings_b):
    """Cosine similarity of embedding_a (D) with embeddings_b (D -> float, or N x D -> N float64 array).

    The embeddings need not be unit length; a zero vector is an error.
    """
    a = np.asarray(embedding_a, dtype=np.float64)
    b = np.asarray(embeddings_b, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"embedding_a must be one D-vector, got shape {a.shape}")
    single = b.ndim == 1
    b2 = b[None] if single else b
    if b2.ndim != 2 or b2.shape[1] != a.size:
        raise ValueError(f"embeddings_b must be a {a.size}-vector or N x {a.size}, got shape {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b2).all()):
        raise ValueError("embeddings must be finite numbers")
    norm_a, norms_b = np.linalg.norm(a), np.linalg.norm(b2, axis=1)
    if norm_a == 0 or (norms_b == 0).any():
        raise ValueError("identity_similarity got a zero embedding")
    similarity = b2 @ a / (norms_b * norm_a)
    return float(similarity[0]) if single else similarity
