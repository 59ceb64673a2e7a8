"""Measures of a restored face sequence: flicker, identity, fidelity (numpy arrays in, numbers out).

Used by the per-track guards (film_restore.guards), the report, the tests and bench/film_look.py.

flicker     how much a sequence changes from frame to frame beyond the motion of the *input*:
            optical flow (OpenCV DIS) of the input from frame t to t-1, pixels that fail a
            forward-backward check (occlusions, flow errors) dropped, then
            mean |x_t - warp(x_{t-1})| over the face; `flicker` gives it for the input and the
            output and their ratio (output / input: above 1, the restoration adds change the
            film does not have).
identity    cosine similarity of face embeddings to an actor's reference centroid (or, for a
            face of nobody, of the restored face to its own input).
fidelity    PSNR and SSIM of a face region against a clean source (dmdnet.metrics), and the
            mean change a restoration made inside a region.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dmdnet.metrics import psnr, ssim

# Flow is computed on frames no larger than this side: enough for faces, and cheap.
FLOW_SIDE = 256
# Forward-backward check (Sundaram et al. 2010, as in Lai et al. 2018): a pixel whose
# round trip t -> t+k -> t misses by more than this, relative to its motion, is occluded.
FB_RELATIVE = 0.01
FB_ABSOLUTE = 0.5  # squared pixels
# steady_share's bisections (the share is found to 2^-16) and its tolerance on the mean
# |change| (levels): float rounding of a restorer that changes nothing must not hold it.
STEADY_BISECTIONS = 16
STEADY_TOLERANCE = 1e-4


def gray(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0, 255).astype(np.uint8) if image.dtype != np.uint8 else image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _dis():
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image sampled at x + flow(x) (float32): a frame brought onto the grid of the frame the flow starts from."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image.astype(np.float32), grid_x + flow[..., 0], grid_y + flow[..., 1],
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def flow_pair(a: np.ndarray, b: np.ndarray, side: int = FLOW_SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(flow a->b, valid in a, flow b->a, valid in b) of two RGB images of one size, at full size,
    computed on the images shrunk to at most `side` pixels.

    valid: bool H x W, False where the forward-backward check fails (occluded or mistracked).
    """
    height, width = a.shape[:2]
    scale = min(1.0, side / max(height, width))
    small = (max(round(width * scale), 8), max(round(height * scale), 8))
    gray_a, gray_b = (cv2.resize(gray(image), small, interpolation=cv2.INTER_AREA) for image in (a, b))
    dis = _dis()
    forward = dis.calc(gray_a, gray_b, None)
    backward = dis.calc(gray_b, gray_a, None)

    def valid(there: np.ndarray, back: np.ndarray) -> np.ndarray:
        back_there = warp(back, there)
        miss = ((there + back_there) ** 2).sum(-1)
        return miss <= FB_RELATIVE * ((there**2).sum(-1) + (back_there**2).sum(-1)) + FB_ABSOLUTE

    valid_a, valid_b = valid(forward, backward), valid(backward, forward)
    if scale == 1.0:
        return forward, valid_a, backward, valid_b

    def full(flow):
        return cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR) * np.float32((width / small[0] + height / small[1]) / 2)

    def full_mask(mask):
        return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)

    return full(forward), full_mask(valid_a), full(backward), full_mask(valid_b)


@dataclass(frozen=True)
class Flicker:
    """Mean frame-to-frame change (levels) of the input and the output along the input's flow, and output / input."""

    input: float
    output: float

    @property
    def ratio(self) -> float:
        return self.output / self.input if self.input > 0 else (1.0 if self.output == 0 else float("inf"))


def temporal_changes(inputs: np.ndarray, outputs: np.ndarray, mask: np.ndarray | None = None,
                     backward_flows=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per consecutive pair (t-1, t): (sum |in change|, sum |out change|, weight) over the face's consistent pixels.

    inputs, outputs: N x H x W x 3 (uint8 or float, 0..255); mask: H x W or N x H x W weights
    (1 inside the face), default everywhere. backward_flows: optional N-1 (flow t->t-1, valid)
    pairs already computed on the inputs. Returns three arrays of N-1 values; a mean change is
    sum / weight (the change is averaged over the three channels).
    """
    if len(inputs) != len(outputs) or inputs.shape[1:3] != outputs.shape[1:3]:
        raise ValueError(f"flicker needs inputs and outputs of one shape, got {inputs.shape} and {outputs.shape}")
    count = max(len(inputs) - 1, 0)
    sums_in, sums_out, weights = np.zeros(count), np.zeros(count), np.zeros(count)
    for t in range(1, len(inputs)):
        if backward_flows is None:
            flow, valid, _, _ = flow_pair(inputs[t], inputs[t - 1])
        else:
            flow, valid = backward_flows[t - 1]
        weight = valid.astype(np.float32)
        if mask is not None:
            weight = weight * (mask[t] if mask.ndim == 3 else mask)
        for sums, frames in ((sums_in, inputs), (sums_out, outputs)):
            change = np.abs(frames[t].astype(np.float32) - warp(frames[t - 1], flow)).mean(-1)
            sums[t - 1] = float((change * weight).sum())
        weights[t - 1] = float(weight.sum())
    return sums_in, sums_out, weights


def flicker(inputs: np.ndarray, outputs: np.ndarray, mask: np.ndarray | None = None, backward_flows=None) -> Flicker:
    """The flicker of outputs against inputs over a sequence (see temporal_changes for the arguments)."""
    sums_in, sums_out, weights = temporal_changes(inputs, outputs, mask, backward_flows)
    total = weights.sum()
    if total == 0:
        return Flicker(0.0, 0.0)
    return Flicker(float(sums_in.sum() / total), float(sums_out.sum() / total))


def steady_share(input_change: np.ndarray, output_change: np.ndarray) -> float:
    """The largest share s (0..1) of a restoration that leaves a face changing from frame to frame
    no more than its input: input + s (output - input) has mean |change| at most the input's
    (give or take STEADY_TOLERANCE, below any output's precision).

    input_change, output_change: the frame-to-frame changes of one face's input and output at the
    same samples (along the input's flow, as flicker measures them). 1 where the output changes
    no more than the input; s = 0 gives the input back. The mean |change| is convex in s, so the
    shares that qualify run from 0 to the one found here."""
    input_change = np.asarray(input_change, np.float32)
    difference = np.asarray(output_change, np.float32) - input_change
    if not input_change.size:
        raise ValueError("steady_share needs the changes of at least one sample")
    target = float(np.abs(input_change).mean()) + STEADY_TOLERANCE

    def mean_change(share: float) -> float:
        return float(np.abs(input_change + np.float32(share) * difference).mean())

    if mean_change(1.0) <= target:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(STEADY_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_change(middle) <= target else (low, middle)
    return low


def identity(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit embeddings (N x d) to a unit reference (d, or N x d: one per face)."""
    embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
    reference = np.asarray(reference, dtype=np.float32)
    if reference.shape[-1] != embeddings.shape[1]:
        raise ValueError(f"embeddings of size {embeddings.shape[1]} against a reference of size {reference.shape[-1]}: use one recogniser")
    return (embeddings * reference).sum(-1) if reference.ndim == 2 else embeddings @ reference


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
