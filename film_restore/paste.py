"""Paste-back of restored aligned faces into their frame.

Each restored crop is colour-matched to the original crop, warped back to the frame
with the inverse alignment, and blended through a soft matte built from the face's 68
landmarks (jaw and brows raised over the forehead, eroded and feathered in proportion
to face size). Frame pixels where every matte is zero keep their exact values.
"""
from dataclasses import dataclass, replace
from functools import partial
from typing import Sequence

import cv2
import numpy as np

from film_restore.faces.align import WARP_INTERPOLATION
from film_restore.records import AlignedFace
from film_restore.grain import MONOCHROME_CHROMA_STD, add_missing_grain
from film_restore.texture import frame_detail_weight, keep_frame_detail, luma
from film_restore.validation import check_points, check_rgb_image

# Brows are raised by this fraction of the brow-to-chin height to take in the forehead
# but little hair, which the landmarks cannot outline.
FOREHEAD_LIFT = 0.4
# Erosion and feathering, each as a fraction of the face width (jaw end to jaw end).
MATTE_EDGE = 0.05
# The colour correction keeps the original's shading and tint on scales larger than
# about this fraction of the face width, and the restored detail below it.
COLOUR_SCALE = 0.125


def face_matte(landmarks, size: int) -> np.ndarray:
    """Soft face matte (float32 size x size, 0..1) in the aligned crop from its 68 crop landmarks.

    The matte is 0 outside the convex hull of the jaw and raised brows, and 1 inside it
    more than two edge widths from the hull.
    """
    points = check_points(landmarks, 68, "landmarks")
    jaw, brows = points[0:17], points[17:27]
    lift = FOREHEAD_LIFT * max(points[8, 1] - brows[:, 1].mean(), 0.0)
    outline = cv2.convexHull(np.vstack([jaw, brows - (0.0, lift)]).astype(np.float32))
    hull = np.zeros((size, size), dtype=np.float32)
    subpixel_bits = 4
    cv2.fillConvexPoly(hull, np.round(outline * (1 << subpixel_bits)).astype(np.int32), 1.0, cv2.LINE_8, subpixel_bits)
    edge = max(int(round(MATTE_EDGE * np.linalg.norm(jaw[16] - jaw[0]))), 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge + 1, 2 * edge + 1))
    eroded = cv2.erode(hull, kernel)
    # The blur window is no wider than the erosion, so the matte stays inside the hull.
    matte = cv2.GaussianBlur(eroded, (2 * edge + 1, 2 * edge + 1), edge / 2, borderType=cv2.BORDER_CONSTANT)
    # The blur's float32 sums stop a hair short of 1 inside the face; there it must be 1.
    matte[matte > 1 - 1e-5] = 1.0
    return matte


def match_colour(restored: np.ndarray, original: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """The restored crop (float32) with the original's low-frequency colour inside the matte.

    Large-scale brightness and colour come from the original, detail from the restored
    crop; a monochrome original (black-and-white film, toned or not) gives its chroma to
    the result, so a restorer that adds colour cannot colour it.
    """
    restored = restored.astype(np.float32)
    inside = matte > 0
    if not inside.any():
        return restored
    _, ycrcb_std = cv2.meanStdDev(cv2.cvtColor(original, cv2.COLOR_RGB2YCrCb), mask=inside.astype(np.uint8))
    if (ycrcb_std[1:] < MONOCHROME_CHROMA_STD).all():
        restored_ycrcb = cv2.cvtColor(restored / 255, cv2.COLOR_RGB2YCrCb)
        restored_ycrcb[..., 1:] = cv2.cvtColor(original.astype(np.float32) / 255, cv2.COLOR_RGB2YCrCb)[..., 1:]
        restored = cv2.cvtColor(restored_ycrcb, cv2.COLOR_YCrCb2RGB) * 255
    # The low-pass works at 1/8 scale, which keeps it cheap; weighting by the matte
    # keeps the background out of the face's colour.
    size = matte.shape[0]
    reduced = max(size // 8, 8)
    face_width = np.count_nonzero(inside.any(axis=0))
    sigma = max(COLOUR_SCALE * face_width * reduced / size, 0.5)
    weight = cv2.GaussianBlur(cv2.resize(matte, (reduced, reduced), interpolation=cv2.INTER_AREA), (0, 0), sigma)
    weight = np.maximum(weight, 1e-6)[..., None]

    def low_pass(image: np.ndarray) -> np.ndarray:
        weighted = cv2.resize(image.astype(np.float32) * matte[..., None], (reduced, reduced), interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(weighted, (0, 0), sigma) / weight

    correction = cv2.resize(low_pass(original) - low_pass(restored), (size, size), interpolation=cv2.INTER_LINEAR)
    return restored + correction


def frame_matte(frame_shape: tuple, aligned: AlignedFace) -> np.ndarray:
    """The face's matte warped into a frame of this shape (float32 H x W, 0..1); paste_back changes no pixel where it is 0."""
    full = np.zeros(frame_shape[:2], dtype=np.float32)
    placed = _matte_in_frame(face_matte(aligned.landmarks, aligned.transform.size), aligned, frame_shape)
    if placed is not None:
        x0, y0, _, alpha = placed
        full[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]] = alpha
    return full


@dataclass(frozen=True, eq=False)
class FaceRegion:
    """One restored face warped into its frame, before compositing: the frame rectangle it
    reaches, the face there (RGB float32 on the 0..255 scale) and its matte (alpha)."""

    region: tuple[slice, slice]
    face: np.ndarray
    alpha: np.ndarray
    number: int  # its place in the restored faces given

    def kept(self, original: np.ndarray, share: float) -> "FaceRegion":
        """The region with only this share of the restoration: original + share (face - original) (original: the frame's RGB)."""
        if share >= 1:
            return self
        before = original[self.region].astype(np.float32)
        return replace(self, face=before + np.float32(share) * (self.face - before))

    def with_grain(self, original: np.ndarray, model, seed, allowed: float) -> "FaceRegion":
        """The region with fresh grain where the matte is 1 (grain.add_missing_grain; original: the frame's RGB)."""
        return replace(self, face=add_missing_grain(self.face, original[self.region], self.alpha, model, seed, allowed))


def face_regions(frame_shape: tuple, restored_faces: Sequence[tuple[AlignedFace, np.ndarray]],
                 original: np.ndarray | None = None, grain: Sequence | None = None) -> list[FaceRegion]:
    """The restored faces warped into the frame, in the order they are laid (smaller faces first,
    so where mattes overlap the larger, usually nearer, face ends on top); a face whose matte
    reaches no frame pixel is left out.

    restored crops are RGB of the aligned crop's size, uint8 or float32 on the 0..255 scale
    (float keeps precision for 10-bit output). Each is colour-matched to its aligned crop.
    original: the frame's RGB; with it, a face larger in the frame than in the crop keeps the
    frame's detail above the crop's resolution (texture.keep_frame_detail) but for the film's
    grain, where grain gives the face's (grain.GrainModel, ...) (None for none; only the model is used here)."""
    for aligned, restored in restored_faces:
        if not isinstance(aligned, AlignedFace):
            raise ValueError(f"paste_back needs (AlignedFace, restored crop) pairs, got {type(aligned).__name__}")
        if restored.shape != aligned.crop.shape:
            raise ValueError(f"restored crop has shape {restored.shape}, the aligned crop {aligned.crop.shape}: restore at the aligned size")
    grain = list(grain) if grain is not None else [None] * len(restored_faces)
    if original is None and any(entry is not None for entry in grain):
        raise ValueError("the film's grain on restored faces needs the original frame: pass original= with grain=")
    if len(grain) != len(restored_faces):
        raise ValueError(f"got {len(grain)} grain entries for {len(restored_faces)} faces: give one per face (None for none)")
    regions = []
    for number in sorted(range(len(restored_faces)), key=lambda number: -restored_faces[number][0].transform.scale):
        aligned, restored = restored_faces[number]
        matte = face_matte(aligned.landmarks, aligned.transform.size)
        placed = _matte_in_frame(matte, aligned, frame_shape)
        if placed is None:
            continue
        x0, y0, to_region, alpha = placed
        to_frame = partial(cv2.warpAffine, M=to_region, dsize=alpha.shape[::-1], flags=WARP_INTERPOLATION,
                           borderMode=cv2.BORDER_REPLICATE)
        face = to_frame(match_colour(restored, aligned.crop, matte))
        region = np.s_[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]]
        if original is not None and frame_detail_weight(aligned.transform.scale) > 0:
            grain_std = None if grain[number] is None else partial(grain[number][0].std_above, luma(original[region]))
            face = keep_frame_detail(face, original[region], aligned.transform.scale,
                                     to_frame(aligned.crop.astype(np.float32)), grain_std)
        regions.append(FaceRegion(region, face, alpha, number))
    return regions


def with_grain(regions: Sequence[FaceRegion], original: np.ndarray, grain: Sequence) -> list[FaceRegion]:
    """The regions with fresh grain, grain: per restored face (by its number), (grain.GrainModel, seed, grain allowed) or None."""
    return [face if grain[face.number] is None else face.with_grain(original, *grain[face.number]) for face in regions]


def composite(frame_shape: tuple, regions: Sequence[FaceRegion]) -> tuple[np.ndarray, np.ndarray]:
    """Face regions (in their order) as a frame-sized layer: (RGB float32 H x W x 3, alpha H x W)."""
    height, width = frame_shape[:2]
    premultiplied = np.zeros((height, width, 3), dtype=np.float32)
    alpha_total = np.zeros((height, width), dtype=np.float32)
    for face in regions:
        # "Over" compositing in premultiplied form: a later face covers earlier ones by its alpha.
        alpha = face.alpha
        premultiplied[face.region] = premultiplied[face.region] * (1 - alpha[..., None]) + alpha[..., None] * face.face
        alpha_total[face.region] = alpha_total[face.region] * (1 - alpha) + alpha
    layer = np.divide(premultiplied, alpha_total[..., None], out=np.zeros_like(premultiplied), where=alpha_total[..., None] > 0)
    return layer, alpha_total


def face_layer(frame_shape: tuple, restored_faces: Sequence[tuple[AlignedFace, np.ndarray]],
               original: np.ndarray | None = None, grain: Sequence | None = None,
               add_grain: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The restored faces as a frame-sized layer: (RGB float32 H x W x 3 on the 0..255 scale, alpha H x W).

    A frame becomes frame + alpha * (layer - frame); where alpha is 0 it is untouched
    (face_regions says how each face is laid). grain: per face, (grain.GrainModel, seed,
    grain allowed) or None (needs original): the frame's detail is kept but for the film's
    grain, and, with add_grain, fresh grain is added in the amount of texture the face lacks,
    adding no more change from frame to frame than the restoration took away
    (grain.add_missing_grain).
    """
    regions = face_regions(frame_shape, restored_faces, original, grain)
    return composite(frame_shape, with_grain(regions, original, grain) if add_grain and grain is not None else regions)


def paste_back(frame: np.ndarray, restored_faces: Sequence[tuple[AlignedFace, np.ndarray]]) -> np.ndarray:
    """A copy of the uint8 RGB frame with each (aligned face, restored uint8 crop) pair blended in."""
    check_rgb_image(frame, "frame")
    for _, restored in restored_faces:
        check_rgb_image(restored, "restored crop")
    layer, alpha = face_layer(frame.shape, restored_faces)
    result = frame.copy()
    touched = alpha > 0
    current = frame[touched].astype(np.float32)
    blended = current + alpha[touched][:, None] * (layer[touched] - current)
    result[touched] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return result


def _matte_in_frame(matte: np.ndarray, aligned: AlignedFace, frame_shape: tuple):
    """(x0, y0, crop-to-region matrix, alpha) for the frame rectangle the matte reaches, or None if it reaches none."""
    rows, columns = np.nonzero(matte)
    if rows.size == 0:
        return None
    # Only the frame rectangle that the matte can reach is warped.
    corners = np.array([[columns.min() - 1, rows.min() - 1], [columns.max() + 1, rows.min() - 1],
                        [columns.min() - 1, rows.max() + 1], [columns.max() + 1, rows.max() + 1]], dtype=np.float64)
    reach = aligned.transform.to_frame(corners)
    height, width = frame_shape[:2]
    x0, y0 = np.maximum(np.floor(reach.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(reach.max(axis=0)).astype(int) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return None
    to_region = aligned.transform.inverse.copy()
    to_region[:, 2] -= (x0, y0)
    alpha = cv2.warpAffine(matte, to_region, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return int(x0), int(y0), to_region, alpha
