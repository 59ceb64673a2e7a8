"""The optical flow of a face along its track: one flow per neighbouring pair of faces, computed
once on their aligned crops at the face's own size, and shared by every step that follows the face
from frame to frame (the guards' stabilisation and flicker measure, the hold-still, the grain).

OpenCV's DIS flow runs both ways between the two crops' luma, shrunk to the side
the face has in the frame (a face smaller than its crop gains nothing from the crop's extra
pixels) and at most FLOW_SIDE; a forward-backward check marks the pixels it follows. Aligned crops
hold the face still, so what is left to follow is the face's own motion (a mouth, a turn).

Users read a pair's flow on the crop grid they work on (`PairFlow.backward(size)`), two frames
apart by chaining two pairs (`chained`), or in frame pixels over a frame rectangle through the two
faces' alignments (`flows_in_frame`), so the frame-space measures need no flow of their own.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import array_api_compat
import cv2
import numpy as np

from film_restore.faces.align import AlignmentTransform, warp_to_crop
from film_restore.finish import ops

# Flow is computed on crops no larger than this side: enough for faces, and cheap.
FLOW_SIDE = 256
# DIS at full scale with the medium preset's patches, on a sparser patch grid with fewer
# iterations: on a real 1080p close-up's crops at 256 px it warps as well as the medium preset
# (mean warp error 0.725 against 0.726 levels; 97% against 98% of pixels pass the check) at 0.6
# of its cost.
DIS_PATCH_STRIDE = 4
DIS_DESCENT_ITERATIONS = 12
DIS_REFINEMENT_ITERATIONS = 3
# Farneback's polynomial-expansion flow (pyramid of FARNEBACK_LEVELS halvings, FARNEBACK_WINDOW
# pixel averaging window): a method sharing nothing with DIS, for the flicker measure's second opinion.
FARNEBACK_LEVELS = 4
FARNEBACK_WINDOW = 15
# The flows a measure of pictures can follow (image_flow): DIS, or Farneback.
FLOW_METHODS = ("dis", "farneback")
# Forward-backward check (Sundaram et al. 2010, as in Lai et al. 2018): a pixel whose
# round trip t -> t+k -> t misses by more than this, relative to its motion, is occluded.
FB_RELATIVE = 0.01
FB_ABSOLUTE = 0.5  # squared pixels


def gray(image: np.ndarray) -> np.ndarray:
    """uint8 luma of an RGB image (OpenCV's, rounded), the flow's input; a luma image as it is."""
    image = np.clip(image, 0, 255).astype(np.uint8) if image.dtype != np.uint8 else image
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


_THREAD_DIS = threading.local()  # each thread's DIS instances, by setting


def _dis(tuned: bool):
    """DIS flow: tuned for a track's crops, or the medium preset (what the flicker measure of pictures uses).
    One instance per thread and setting, kept: it keeps its buffers (the same flows, cheaper), and
    computes one flow at a time."""
    kept = vars(_THREAD_DIS)
    if tuned not in kept:
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        if tuned:
            dis.setPatchStride(DIS_PATCH_STRIDE)
            dis.setGradientDescentIterations(DIS_DESCENT_ITERATIONS)
            dis.setVariationalRefinementIterations(DIS_REFINEMENT_ITERATIONS)
        kept[tuned] = dis
    return kept[tuned]


def _round_trip_valid(there, back):
    """Where the flows `there` (N x H x W x 2) and the flows `back` from where they land agree (forward-backward
    check; numpy or tensors)."""
    back_there = ops.warp(back, there)
    squared = lambda flow: flow[..., 0] ** 2 + flow[..., 1] ** 2  # noqa: E731 (not .sum(-1): slow over two values)
    return squared(there + back_there) <= FB_RELATIVE * (squared(there) + squared(back_there)) + FB_ABSOLUTE


def flow_side(crop_side: int, scale: float) -> int:
    """The side a pair's flow is computed at: the face's own size in the frame (crop side / scale,
    scale in crop pixels per frame pixel: the frame's pixels the crop covers), at most FLOW_SIDE."""
    return int(max(min(FLOW_SIDE, round(crop_side / max(scale, 1e-6))), 8))


def flow_picture(frame_rgb: np.ndarray, transform: AlignmentTransform, side: int, crop: np.ndarray | None = None) -> np.ndarray:
    """The face's luma aligned as its crop is (transform: frame to crop) on a side x side grid: the crop
    shrunk where it holds that many pixels, else from the frame itself (a crop smaller than the face
    in the frame holds less of it)."""
    if crop is not None and side <= transform.size:
        return cv2.resize(gray(crop), (side, side), interpolation=cv2.INTER_AREA) if side < transform.size else gray(crop)
    shrink = side / transform.size
    scaled = AlignmentTransform(transform.matrix * shrink, side)
    return gray(warp_to_crop(frame_rgb, scaled))


def _farneback(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Farneback's flow from the first luma image to the second (first(x) ~ second(x + flow), as DIS)."""
    return cv2.calcOpticalFlowFarneback(first, second, None, 0.5, FARNEBACK_LEVELS, FARNEBACK_WINDOW, 3, 5, 1.1, 0)


def dense_flow(earlier: np.ndarray, later: np.ndarray, size: tuple[int, int], tuned: bool = True, method: str = "dis",
               like=None) -> tuple:
    """(flow later -> earlier, valid, flow earlier -> later, valid) of two same-size RGB images,
    computed on their luma shrunk to size (height, width), in that grid's pixels (method: one of
    FLOW_METHODS; tuned: DIS with the track flow's settings, else DIS's medium preset). like: an
    array whose kind and device the flows are sent to, and checked there (None: numpy)."""
    flows = np.stack(_flows(earlier, later, size, tuned, method))  # back, ahead
    if like is not None:
        flows = ops.like(like, flows)
    valid = _round_trip_valid(flows, flows[[1, 0]])  # both ways checked at once
    return flows[0], valid[0], flows[1], valid[1]


def _flows(earlier: np.ndarray, later: np.ndarray, size: tuple[int, int], tuned: bool, method: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """(flow later -> earlier, flow earlier -> later), as dense_flow, unchecked."""
    if method not in FLOW_METHODS:
        raise ValueError(f"flow method must be one of {', '.join(FLOW_METHODS)}, got {method!r}")
    later_gray, earlier_gray = (cv2.resize(gray(image), size[::-1], interpolation=cv2.INTER_AREA)
                                if image.shape[:2] != size else gray(image) for image in (later, earlier))
    calc = _dis(tuned).calc if method == "dis" else lambda first, second, _: _farneback(first, second)
    return calc(later_gray, earlier_gray, None), calc(earlier_gray, later_gray, None)


@dataclass(eq=False)
class PairFlow:
    """The flow between one track's faces on neighbouring frames, `earlier` and `later`, on the
    flow grid (side x side, over the whole crop): back maps later crop pixels to earlier ones, ahead
    the other way, each with the pixels the forward-backward check passes."""

    back: np.ndarray
    back_valid: np.ndarray
    ahead: np.ndarray
    ahead_valid: np.ndarray
    crop_side: int
    _grids: dict = field(default_factory=dict, repr=False)

    @classmethod
    def between(cls, earlier: np.ndarray, later: np.ndarray, crop_side: int, like=None) -> "PairFlow":
        """The pair's flow from two pictures of the faces aligned as their crops are, at the flow's side
        (flow_picture: from the frames, at the face's own size), for crops of crop_side; like: as
        dense_flow takes it (a GPU node's restored crops: the flow is sent there, checked there and read there)."""
        side = later.shape[0]
        return cls(*dense_flow(earlier, later, (side, side), like=like), crop_side)

    @classmethod
    def of_crops(cls, earlier_crop: np.ndarray, later_crop: np.ndarray, scale: float, like=None) -> "PairFlow":
        """The pair's flow from the two aligned crops themselves, shrunk to the flow's side (where the
        frames are not at hand); scale: crop pixels per frame pixel; like: as dense_flow takes it."""
        crop_side = later_crop.shape[0]
        side = flow_side(crop_side, scale)
        return cls(*dense_flow(earlier_crop, later_crop, (side, side), like=like), crop_side)

    @property
    def side(self) -> int:
        return self.back.shape[0]

    def backward(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(flow later -> earlier, valid) on a size x size grid over the crop, in that grid's pixels."""
        return self._on_grid("back", size)

    def forward(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(flow earlier -> later, valid) on a size x size grid over the crop, in that grid's pixels."""
        return self._on_grid("ahead", size)

    def _on_grid(self, direction: str, size: int) -> tuple:
        if (direction, size) not in self._grids:
            self._grids[direction, size] = on_grid((getattr(self, direction), getattr(self, f"{direction}_valid")), size)
        return self._grids[direction, size]


def flows_in_frame(pairs: list[tuple[PairFlow, AlignmentTransform, AlignmentTransform]], region: tuple[slice, slice],
                   stride: int = 1, like=None) -> list[tuple]:
    """Each pair's (flow, valid) over one rectangle of its later frame (every stride-th pixel each way), in
    frame pixels: where each of its pixels was in the earlier frame, through the two faces' alignments
    (pairs: each pair's flow, its later face's transform, its earlier face's) and the crops' flow (valid:
    the check passes and the pixel lies inside the later crop), each as alone. like: an array whose kind and
    device they are computed on (None: numpy); on a device the pairs are worked on at once."""
    on = np.zeros(0, np.float32) if like is None else like
    # On numpy a batch only makes its temporaries K times larger.
    batches = [[pair] for pair in pairs] if ops.is_numpy(on) else [pairs]
    return [flow for batch in batches for flow in _in_frame(batch, region, stride, on)]


def _in_frame(pairs: list, region: tuple[slice, slice], stride: int, on) -> list[tuple]:
    xp = ops.namespace(on)
    rows, columns = region
    device = array_api_compat.device(on)
    grid_y, grid_x = xp.meshgrid(xp.arange(rows.start, rows.stop, stride, dtype=xp.float64, device=device),
                                 xp.arange(columns.start, columns.stop, stride, dtype=xp.float64, device=device),
                                 indexing="ij")
    # Per pair (K x 1 x 1 each), sent at once: the later face's frame-to-crop matrix, the earlier one's
    # crop-to-frame matrix, the flow's grid pixels per crop pixel and the crop's last pixel.
    table = np.array([[*later.matrix.ravel(), *earlier.inverse.ravel(), pair.side / pair.crop_side, pair.crop_side - 1]
                      for pair, later, earlier in pairs], np.float64)
    table = ops.send(on, np.ascontiguousarray(table.T[:, :, None, None]))
    a, b, c, d, e, f, g, h, i, j, k, l, shrink, last = (table[column] for column in range(len(table)))
    later_x = a * grid_x + b * grid_y + c
    later_y = d * grid_x + e * grid_y + f
    points = xp.stack([xp.astype((later_x + 0.5) * shrink - 0.5, xp.float32),
                       xp.astype((later_y + 0.5) * shrink - 0.5, xp.float32)], axis=-1)
    step = _sampled([ops.like(on, pair.back) for pair, _, _ in pairs], points) / xp.astype(shrink, xp.float32)[..., None]
    valid = _sampled([ops.like(on, pair.back_valid)[..., None] for pair, _, _ in pairs], points, ops.CONSTANT, ops.NEAREST)[..., 0] > 0.5
    valid &= (later_x >= 0) & (later_y >= 0) & (later_x <= last) & (later_y <= last)
    earlier_x, earlier_y = later_x + step[..., 0], later_y + step[..., 1]
    frame_x = g * earlier_x + h * earlier_y + i
    frame_y = j * earlier_x + k * earlier_y + l
    flows = xp.astype(xp.stack([frame_x - grid_x, frame_y - grid_y], axis=-1), xp.float32)
    return [(flows[index], valid[index]) for index in range(len(pairs))]


def _sampled(images: list, points, border: str = ops.REPLICATE, interpolation: str = ops.LINEAR):
    """Each image sampled at its points (K x h x w x 2, as ops.sample): at once, but for tensors of several sizes."""
    xp = ops.namespace(points)
    if len({image.shape for image in images}) == 1:
        return ops.sample(ops.stack(images), points, border, interpolation)
    return xp.concat([ops.sample(image[None], points[index:index + 1], border, interpolation) for index, image in enumerate(images)])


def image_flow(earlier: np.ndarray, later: np.ndarray, side: int = FLOW_SIDE, method: str = "dis") -> tuple[np.ndarray, np.ndarray]:
    """(flow later -> earlier, valid) of two same-size RGB images at their full size, computed on
    them shrunk to at most `side` pixels: for measures of pictures that are not a track's crops
    (method: DIS's medium preset, or Farneback, each with its own forward-backward check)."""
    height, width = later.shape[:2]
    scale = min(1.0, side / max(height, width))
    size = (max(round(height * scale), 8), max(round(width * scale), 8))
    back, valid, _, _ = dense_flow(earlier, later, size, tuned=False, method=method)
    if size == (height, width):
        return back, valid
    stretch = np.float32((width / size[1] + height / size[0]) / 2)
    return (cv2.resize(back, (width, height), interpolation=cv2.INTER_LINEAR) * stretch,
            cv2.resize(valid.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool))


def on_grid(flow: tuple, size: int) -> tuple:
    """(flow, valid) of a side x side grid over the crop brought onto a size x size grid over it, in that
    grid's pixels (numpy or tensors: as they come)."""
    field, valid = flow
    side = field.shape[0]
    if side == size:
        return flow
    if ops.is_numpy(field):
        return (cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR) * np.float32(size / side),
                cv2.resize(valid.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool))
    field = ops.resize(field[None], (size, size), ops.LINEAR)[0] * np.float32(size / side)
    return field, ops.resize(ops.like(field, valid)[None, ..., None], (size, size), ops.NEAREST)[0, ..., 0] > 0.5


def chained(first: tuple, second: tuple) -> tuple:
    """Two flows followed one after the other, (flow a -> b, valid) then (flow b -> c, valid) on
    one grid: (flow a -> c, valid where both are); numpy or tensors."""
    flow_ab, valid_ab = first
    flow_bc, valid_bc = second
    xp = ops.namespace(flow_bc)
    along = ops.warp(xp.concat([flow_bc, ops.like(flow_bc, valid_bc)[..., None]], axis=-1)[None], flow_ab[None])[0]
    return flow_ab + along[..., :2], valid_ab & (along[..., 2] > 0.5)
