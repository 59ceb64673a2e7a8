"""Paste-back of restored aligned faces into their frame.

Each restored crop is colour-matched to the original crop, warped back to the frame with the
inverse alignment into the rectangle its matte reaches, and blended through a soft matte built
from the face's 68 landmarks (jaw and brows raised over the forehead, eroded and feathered in
proportion to face size). Frame pixels where every matte is zero keep their exact values. A face
larger in the frame than in its crop keeps the frame's detail above the crop's resolution
(finish.bands). Only the face regions are computed: never whole frames.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import cv2
import numpy as np

from film_restore.faces.align import WARP_INTERPOLATION
from film_restore.finish import ops
from film_restore.finish.bands import frame_detail_weight, keep_frame_detail
from film_restore.finish.colour import is_monochrome, luma
from film_restore.finish.landmarks import face_outline, face_width
from film_restore.records import AlignedFace
from film_restore.validation import check_points, check_rgb_image

# Brows are raised by this fraction of the brow-to-chin height to take in the forehead
# but little hair, which the landmarks cannot outline.
FOREHEAD_LIFT = 0.4
# Erosion and feathering, each as a fraction of the face width (jaw end to jaw end).
MATTE_EDGE = 0.05
# The colour correction keeps the original's shading and tint on scales larger than
# about this fraction of the face width, and the restored detail below it.
COLOUR_SCALE = 0.125
# The colour correction's low-pass works at this fraction of the crop's side.
COLOUR_REDUCTION = 8
WARP = ops.interpolation_named(WARP_INTERPOLATION)  # the crop <-> frame warps' interpolation, as ops names it


def face_matte(landmarks, size: int, like=None):
    """Soft face matte (float32 size x size, 0..1) in the aligned crop from its 68 crop landmarks,
    made where `like` is (an array of that kind and device; None: numpy).

    The matte is 0 outside the convex hull of the jaw and raised brows, and 1 inside it
    more than two edge widths from the hull.
    """
    return _matte(landmarks, size, like)[0]


def _matte(landmarks, size: int, like=None) -> tuple[object, tuple[slice, slice] | None]:
    """(face_matte, the crop rectangle where it is above 0: None where nowhere)."""
    points = check_points(landmarks, 68, "landmarks")
    hull = np.zeros((size, size), dtype=np.uint8)
    subpixel_bits = 4
    cv2.fillConvexPoly(hull, np.round(face_outline(points, FOREHEAD_LIFT) * (1 << subpixel_bits)).astype(np.int32), 1,
                       cv2.LINE_8, subpixel_bits)
    edge = max(int(round(MATTE_EDGE * face_width(points))), 1)
    eroded = _eroded(hull, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * edge + 1, 2 * edge + 1)))
    # The blur window is no wider than the erosion, so the matte stays inside the hull; each of its
    # weights is above 0, so the matte is above 0 exactly within `edge` of the eroded hull.
    rows, columns = np.flatnonzero(eroded.any(axis=1)), np.flatnonzero(eroded.any(axis=0))
    reach = None if rows.size == 0 else np.s_[max(rows[0] - edge, 0):min(rows[-1] + edge + 1, size),
                                              max(columns[0] - edge, 0):min(columns[-1] + edge + 1, size)]
    if like is None or ops.is_numpy(like):
        matte = cv2.GaussianBlur(eroded.astype(np.float32), (2 * edge + 1, 2 * edge + 1), edge / 2, borderType=cv2.BORDER_CONSTANT)
        # The blur's float32 sums stop a hair short of 1 inside the face; there it must be 1.
        matte[matte > 1 - 1e-5] = 1.0
        return matte, reach
    matte = ops.blur(ops.like(like, eroded)[None, ..., None], edge / 2, ops.CONSTANT, 2 * edge + 1)[0, ..., 0]
    return ops.namespace(matte).where(matte > 1 - 1e-5, ops.constant(matte, 1.0), matte), reach


def _eroded(hull: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """cv2.erode(hull, kernel) (its border: no erosion) of a hull whose rows are each one run of 1s or
    none, by a kernel whose rows are runs too (an ellipse's): from the runs' ends, each output row
    the span its kernel rows' runs leave, without visiting every pixel under the kernel."""
    height, width = hull.shape
    inside = hull.view(bool)  # the hull's 0s and 1s as they are
    starts, stops = inside.argmax(axis=1), width - inside[:, ::-1].argmax(axis=1)  # each row's run: [start, stop)
    filled = inside[np.arange(height), starts]
    if np.any(np.count_nonzero(inside, axis=1) != np.where(filled, stops - starts, 0)):
        return cv2.erode(hull, kernel)  # a row holds several runs: the general erosion
    # A run reaching the crop's edge goes on past it, as cv2.erode's border does; rows past the crop's
    # top and bottom hold runs without end.
    starts = np.where(filled, np.where(starts == 0, -width, starts), 2 * width)
    stops = np.where(filled, np.where(stops == width, 2 * width, stops), -width)
    reach_y, reach_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    ones = kernel.astype(bool)
    spans = [(row - reach_y, np.flatnonzero(ones[row])) for row in range(kernel.shape[0]) if ones[row].any()]
    offsets = np.array([offset for offset, _ in spans])
    left = np.array([run[0] - reach_x for _, run in spans])
    right = np.array([run[-1] - reach_x for _, run in spans])
    source = np.arange(height) + offsets[:, None] + reach_y  # kernel row x output row -> a row of the padded runs
    starts, stops = (np.pad(ends, reach_y, constant_values=outside) for ends, outside in ((starts, -width), (stops, 2 * width)))
    low = np.maximum((starts[source] - left[:, None]).max(axis=0), 0)
    high = np.minimum((stops[source] - right[:, None]).min(axis=0), width)
    eroded = np.zeros_like(hull)
    rows = np.flatnonzero(low < high)
    if rows.size:  # filled over the eroded runs' bounding box only
        top, bottom, left_end, right_end = rows[0], rows[-1] + 1, low[rows].min(), high[rows].max()
        columns = np.arange(left_end, right_end)
        eroded[top:bottom, left_end:right_end] = (columns >= low[top:bottom, None]) & (columns < high[top:bottom, None])
    return eroded


def match_colour(restored, original, matte, monochrome: bool, face_widths: Sequence[int]):
    """The restored crops (N x S x S x 3 float32; numpy or tensors) with the originals' low-frequency
    colour inside the mattes (N x S x S, of their kind), each face's width (the mattes' columns above 0).

    Large-scale brightness and colour come from the original, detail from the restored crop; a
    monochrome original (black-and-white film, toned or not) gives its chroma to the result, so a
    restorer that adds colour cannot colour it.
    """
    original = ops.as_float(original)
    if monochrome:
        restored = original + (luma(restored) - luma(original))[..., None]
    # The low-pass works at 1/8 scale, which keeps it cheap; weighting by the matte
    # keeps the background out of the face's colour.
    size = matte.shape[1]
    reduced = max(size // COLOUR_REDUCTION, COLOUR_REDUCTION)
    xp = ops.namespace(restored)
    weights = ops.like(restored, matte)[..., None]
    small_weights = ops.resize(weights, (reduced, reduced), ops.AREA)
    results = []
    for index, face in enumerate(face_widths):
        sigma = max(COLOUR_SCALE * face * reduced / size, 0.5)
        weight = xp.maximum(ops.blur(small_weights[index:index + 1], sigma), ops.constant(restored, 1e-6))
        # The original's low-pass and the restored crop's, taken together.
        pair = ops.stack([original[index] * weights[index], restored[index] * weights[index]])
        low_passes = ops.blur(ops.resize(pair, (reduced, reduced), ops.AREA), sigma) / weight
        correction = ops.resize(low_passes[:1] - low_passes[1:], (size, size), ops.LINEAR)
        results.append(restored[index:index + 1] + correction)
    return xp.concat(results, axis=0)


@dataclass(frozen=True, eq=False)
class FaceRegion:
    """One restored face warped into its frame, before compositing: the frame rectangle it
    reaches, the face there (RGB float32 on the 0..255 scale; numpy or a tensor) and its
    matte (alpha)."""

    region: tuple[slice, slice]
    face: object
    alpha: object
    number: int  # its place in the restored faces given

    def partial(self, original, share: float) -> "FaceRegion":
        """The region with only this share of the restoration: original + share (face - original) (original: the frame's RGB there)."""
        if share >= 1:
            return self
        before = ops.as_float(original)
        return replace(self, face=before + float(share) * (self.face - before))

    @property
    def origin(self) -> tuple[int, int]:
        return self.region[0].start, self.region[1].start


def matte_region(reach: tuple[slice, slice] | None, aligned: AlignedFace, frame_shape: tuple
                 ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """(frame rectangle a matte reaches, crop-to-rectangle matrix), or None if it reaches none (reach:
    the crop rectangle where the matte is above 0, as _matte gives it)."""
    if reach is None:
        return None
    (top, bottom), (left, right) = (reach[0].start - 1, reach[0].stop), (reach[1].start - 1, reach[1].stop)
    corners = np.array([[left, top], [right, top], [left, bottom], [right, bottom]], dtype=np.float64)
    footprint = aligned.transform.to_frame(corners)
    height, width = frame_shape[:2]
    x0, y0 = np.maximum(np.floor(footprint.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(footprint.max(axis=0)).astype(int) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return None
    to_region = aligned.transform.inverse.copy()
    to_region[:, 2] -= (x0, y0)
    return np.s_[int(y0):int(y1), int(x0):int(x1)], to_region


def face_regions(frame_shape: tuple, restored_faces: Sequence[tuple[AlignedFace, object]], originals=None,
                 grain_std: Sequence | None = None) -> list[FaceRegion]:
    """The restored faces warped into the frame, in the order they are laid (smaller faces first,
    so where mattes overlap the larger, usually nearer, face ends on top); a face whose matte
    reaches no frame pixel is left out.

    restored crops are RGB of the aligned crop's size, float32 on the 0..255 scale (numpy, or
    tensors on one device). Each is colour-matched to its aligned crop. originals: the frame's
    RGB (numpy), or per face an object whose read(region, like) gives the frame's RGB over a rectangle
    around it as like's float32 (finish.window.Surround); with it, a face larger in the frame than in the crop keeps
    the frame's detail above the crop's resolution but for the film's grain, whose std above a
    split each entry of grain_std gives ((luma, sigma) -> std, e.g. GrainModel.std_above, or None
    for none).
    """
    for aligned, restored in restored_faces:
        if not isinstance(aligned, AlignedFace):
            raise ValueError(f"paste-back needs (AlignedFace, restored crop) pairs, got {type(aligned).__name__}")
        if tuple(restored.shape) != aligned.crop.shape:
            raise ValueError(f"restored crop has shape {tuple(restored.shape)}, the aligned crop {aligned.crop.shape}: restore at the aligned size")
    grain_std = list(grain_std) if grain_std is not None else [None] * len(restored_faces)
    if len(grain_std) != len(restored_faces):
        raise ValueError(f"got {len(grain_std)} grain entries for {len(restored_faces)} faces: give one per face (None for none)")
    if originals is not None and isinstance(originals, np.ndarray):
        originals = [_WholeFrame(originals)] * len(restored_faces)
    if not restored_faces:
        return []
    order = sorted(range(len(restored_faces)), key=lambda number: -restored_faces[number][0].transform.scale)
    placed = []
    for number in order:
        aligned, restored = restored_faces[number]
        matte, reach = _matte(aligned.landmarks, aligned.transform.size, like=restored)  # where the restored face is
        where = matte_region(reach, aligned, frame_shape)
        if where is not None:
            placed.append((number, matte, reach[1].stop - reach[1].start, *where))
    if not placed:
        return []
    first = restored_faces[placed[0][0]][1]
    xp = ops.namespace(first)
    restored = xp.stack([ops.as_float(restored_faces[number][1]) for number, *_ in placed])
    crops = np.stack([restored_faces[number][0].crop for number, *_ in placed])
    mattes = xp.stack([matte for _, matte, *_ in placed])
    device_crops = ops.like(first, crops)
    # The test reads the crops where they are: on a device, there (the uint8 crops of numpy as they are).
    monochrome = [is_monochrome((crops if ops.is_numpy(first) else device_crops)[i][mattes[i] > 0]) for i in range(len(placed))]
    matched = xp.concat([match_colour(restored[i:i + 1], device_crops[i:i + 1], mattes[i:i + 1], monochrome[i], [width])
                         for i, (_, _, width, *_) in enumerate(placed)], axis=0)
    regions = []
    for index, (number, matte, _, region, to_region) in enumerate(placed):
        aligned = restored_faces[number][0]
        size = (region[0].stop - region[0].start, region[1].stop - region[1].start)
        alpha = ops.affine(ops.like(first, matte)[None, ..., None], to_region, size, ops.LINEAR, ops.CONSTANT)[0, ..., 0]
        scale = aligned.transform.scale
        keeps_detail = originals is not None and frame_detail_weight(scale) > 0
        # With the frame's detail kept, the unrestored crop goes back the same way (keep_frame_detail's round trip), in the same warp.
        warped = ops.affine(ops.stack([matched[index], device_crops[index]]) if keeps_detail else matched[index:index + 1],
                            to_region, size, WARP)
        face = warped[0]
        if keeps_detail:
            original = originals[number].read(region, like=first)
            round_trip = warped[1]
            std = grain_std[number]
            coring = None if std is None else (lambda sigma, std=std, y=luma(original): std(y, sigma))
            face = keep_frame_detail(face, original, scale, round_trip, coring)
        regions.append(FaceRegion(region, face, alpha, number))
    return regions


class _WholeFrame:
    """A whole frame's RGB read as face_regions reads a face's surroundings."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb

    def read(self, region: tuple[slice, slice], like) -> object:
        return ops.like(like, self.rgb[region])


def composite(regions: Sequence[FaceRegion]) -> list[tuple[tuple[slice, slice], object, object]]:
    """Face regions (in their order) as layers, one over each group of regions that overlap:
    (rectangle, RGB float32 h x w x 3, alpha h x w), so far-apart faces are not laid over the frame between them."""
    groups: list[list[FaceRegion]] = []
    for face in regions:
        touching = [group for group in groups if any(_overlap(face.region, other.region) for other in group)]
        merged = [face]
        for group in touching:
            groups.remove(group)
            merged = group + merged
        groups.append(sorted(merged, key=regions.index))
    return [_laid(group) for group in groups]


def _overlap(a: tuple[slice, slice], b: tuple[slice, slice]) -> bool:
    return a[0].start < b[0].stop and b[0].start < a[0].stop and a[1].start < b[1].stop and b[1].start < a[1].stop


def _laid(regions: list[FaceRegion]) -> tuple[tuple[slice, slice], object, object]:
    if len(regions) == 1:
        return regions[0].region, regions[0].face, regions[0].alpha
    y0 = min(face.region[0].start for face in regions)
    x0 = min(face.region[1].start for face in regions)
    y1 = max(face.region[0].stop for face in regions)
    x1 = max(face.region[1].stop for face in regions)
    xp = ops.namespace(regions[0].face)
    premultiplied = ops.like(regions[0].face, np.zeros((y1 - y0, x1 - x0, 3), np.float32))
    alpha_total = ops.like(regions[0].face, np.zeros((y1 - y0, x1 - x0), np.float32))
    for face in regions:
        # "Over" compositing in premultiplied form: a later face covers earlier ones by its alpha.
        inside = np.s_[face.region[0].start - y0:face.region[0].stop - y0, face.region[1].start - x0:face.region[1].stop - x0]
        alpha = face.alpha
        premultiplied[inside] = premultiplied[inside] * (1 - alpha[..., None]) + alpha[..., None] * face.face
        alpha_total[inside] = alpha_total[inside] * (1 - alpha) + alpha
    covered = alpha_total > 0
    layer = premultiplied / xp.where(covered, alpha_total, ops.constant(alpha_total, 1.0))[..., None]
    return np.s_[y0:y1, x0:x1], layer, alpha_total


def face_layer(frame_shape: tuple, restored_faces: Sequence[tuple[AlignedFace, object]], originals=None,
               grain_std: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The restored faces as one frame-sized layer (numpy): (RGB float32 H x W x 3, alpha H x W); a
    frame becomes frame + alpha (layer - frame), untouched where alpha is 0 (face_regions's arguments)."""
    layer = np.zeros((*frame_shape[:2], 3), np.float32)
    alpha = np.zeros(frame_shape[:2], np.float32)
    for region, region_layer, region_alpha in composite(face_regions(frame_shape, restored_faces, originals, grain_std)):
        layer[region], alpha[region] = ops.to_numpy(region_layer), ops.to_numpy(region_alpha)
    return layer, alpha


def paste_back(frame: np.ndarray, restored_faces: Sequence[tuple[AlignedFace, np.ndarray]]) -> np.ndarray:
    """A copy of the uint8 RGB frame with each (aligned face, restored uint8 crop) pair blended in."""
    check_rgb_image(frame, "frame")
    for _, restored in restored_faces:
        check_rgb_image(restored, "restored crop")
    layer, alpha = face_layer(frame.shape, [(aligned, restored.astype(np.float32)) for aligned, restored in restored_faces])
    current = frame.astype(np.float32)
    blended = np.clip(np.round(current + alpha[..., None] * (layer - current)), 0, 255).astype(np.uint8)
    return np.where(alpha[..., None] > 0, blended, frame)


def frame_matte(frame_shape: tuple, aligned: AlignedFace) -> np.ndarray:
    """The face's matte warped into a frame of this shape (float32 H x W, 0..1); paste-back changes no pixel where it is 0."""
    full = np.zeros(frame_shape[:2], dtype=np.float32)
    matte, reach = _matte(aligned.landmarks, aligned.transform.size)
    where = matte_region(reach, aligned, frame_shape)
    if where is not None:
        region, to_region = where
        size = (region[0].stop - region[0].start, region[1].stop - region[1].start)
        full[region] = ops.affine(matte[None, ..., None], to_region, size, ops.LINEAR, ops.CONSTANT)[0, ..., 0]
    return full
