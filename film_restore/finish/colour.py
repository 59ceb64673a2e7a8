"""Luma and the monochrome test, the two facts of a picture's colour that a face's last steps share."""
from __future__ import annotations

import numpy as np

from film_restore.finish import ops

# BT.601 luma weights (OpenCV's RGB2GRAY and YCrCb use them too).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# YCrCb chroma scales: Cr = 0.713 (R - Y), Cb = 0.564 (B - Y).
CR_SCALE, CB_SCALE = 0.713, 0.564
# A picture whose chroma (YCrCb, 0..255 levels) varies less than this standard deviation
# is monochrome film, grey or toned. Measured here: black-and-white film faces 0.3-1.1,
# colour faces 3.5-12.
MONOCHROME_CHROMA_STD = 2.0


def luma(rgb):
    """BT.601 luma (float32 ... x H x W) of RGB on the 0..255 scale (numpy array or torch tensor)."""
    if _is_numpy(rgb):
        return np.asarray(rgb, dtype=np.float32) @ LUMA_WEIGHTS
    import torch

    return rgb.to(torch.float32) @ ops.constant(rgb, LUMA_WEIGHTS)


def chroma_std(rgb) -> float:
    """The larger standard deviation of the two YCrCb chroma channels (0..255 levels) of RGB pixels
    (... x 3; numpy, or a torch tensor)."""
    rgb = ops.as_float(np.asarray(rgb) if _is_numpy(rgb) else rgb).reshape(-1, 3)
    if not len(rgb):
        return 0.0
    grey = luma(rgb)
    xp = ops.namespace(rgb)
    return float(max(xp.std(CR_SCALE * (rgb[:, 0] - grey)), xp.std(CB_SCALE * (rgb[:, 2] - grey))))


def _is_numpy(array) -> bool:
    """Numpy, or what numpy takes (a list); not a tensor."""
    return isinstance(array, np.ndarray) or not hasattr(array, "device")


def is_monochrome(rgb) -> bool:
    """True for RGB pixels (... x 3) of black-and-white film, grey or toned."""
    return chroma_std(rgb) < MONOCHROME_CHROMA_STD
