"""Checks of the arrays that cross film_restore's public functions, with one-line errors."""
import numpy as np


def check_rgb_image(image, what: str = "image") -> np.ndarray:
    """Return image unchanged if it is a uint8 RGB array H x W x 3, else raise ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (uint8 RGB, H x W x 3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 RGB, got dtype {image.dtype}: convert with np.clip(x, 0, 255).astype(np.uint8)")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} must have shape H x W x 3 (RGB), got {image.shape}")
    return image


def check_points(points, count: int, what: str = "points") -> np.ndarray:
    """Return points as a float64 array count x 2 of finite numbers, else raise ValueError."""
    array = np.asarray(points, dtype=np.float64)
    if array.shape != (count, 2):
        raise ValueError(f"{what} must be {count} x 2 (x, y), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite numbers, got NaN or infinity")
    return array


def check_box(box, what: str = "box") -> np.ndarray:
    """Return box (x1, y1, x2, y2) as float64 if it is finite with x2 > x1 and y2 > y1, else raise ValueError."""
    array = np.asarray(box, dtype=np.float64)
    if array.shape != (4,) or not np.isfinite(array).all():
        raise ValueError(f"{what} must be 4 finite numbers (x1, y1, x2, y2), got {box!r}")
    if array[2] <= array[0] or array[3] <= array[1]:
        raise ValueError(f"{what} must have x2 > x1 and y2 > y1, got {tuple(array)}")
    return array
