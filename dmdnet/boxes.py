"""DMDNet's component boxes (left eye, right eye, nose, mouth) from 68 iBUG landmarks.

The arithmetic follows the authors' test code exactly, in float64: float32 moves some
boxes by a pixel, and the network's crops depend on every pixel of the box.
"""
import numpy as np

IMAGE_SIZE = 512
LEFT_EYE, RIGHT_EYE, NOSE, MOUTH = range(4)


def _eye_box(points: np.ndarray, eye: slice, brow_and_eye: np.ndarray) -> list[float]:
    centre = points[eye].mean(axis=0)
    above = (centre[1] - points[brow_and_eye, 1].min()) * 1.3
    below = above / 1.9
    half_width = (above + below) / 2
    return [centre[0] - half_width + 1, centre[1] - above + 1, centre[0] + half_width, centre[1] + below]


def _nose_box(points: np.ndarray) -> list[float]:
    centre = points[29:36].mean(axis=0)
    half_width = max(centre[0] - points[31, 0], points[35, 0] - centre[0]) * 1.25
    below = (points[33, 1] - centre[1]) * 1.1
    return [centre[0] - half_width + 1, centre[1] - (2 * half_width - below) + 1, centre[0] + half_width, centre[1] + below]


def _mouth_box(points: np.ndarray) -> list[float]:
    mouth = points[48:68]
    centre = mouth.mean(axis=0)
    radius = max(float(((mouth.max(axis=0) - mouth.min(axis=0)) / 2).max()), 16.0) * 1.1
    low = centre - radius + 1
    high = np.minimum(centre + radius, IMAGE_SIZE - 2)
    return [low[0], low[1], high[0], high[1]]


def component_boxes(landmarks, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Boxes of the left eye, right eye, nose and mouth, as DMDNet crops them.

    landmarks: 68 x 2 (x, y) in iBUG 300-W order, pixels of the image_size aligned face.
    The boxes are defined on the 512 face (the authors' rules); at other sizes they are
    computed there and scaled back. Returns an int64 array 4 x 4: rows LE, RE, NO, MO;
    columns x1, y1, x2, y2.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if image_size != IMAGE_SIZE:
        to_512 = IMAGE_SIZE / image_size
        return np.trunc(component_boxes(points * to_512) / to_512).astype(np.int64)
    if points.shape != (68, 2):
        raise ValueError(f"component_boxes needs 68 x 2 landmarks (x, y), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("component_boxes got landmarks that are not finite numbers")
    points = np.clip(points, 8, IMAGE_SIZE - 8)
    boxes = [
        _eye_box(points, slice(36, 42), np.r_[17:22, 36:42]),
        _eye_box(points, slice(42, 48), np.r_[22:27, 42:48]),
        _nose_box(points),
        _mouth_box(points),
    ]
    return np.trunc(np.array(boxes, dtype=np.float64)).astype(np.int64)


def mirrored_boxes(boxes: np.ndarray, image_size: int) -> np.ndarray:
    """The component boxes of the horizontally mirrored face: x reflected, and the eyes
    swapped (the mirrored right eye is the new left eye)."""
    mirrored = np.array(boxes, dtype=np.int64)
    mirrored[:, [0, 2]] = image_size - mirrored[:, [2, 0]]
    mirrored[[LEFT_EYE, RIGHT_EYE]] = mirrored[[RIGHT_EYE, LEFT_EYE]]
    return mirrored
