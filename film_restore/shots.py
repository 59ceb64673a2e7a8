"""Shots (frame-accurate hard cuts) from one cheap signature per frame, and chunks of whole shots.

The film is scanned once: every decoded frame gives a `frame_signature` (a few hundred
floats), and `find_shots` works on the N x D array of them, so no frame is decoded twice.

Signature (float32, `SIGNATURE_SIZE` values): a 16 x 16 grey thumbnail (values in [0, 1])
then an HSV colour histogram of a 64 x 64 thumbnail: hue (12 bins, each pixel weighted by
its chroma, so grey and dark pixels, whose hue is noise, add little), chroma (saturation x
value, 4 bins) and value (16 bins), each group summing to at most 1.

Distance between two frames, in [0, 1] (`signature_distance`), the mean of:
- structure: (1 - correlation) / 2 of the grey thumbnails (Pearson correlation with a small
  stabilising constant, FLAT_CONTRAST, so near-black frames of a fade compare as alike
  rather than by their noise). Correlation ignores a change of brightness or contrast, so film flicker and exposure changes do not count;
  a thumbnail this small ignores grain, and a talking head or a slow camera move keeps
  most of its layout from one frame to the next.
- colour: half the L1 distance of the three histograms, averaged. Different shots rarely
  share both layout and colours, and the histogram ignores where things are.

A cut at frame i (frame i starts a new shot) is a difference d[i] between frames i - 1 and
i that is an outlier for its neighbourhood, an adaptive threshold:
    d[i] >= CUT_MIN_DISTANCE  and  d[i] >= CUT_RATIO * local + CUT_MARGIN
where local is the median of the differences within LOCAL_WINDOW frames on each side,
leaving out d[i] and its immediate neighbours (a flash or the cut itself makes those high
too). Fast motion or a shaky camera raises the local median for a while and so raises the
bar with it; a still scene lowers it, so a cut between two similar shots is still found.

Flashes: a short bright (or dark) burst of FLASH_MAX_FRAMES frames or fewer gives two
jumps, into and out of it. A jump into frame i whose "before" frame (i - 1) is matched
again by one of the FLASH_MAX_FRAMES frames after frame i (distance below CUT_MIN_DISTANCE
and below FLASH_RETURN_FRACTION of the jump) is not a cut, and neither is the jump back: the
flash stays inside its shot. The price is that a shot of 1-2 frames cut in between two
halves of one shot (a subliminal insert) is not split out either. A flash on the first or
last frame of a shot, next to a cut, is not recognised: the cut is found at the right
frame, and the flashed frame becomes a shot of its own (a strong flash clips the frame,
and nothing cheap tells reliably which side of the cut it belongs to).

Gradual transitions (fades, dissolves, wipes) are not cuts: each step is small against its
neighbours, so they stay inside one shot (or end where a hard jump happens during them).
A face track may then run into a dissolve while its face fades; the embedding check of the
tracker keeps it from continuing onto the incoming shot's face.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from film_restore.records import Chunk, Shot

THUMBNAIL_SIDE = 16       # grey structure thumbnail (16 x 16): layout, not grain
HISTOGRAM_SIDE = 64       # thumbnail the colour histograms are counted on (4096 pixels)
HUE_BINS, CHROMA_BINS, VALUE_BINS = 12, 4, 16
SIGNATURE_SIZE = THUMBNAIL_SIDE**2 + HUE_BINS + CHROMA_BINS + VALUE_BINS

# Adaptive threshold (see the module docstring); distances are in [0, 1]. Chosen on the
# shared clips: within a shot consecutive frames differ by 0.001-0.004 (median) and at
# most 0.014 in the seven talking-head clips, at most 0.033 in the flickering old film,
# about 0.1 in a very fast pan (a tenth of the frame width per frame) and up to 0.13 in a
# fade through black; cuts between any two of the clips measure 0.19-0.56.
CUT_MIN_DISTANCE = 0.10   # never a cut below this, however still the neighbourhood
CUT_RATIO = 4.0           # ... and at least this many times the local median difference
CUT_MARGIN = 0.05         # ... plus this, so a near-zero median (a frozen frame) is no trigger
LOCAL_WINDOW = 12         # frames each side for the local median (half a second at 24 fps)
FLASH_MAX_FRAMES = 2      # longest burst (frames) that is taken for a flash, not a shot
FLASH_RETURN_FRACTION = 0.5
FLAT_CONTRAST = 0.02      # grey-level spread (of 1) below which a thumbnail counts as flat


def frame_signature(rgb: np.ndarray) -> np.ndarray:
    """The per-frame descriptor find_shots works on (SIGNATURE_SIZE float32), for a uint8 RGB frame.

    Cheap at any frame size: everything but the first resize works on 64 x 64 pixels.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"frame must be a uint8 H x W x 3 RGB array, got {rgb.dtype} {rgb.shape}")
    # Large frames are first sampled down bilinearly to 4 x the thumbnail side (0.2 ms at
    # 1080p, where an area resize of the whole frame takes 15 ms); the area resize after
    # that still averages 16 samples into each thumbnail pixel, which is what keeps grain out.
    rgb = np.ascontiguousarray(rgb)
    side = 4 * HISTOGRAM_SIDE
    if min(rgb.shape[0], rgb.shape[1]) > side:
        rgb = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(rgb, (HISTOGRAM_SIDE, HISTOGRAM_SIDE), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    thumbnail = cv2.resize(grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    pixels = float(len(hsv))
    # Chroma (saturation x value, i.e. max - min of R, G, B) rather than saturation: the
    # hue and saturation of a dark pixel are noise, and a fade would move them all at once.
    chroma = hsv[:, 1] * hsv[:, 2] / (255.0 * 255.0)
    hue = np.bincount(np.minimum((hsv[:, 0] * HUE_BINS / 180.0).astype(np.int64), HUE_BINS - 1),
                      weights=chroma, minlength=HUE_BINS) / pixels
    chroma = np.bincount(np.minimum((chroma * CHROMA_BINS).astype(np.int64), CHROMA_BINS - 1),
                         minlength=CHROMA_BINS) / pixels
    value = np.bincount(np.minimum((hsv[:, 2] * VALUE_BINS / 256.0).astype(np.int64), VALUE_BINS - 1),
                        minlength=VALUE_BINS) / pixels
    return np.concatenate([thumbnail.reshape(-1) / 255.0, hue, chroma, value]).astype(np.float32)


def signature_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances in [0, 1] between signatures a and b (D, or N x D each, row by row)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    t = THUMBNAIL_SIDE**2
    structure = (1.0 - _correlation(a[:, :t], b[:, :t])) / 2.0
    groups = np.cumsum([t, HUE_BINS, CHROMA_BINS, VALUE_BINS])
    colour = np.mean([np.abs(a[:, lo:hi] - b[:, lo:hi]).sum(axis=1) / 2.0
                      for lo, hi in zip(groups[:-1], groups[1:])], axis=0)
    return (structure + colour) / 2.0


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    # A stabilising constant, as in SSIM: two flat frames (black frames of a fade) correlate
    # fully instead of comparing their noise, a flat frame and a textured one hardly at
    # all; frames with any real contrast are unaffected (their squared norms are ~10).
    c = FLAT_CONTRAST**2 * a.shape[1]
    return ((a * b).sum(axis=1) + c) / np.sqrt(((a * a).sum(axis=1) + c) * ((b * b).sum(axis=1) + c))


def frame_differences(signatures: np.ndarray) -> np.ndarray:
    """d (N floats): d[i] is the distance between frames i - 1 and i; d[0] = 0."""
    signatures = _check_signatures(signatures)
    differences = np.zeros(len(signatures))
    if len(signatures) > 1:
        differences[1:] = signature_distance(signatures[:-1], signatures[1:])
    return differences


def find_cuts(signatures: np.ndarray) -> list[int]:
    """Frames that start a new shot (hard cuts), ascending; 0 is not listed."""
    signatures = _check_signatures(signatures)
    d = frame_differences(signatures)
    n = len(d)
    cuts = []
    for i in range(1, n):
        if d[i] < CUT_MIN_DISTANCE:
            continue
        neighbours = np.concatenate([d[max(1, i - LOCAL_WINDOW):max(1, i - 1)], d[i + 2:i + 2 + LOCAL_WINDOW]])
        local = float(np.median(neighbours)) if len(neighbours) else 0.0
        if d[i] < CUT_RATIO * local + CUT_MARGIN:
            continue
        if _is_transient(signatures, d, i):
            continue
        cuts.append(i)
    return cuts


def _is_transient(signatures: np.ndarray, d: np.ndarray, i: int) -> bool:
    """Whether the jump into frame i is into or out of a short burst (a flash) rather than a cut."""
    limit = min(CUT_MIN_DISTANCE, FLASH_RETURN_FRACTION * d[i])
    # Into a flash: frame i - 1 comes back within FLASH_MAX_FRAMES + 1 frames.
    later = signatures[i + 1:i + 1 + FLASH_MAX_FRAMES]
    if len(later) and signature_distance(signatures[i - 1], later).min() < limit:
        return True
    # Out of a flash: frame i matches a frame just before the burst.
    start = max(0, i - 1 - FLASH_MAX_FRAMES)
    earlier = signatures[start:i - 1]
    return bool(len(earlier)) and signature_distance(signatures[i], earlier).min() < limit


def find_shots(signatures: np.ndarray) -> list[Shot]:
    """Shots between hard cuts, covering frames 0..N-1 in order (see the module docstring)."""
    signatures = _check_signatures(signatures)
    n = len(signatures)
    if n == 0:
        return []
    starts = [0] + find_cuts(signatures)
    ends = [start - 1 for start in starts[1:]] + [n - 1]
    return [Shot(index, first, last) for index, (first, last) in enumerate(zip(starts, ends))]


def chunk_shots(shots: Sequence[Shot], target_frames: int) -> list[Chunk]:
    """Consecutive whole shots grouped into chunks of about target_frames frames each.

    Shots are added to the current chunk while it stays within target_frames, or while
    adding the shot lands closer to the target than stopping short of it would; a shot
    longer than the target is a chunk by itself. Shots are never split.
    """
    if not isinstance(target_frames, (int, np.integer)) or target_frames < 1:
        raise ValueError(f"target_frames must be a positive integer, got {target_frames!r}")
    chunks: list[Chunk] = []
    current: list[Shot] = []
    size = 0
    for shot in shots:
        length = len(shot.frames)
        if current and (length > target_frames or size + length - target_frames > target_frames - size):
            chunks.append(Chunk(len(chunks), tuple(current)))
            current, size = [], 0
        current.append(shot)
        size += length
        if size >= target_frames:
            chunks.append(Chunk(len(chunks), tuple(current)))
            current, size = [], 0
    if current:
        chunks.append(Chunk(len(chunks), tuple(current)))
    return chunks


def _check_signatures(signatures) -> np.ndarray:
    signatures = np.asarray(signatures, dtype=np.float32)
    if signatures.ndim != 2 or (len(signatures) and signatures.shape[1] != SIGNATURE_SIZE):
        raise ValueError(f"signatures must be N x {SIGNATURE_SIZE} (one frame_signature per row), got {signatures.shape}")
    return signatures
