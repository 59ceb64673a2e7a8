"""Measures of restored faces: flicker, identity, texture and fidelity (arrays in, numbers out).

Used by the guards (finish.guards), the hold-still and the grain, the report, the tests and the benches.

flicker     how much a sequence changes from frame to frame beyond the motion of the *input*:
            optical flow of the input from frame t to t-1 (finish.flow), pixels that fail its
            forward-backward check dropped, then mean |x_t - warp(x_{t-1})| over the face;
            `flicker` gives it for the input and the output and their ratio (output / input:
            above 1, the restoration adds change the film does not have). Along DIS flow, or
            along Farneback's (flow="farneback"): a second opinion that shares neither the
            flow nor its occlusions with the first.
identity    cosine similarity of face embeddings to an actor's reference centroid (or, for a
            face of nobody, of the restored face to its own input).
texture     the relative texture of a face: std of fine detail (high-pass luma) inside the
            central face over that in a ring around it; output over input is 1 where the face
            keeps its texture relative to the untouched frame around it.
fidelity    PSNR and SSIM of a face region against a clean source (dmdnet.metrics), and the
            mean change a restoration made inside a region.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from dmdnet.metrics import psnr, ssim
from film_restore.finish import ops
from film_restore.finish.colour import luma
from film_restore.finish.flow import image_flow
from film_restore.finish.landmarks import face_outline, face_width

# The texture measure's high-pass: luma minus its Gaussian blur of this sigma (frame
# pixels), i.e. detail finer than about three pixels, where grain and pores live.
HIGH_PASS_SIGMA = 1.0
# The central face: the landmark hull shrunk by this fraction of the face width (away
# from the matte's feathered edge).
CENTRAL_FACE_SHRINK = 0.15
# The ring: frame pixels this far (fractions of the face width) outside the landmark hull
# with the forehead lifted by RING_FOREHEAD_LIFT of the brow-to-chin height, more than
# finish.paste.FOREHEAD_LIFT, so the ring is never inside a matte.
RING_DISTANCE = (0.1, 0.35)
RING_FOREHEAD_LIFT = 0.6
CHANNEL_MEAN = np.full(3, 1 / 3, np.float32)


def fine_detail(rgb):
    """The texture measure's high-pass luma (float32 H x W; numpy, or a torch tensor ... x H x W): luma less its HIGH_PASS_SIGMA blur."""
    y = luma(rgb)
    if ops.is_numpy(y):
        return y - cv2.GaussianBlur(y, (0, 0), HIGH_PASS_SIGMA, borderType=cv2.BORDER_REFLECT)
    flat = y.reshape(-1, *y.shape[-2:])[..., None]
    return y - ops.blur(flat, HIGH_PASS_SIGMA, ops.REFLECT)[..., 0].reshape(y.shape)


# ---- flicker

@dataclass(frozen=True)
class Flicker:
    """Mean frame-to-frame change (levels) of the input and the output along the input's flow, and output / input."""

    input: float
    output: float

    @property
    def ratio(self) -> float:
        return self.output / self.input if self.input > 0 else (1.0 if self.output == 0 else float("inf"))


def channel_mean_change(now, then):
    """|now - then| averaged over the three channels (... x H x W x 3 -> ... x H x W)."""
    return abs(now - then) @ ops.constant(now, CHANNEL_MEAN)


def temporal_changes(inputs, outputs, mask=None, backward_flows=None, stride: int = 1, flow: str = "dis"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per consecutive pair (t-1, t): (sum |in change|, sum |out change|, weight) over the face's consistent pixels.

    inputs, outputs: N x H x W x 3 (uint8 or float, 0..255; numpy, or torch tensors); mask: H x W
    or N x H x W weights (1 inside the face), default everywhere. backward_flows: optional N-1
    (flow t->t-1, valid) pairs (numpy) already computed on the inputs, else computed by the flow
    method (finish.flow.FLOW_METHODS). stride: measured on every stride-th pixel each way. Returns three numpy arrays of N-1 values; a mean change is sum /
    weight (the change is averaged over the three channels).
    """
    if len(inputs) != len(outputs) or inputs.shape[1:3] != outputs.shape[1:3]:
        raise ValueError(f"flicker needs inputs and outputs of one shape, got {tuple(inputs.shape)} and {tuple(outputs.shape)}")
    if len(inputs) < 2:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    if backward_flows is None:
        host = ops.to_numpy(inputs)
        backward_flows = [image_flow(host[t - 1], host[t], method=flow) for t in range(1, len(inputs))]
    every = np.s_[::stride, ::stride]
    flows = np.stack([flow for flow, _ in backward_flows])
    points = ops.like(inputs, (flows + ops.grid(flows))[:, every[0], every[1]])
    weight = np.stack([valid[every] for _, valid in backward_flows]).astype(np.float32)
    if mask is not None:
        mask = ops.to_numpy(mask)
        weight = weight * (mask[1:, every[0], every[1]] if mask.ndim == 3 else mask[every])
    weight = ops.like(inputs, weight)
    xp = ops.namespace(points)
    sums = []
    for frames in (inputs, outputs):
        frames = ops.as_float(frames)
        change = channel_mean_change(frames[1:, every[0], every[1]], ops.sample(frames[:-1], points))
        sums.append(ops.to_numpy(xp.sum(change * weight, axis=(1, 2))).astype(np.float64))
    return sums[0], sums[1], ops.to_numpy(xp.sum(weight, axis=(1, 2))).astype(np.float64)


def flicker(inputs, outputs, mask=None, backward_flows=None, flow: str = "dis") -> Flicker:
    """The flicker of outputs against inputs over a sequence (see temporal_changes for the arguments)."""
    sums_in, sums_out, weights = temporal_changes(inputs, outputs, mask, backward_flows, flow=flow)
    total = weights.sum()
    if total == 0:
        return Flicker(0.0, 0.0)
    return Flicker(float(sums_in.sum() / total), float(sums_out.sum() / total))


@dataclass(frozen=True, eq=False)
class ChangeSamples:
    """One face's change from frame to frame over consecutive frames, before and after restoration,
    per sample (N x 3, along the input's flow where the masks are set, as flicker measures it), and
    the flow's offsets there (N x 2 pixels: the grain's interpolation depends on them)."""

    input: np.ndarray
    output: np.ndarray
    offsets: np.ndarray

    def kept(self, share: float) -> "ChangeSamples":
        """The change with only this share of the restoration (input + share (output - input): warping is linear)."""
        return replace(self, output=self.input + np.float32(share) * (self.output - self.input))


def change_samples(inputs, outputs, masks, flows, stride: int = 1) -> ChangeSamples | None:
    """The ChangeSamples of consecutive same-size RGB pictures of one face (numpy, or tensors), before
    and after restoration, where masks (bool) are set, on every stride-th pixel each way; flows: each
    later picture's (flow to the one before, valid) on that grid, of the pictures' kind and device
    (finish.flow.flows_in_frame). None for fewer than two pictures or no sample the flow follows."""
    changes = ([], [], [])
    for t in range(1, len(inputs)):
        flow, valid = flows[t - 1]
        counting = valid & masks[t][::stride, ::stride]
        if not bool(ops.namespace(counting).any(counting)):
            continue
        points = flow[None] + ops.grid(flow[None]) * np.float32(stride)
        for samples, pictures in zip(changes, (inputs, outputs)):
            now, then = ops.as_float(pictures[t][::stride, ::stride]), ops.as_float(pictures[t - 1])
            samples.append(ops.to_numpy((now - ops.sample(then[None], points)[0])[counting]))
        changes[2].append(ops.to_numpy(flow[counting]))
    if not changes[0]:
        return None
    return ChangeSamples(*(np.concatenate(samples) for samples in changes))


# ---- identity

def identity(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit embeddings (N x d) to a unit reference (d, or N x d: one per face)."""
    embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
    reference = np.asarray(reference, dtype=np.float32)
    if reference.shape[-1] != embeddings.shape[1]:
        raise ValueError(f"embeddings of size {embeddings.shape[1]} against a reference of size {reference.shape[-1]}: use one recogniser")
    return (embeddings * reference).sum(-1) if reference.ndim == 2 else embeddings @ reference


# ---- texture

def texture_regions(frame_shape: tuple, landmarks) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """(window, central face mask, ring mask): boolean masks over frame[window] for 68 frame landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    width = face_width(landmarks)
    ring_hull = face_outline(landmarks, RING_FOREHEAD_LIFT)
    reach = RING_DISTANCE[1] * width + 2
    x0, y0 = np.maximum(np.floor(ring_hull.min(axis=0) - reach).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(ring_hull.max(axis=0) + reach).astype(int), (frame_shape[1], frame_shape[0]))
    shape = (max(y1 - y0, 1), max(x1 - x0, 1))
    offset = np.array([x0, y0], dtype=np.float32)

    def filled(points):
        mask = np.zeros(shape, np.uint8)
        cv2.fillConvexPoly(mask, np.round(points - offset).astype(np.int32), 1)
        return mask

    face = filled(face_outline(landmarks, 0.0))
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


# ---- fidelity

def box_region(image: np.ndarray, box) -> np.ndarray:
    """The pixels of an (x1, y1, x2, y2) box, clipped to the image."""
    height, width = image.shape[:2]
    x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x2, y2 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"the face box {tuple(box)} lies outside the {width} x {height} image")
    return image[y1:y2, x1:x2]


def fidelity(output: np.ndarray, clean: np.ndarray, box) -> tuple[float, float]:
    """(PSNR dB, SSIM on luma) of a frame's face box against the clean frame (uint8 RGB)."""
    a, b = box_region(output, box), box_region(clean, box)
    return psnr(a, b), ssim(a, b)


def mean_change(output: np.ndarray, input: np.ndarray, box) -> float:
    """Mean absolute difference (levels) between output and input inside a box: how much was restored."""
    return float(np.abs(box_region(output, box).astype(np.float32) - box_region(input, box).astype(np.float32)).mean())
