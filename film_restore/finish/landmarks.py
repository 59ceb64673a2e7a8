"""A face's shape from its 68 landmarks (iBUG order), in whatever pixels they are given: its outline and width."""
from __future__ import annotations

import cv2
import numpy as np

JAW = slice(0, 17)
BROWS = slice(17, 27)
CHIN = 8


def face_width(landmarks) -> float:
    """Jaw end to jaw end."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return float(np.linalg.norm(landmarks[16] - landmarks[0]))


def face_outline(landmarks, lift: float) -> np.ndarray:
    """The convex hull (K x 2, float32) of the jaw and the brows raised by `lift` times the brow-to-chin
    height, to take in the forehead, which the landmarks do not outline."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    jaw, brows = landmarks[JAW], landmarks[BROWS]
    raise_by = lift * max(landmarks[CHIN, 1] - brows[:, 1].mean(), 0.0)
    return cv2.convexHull(np.vstack([jaw, brows - (0.0, raise_by)]).astype(np.float32))[:, 0]
