"""The film's texture on restored faces: measured, and kept above the model's resolution.

- Measure: the relative texture of a face (std of high-pass luma inside the central face
  over that in a ring around it) and its ratio output/input; 1 means the face has kept
  its texture relative to the untouched frame around it.
- Band split: a face larger in the frame than in the aligned crop was shrunk into the
  crop; above the crop's Nyquist frequency (in frame pixels) the restored layer carries
  nothing, so there the frame keeps its own detail -- but not its grain or noise, which
  the restoration removed for good reason: detail no stronger than the film's own
  frame-to-frame grain there (film_restore.grain) is dropped, as a Wiener filter would.
  The grain itself is re-created fresh by film_restore.grain.
"""
from __future__ import annotations

import cv2
import numpy as np

# The texture measure's high-pass: luma minus its Gaussian blur of this sigma (frame
# pixels), i.e. detail finer than about three pixels, where grain and pores live.
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
# The frame's detail above the split is kept where its local energy (luma, averaged by a
# Gaussian of CORING_REACH split sigmas) exceeds CORING_MARGIN times the film's grain energy
# in that band, scaled by sqrt(1 - margin * grain / energy): power spectral subtraction with
# a margin, so grain's chance peaks above its mean energy are not kept as detail.
CORING_REACH = 2.0
CORING_MARGIN = 1.5

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (float32 H x W) of RGB on the 0..255 scale."""
    return np.asarray(rgb, dtype=np.float32) @ LUMA_WEIGHTS


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


def keep_frame_detail(face: np.ndarray, original: np.ndarray, scale: float, round_trip: np.ndarray | None = None,
                      grain_std=None) -> np.ndarray:
    """The restored face (float32 frame region, H x W x 3) with the original region's detail
    above the crop's resolution in place of its own; the face itself where the crop had
    the frame's resolution (scale >= 1).

    round_trip: the unrestored aligned crop warped back the same way (float32): below the
    split the face then keeps only what the restoration changed, added to the original, and
    not the crop's resampling and rounding, which differ from frame to frame (flicker); a
    restorer that changes nothing gives the original back.
    grain_std: (sigma -> H x W luma std of the film's grain above a band split of this
    sigma), e.g. grain.GrainModel.std_above at the region's luma; with it, detail no
    stronger than the grain is not kept (the restored face gets fresh grain instead)."""
    weight = frame_detail_weight(scale)
    if weight == 0:
        return face
    sigma = band_split_sigma(scale)
    original = np.asarray(original, dtype=np.float32)
    difference = original - face
    detail = difference - cv2.GaussianBlur(difference, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    if grain_std is not None:
        energy = cv2.GaussianBlur(luma(detail) ** 2, (0, 0), CORING_REACH * sigma, borderType=cv2.BORDER_REFLECT)
        kept = 1 - CORING_MARGIN * grain_std(sigma) ** 2 / np.maximum(energy, 1e-6)
        detail = detail * np.sqrt(np.clip(kept, 0.0, 1.0))[..., None]
    if round_trip is not None:
        detail = detail + cv2.GaussianBlur(original - round_trip, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return face + weight * detail


