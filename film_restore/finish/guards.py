"""Guards on restored faces, per track, in aligned space, training-free: a face never ends worse than it came.

The restoration is handled as a residual, restored minus the face's base, and each guard acts on
it. The base is the input crop fused with its neighbours along the track (track fusion, below),
or with fusion off the input crop itself: then a restorer that returns its input leaves every
face exactly as it was.

track fusion   each face's input crop averaged with its neighbours' (TEMPORAL_RADIUS either side)
               warped onto it along the flow, weighted by a Gaussian in time, the flow's
               forward-backward check, how well the warped (blurred) inputs agree, and how
               well they agree pixel by pixel against what the two differ by on most of the
               crop (the noise), so that occlusions, fast motion, detail the flow does not
               follow exactly and whatever crosses the face keep the frame's own pixels. A
               track holds the same face many times over: the fused base keeps the face and
               loses most of the noise, and it is the base the fidelity guard keeps the low
               band of (with a noisy input, the input's own low band would keep its noise
               there). A fused face less like the actor than its input (the identity guard's
               test) is not used: that face's base is its input.
fidelity       the residual loses the band the input can vouch for (below the input's effective
               resolution, `effective_resolution`, estimated once per track from its first
               RESOLUTION_FACES faces): the restored face re-degraded to that resolution agrees
               with the input. finish.paste's colour match does this for the coarsest scales
               only; this extends it to every frequency the input really has.
stabilisation  a centred (zero-lag) temporal filter of the residual along the input's optical
               flow (Bonneel et al. 2015, Lai et al. 2018, without their training or lag): each
               face's residual is averaged with its neighbours' warped onto it, weighted by a
               Gaussian in time, the flow's forward-backward check and how well the warped
               (blurred) input matches, so occlusions and mistracked pixels (a mouth opening)
               keep their own residual and nothing ghosts. The frame-to-frame part of the
               residual that cancels the input's own frame-to-frame change (noise the restorer
               removed) is kept, locally in proportion; the rest (the restorer's flicker) is
               filtered away. The window ends at the track's ends.
identity       each face's strength (0..1, its share of the residual) is the highest of
               STRENGTH_STEPS at which the face is as like the actor as the input was (within
               IDENTITY_TOLERANCE) (a face of nobody: at least UNKNOWN_SELF_SIMILARITY like its
               own input); along the track each face then gets the lowest of the limits, each
               raised by STRENGTH_SLOPE per face between them: never above any face's limit,
               and never changing by more than STRENGTH_SLOPE from one face to the next (no
               pumping, no step where a window ends).

`TrackGuard` runs the three on one track fed face by face, each face's work done once; a face's
result depends on its track within GUARD_HORIZON faces either side, so a window's faces are
final once the faces that far ahead are restored. `strength` "auto" lets the identity guard
decide per face, a number 0..1 fixes it (the identity guard then only measures). The flows come
from finish.flow, one per neighbouring pair. Arrays are numpy (CPU) or torch tensors (the
restore actor's device), through finish.ops.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

from film_restore.faces.align import ffhq_template
from film_restore.finish import ops
from film_restore.finish.flow import PairFlow, chained, on_grid
from film_restore.finish.measures import CHANNEL_MEAN, channel_mean_change, identity
from film_restore.settings import AUTO

# Stabilisation: neighbours each side and the Gaussian (frames) that weighs them.
TEMPORAL_RADIUS = 2
TEMPORAL_SIGMA = 1.0
# Track fusion: the same neighbours (their flows and agreement are shared), weighed more evenly in
# time: five faces of a steady shot count almost alike, which takes the noise down by about 6 dB.
FUSION_SIGMA = 2.0
# A neighbour's pixel is fused in proportion to exp(-d^2 / 2 (FUSION_TOLERANCE m)^2), d the two
# inputs' difference there (blurred by FUSION_BLUR pixels: noise alone hardly varies from pixel
# to pixel then) and m its mean over the crop where the flow holds: noise differs by about m
# everywhere, an edge the flow misses by a fraction of a pixel, or an occluder, by several m.
FUSION_TOLERANCE = 1.5
FUSION_BLUR = 1.0
# A neighbour's pixel counts in proportion to exp(-d^2 / 2 tau^2), d the difference (levels)
# of the two inputs blurred by MATCH_BLUR x crop side after warping: blur keeps noise
# (sigma 6 -> ~1.5) from vetoing, while a mouth opening or an occlusion differs by tens of levels.
# The blurred inputs are compared at half the crop's resolution, which their blur leaves intact.
MATCH_TOLERANCE = 8.0
MATCH_BLUR = 0.006
# Spatial reach (x crop side) over which the residual's frame-to-frame change is compared
# with the input's, to decide how much of it cancels input noise.
CANCEL_BLUR = 0.02
# Identity guard: the strengths tried, best first. Along a track a face's strength changes by at
# most STRENGTH_SLOPE from its neighbour's (with finish.hold.SHARE_SLOPE, the strength used changes
# by at most 0.1 per frame), so a limit reaches STRENGTH_REACH faces either side.
STRENGTH_STEPS = (1.0, 0.75, 0.5, 0.25, 0.0)
STRENGTH_SLOPE = 0.05
STRENGTH_REACH = int(np.ceil(1 / STRENGTH_SLOPE))
# A named actor's face is held back where restoring it lowers its similarity to the actor by
# more than this: a face's similarity to its actor changes by 0.005-0.012 on average from one
# frame to the next (compact pack, aligned 256 px crops of retalk_2 and liveportrait_d10).
IDENTITY_TOLERANCE = 0.005
# A face of nobody is held back where its restored embedding is less like its input's than this
# (one face in consecutive frames scores 0.97-0.98 against itself on the same clips).
UNKNOWN_SELF_SIMILARITY = 0.8
# Fidelity: the input vouches for frequencies whose power is this many times its noise floor,
# estimated once per track from its first faces (the median over them).
VOUCH_SNR = 4.0
RESOLUTION_FACES = 8
# The guards' flicker measure (reported per track) reads every MEASURE_STRIDE-th pixel each way.
MEASURE_STRIDE = 2
# Why a face was held back (reports count them).
LESS_LIKE_THE_ACTOR = "identity: restored face less like the actor than the input"
UNLIKE_ITSELF = "identity: restored face unlike its own input"
WITH_NEIGHBOURS = "identity: held back with neighbouring faces (strengths smoothed along the track)"
# Faces whose guards' work is done at once on a device (one op for all of them), at most.
DEVICE_GROUP = 8
# Faces either side a face's result depends on (fusion, stabilisation, then the strengths' reach).
GUARD_HORIZON = 2 * TEMPORAL_RADIUS + STRENGTH_REACH


@dataclass
class GuardedFaces:
    """Some of one track's faces guarded, and what the guards measured and decided, per face.

    faces: N float32 S x S x 3 (0..255) final aligned crops (numpy, or tensors on the device the
    restored faces came on; None where only the measures are kept); strength: N (share of the residual used); reasons: N strings
    ("" where the face got the full strength, else one of the phrases above);
    identity_in / identity_out: N cosine similarities (to the actor, or for a face of nobody of
    the output to its own input, the input then 1.0); change_in / change_out / change_weight:
    N sums of the frame-to-frame change from the previous face (0 weight for the first), so
    flicker over any run of faces is sum(change_out) / sum(change_in); resolution: the input's
    effective resolution (fraction of the crop's Nyquist frequency) the fidelity guard used.
    """

    faces: object
    strength: np.ndarray
    reasons: np.ndarray
    identity_in: np.ndarray
    identity_out: np.ndarray
    change_in: np.ndarray
    change_out: np.ndarray
    change_weight: np.ndarray
    resolution: float


def aligned_embedder(recogniser) -> Callable[[object], np.ndarray]:
    """crops (N x S x S x 3 FFHQ-aligned, uint8, or float on the 0..255 scale; numpy, or tensors on a device)
    -> N x d unit embeddings, with a film_restore Recogniser: each crop is brought to the recogniser's template
    (bilinear, in float, then rounded to 8 bits: a float crop equal to a uint8 one gets its embedding), where it
    is (a device sends back only the small crops)."""

    matrices = {}  # crop side -> the alignment to the recogniser's template

    def embed(crops) -> np.ndarray:
        size = recogniser.crop_size
        side = crops.shape[1]
        if side not in matrices:
            matrices[side] = recogniser.alignment(ffhq_template(side))
        small = ops.affine(crops, np.broadcast_to(matrices[side], (len(crops), 2, 3)), (size, size), ops.LINEAR, ops.CONSTANT)
        xp = ops.namespace(small)
        small = ops.to_numpy(xp.clip(xp.round(small), 0, 255)).astype(np.uint8)
        return np.stack([recogniser.aligned_embedding(face) for face in small])

    return embed


@functools.lru_cache(maxsize=2)
def pack_embedder(recogniser_path: str) -> Callable[[object], np.ndarray]:
    """One recogniser per worker process: each chunk's Composer builds guards, and Ray reuses workers."""
    from film_restore.faces.recogniser import Recogniser

    return aligned_embedder(Recogniser(recogniser_path))


def embedder_of(models_dir: str) -> Callable[[object], np.ndarray]:
    """The identity guard's embedder: the recogniser of the face models in models_dir (one per process)."""
    from film_restore.models import find_pack

    return pack_embedder(str(find_pack(models_dir).recogniser))


@functools.lru_cache(maxsize=4)
def face_mask(size: int) -> np.ndarray:
    """Weights (float32 size x size) of the face inside an FFHQ-aligned crop: an ellipse over brows to chin."""
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (round(0.5 * size), round(0.56 * size)), (round(0.3 * size), round(0.38 * size)), 0, 0, 360, 1.0, -1)
    return mask


def effective_resolution(crops: np.ndarray) -> float:
    """The fraction (0..1) of the crops' Nyquist frequency their faces carry above their noise.

    Per crop: the radially averaged power spectrum of the windowed luma; its floor is the
    median power in the top 15% of frequencies (noise, or for a sharp crop still signal);
    the resolution is the highest frequency whose power exceeds VOUCH_SNR times the floor.
    The median over the crops is returned.
    """
    size = crops.shape[1]
    window = np.outer(np.hanning(size), np.hanning(size)).astype(np.float32)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij")
    radius = np.sqrt(fx ** 2 + fy ** 2) / 0.5  # 1 at Nyquist
    bins = np.minimum((radius * 50).astype(int), 50)
    # The half-plane spectrum holds each column but the first and the Nyquist one for two.
    columns = np.full(fx.shape, 2.0)
    columns[:, 0] = 1.0
    if size % 2 == 0:
        columns[:, -1] = 1.0
    counts = np.bincount(bins.ravel(), columns.ravel(), minlength=51)
    estimates = []
    for crop in crops:
        luma = cv2.cvtColor(np.asarray(crop, np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
        luma = (luma - luma.mean()) * window
        power = np.abs(np.fft.rfft2(luma)) ** 2 * columns
        profile = np.bincount(bins.ravel(), power.ravel(), minlength=51)[:50] / np.maximum(counts[:50], 1)
        floor = np.median(profile[42:50])
        above = np.nonzero(profile[1:] > VOUCH_SNR * floor)[0]
        estimates.append((above.max() + 2) / 50 if above.size else 1 / 50)
    return float(min(np.median(estimates), 1.0))


def match_band(residuals, resolution: float):
    """Residuals (N x S x S x 3) without the band below `resolution` (fraction of Nyquist): the input's own there wins.

    A Gaussian low-pass whose response is one half at the cut-off is taken off each residual.
    """
    sigma = 0.375 / max(resolution, 1e-3)  # exp(-2 pi^2 sigma^2 f^2) = 1/2 at f = resolution / 2 cycles/pixel
    return residuals - ops.blur(residuals, sigma)


def wide_blur(planes, sigma: float):
    """A Gaussian blur of this (wide) sigma of N x S x S x C planes, computed at a quarter of their
    resolution where the side allows: what is left of the detail there is far finer than sigma."""
    size = planes.shape[1]
    if size % 4 or sigma < 4:
        return ops.blur(planes, sigma)
    quarter = ops.resize(planes, (size // 4, size // 4), ops.AREA)
    return ops.resize(ops.blur(quarter, sigma / 4), (size, size), ops.LINEAR)


@dataclass
class Links:
    """A face's neighbours along its track (positions, and steps from it), each neighbour's place for
    each of the face's pixels (points: K x S x S x 2, where the neighbour is sampled), how far each pixel
    is to be trusted there (agreement: K x S x S x 1, the flow's check and how well the two blurred
    inputs agree) and, fused, how alike the two inputs are there (likeness: K x S x S x 1, FUSION_TOLERANCE)."""

    neighbours: list[int]
    steps: list[int]
    points: object = None
    agreement: object = None
    likeness: object = None


def _step_weights(like, steps: list[int], sigma: float):
    """Neighbours' weights by how many faces away along the track they are (Gaussian): K x 1 x 1 x 1, of
    like's kind and device."""
    return ops.constant(like, np.exp(-0.5 * (np.array(steps) / sigma) ** 2)[:, None, None, None])


class TrackGuard:
    """The guards of one track (its faces that are restored, in order: positions 0..length-1),
    fed face by face (`add`) and asked for the final faces of some positions (`guard`) once the
    faces GUARD_HORIZON positions beyond them are added (or the track ends). Each face's band
    match, stabilisation, identity limit and embeddings are computed once and kept until `forget`; on a
    device the faces a window needs are worked on DEVICE_GROUP at a time, numpy one at a time (the same values).

    embed: crops (uint8 or float; numpy, or tensors where the faces are) -> unit embeddings
    (aligned_embedder); reference: the actor's unit centroid, None for a face of nobody; strength:
    AUTO or 0..1; resolution: the input's effective resolution (default: estimated from the track's
    first RESOLUTION_FACES faces); fusion: whether each face's base is fused along the track (else its
    input crop).
    """

    def __init__(self, length: int, embed: Callable[[object], np.ndarray], reference: np.ndarray | None,
                 strength: float | str = AUTO, resolution: float | None = None, fusion: bool = True):
        self.length = length
        self.embed = embed
        self.reference = reference
        self.strength = strength
        self.resolution = resolution
        self.fusion = fusion
        self.inputs, self.restored, self.flows = {}, {}, {}  # position -> uint8 crop, float32 crop, PairFlow from the one before
        self.float_inputs, self.guides, self.residuals, self.stabilised, self.finals = {}, {}, {}, {}, {}
        self.links, self.fused, self.bases = {}, {}, {}  # position -> its neighbours along the flow (_links), its fused input, its base
        self.chains = {}  # (position, +-2) -> the flow to the face two positions away (_step_flow)
        self.limits, self.input_embeddings, self.candidates = {}, {}, {}  # candidates: (position, strength) -> embedding

    def add(self, position: int, input_crop: np.ndarray, restored, flow: PairFlow | None) -> None:
        """One face: its uint8 input crop, its restored crop (float32, numpy or a tensor) and the flow
        from the face before it (None for the first)."""
        self.inputs[position] = input_crop
        self.restored[position] = restored
        if flow is not None:
            self.flows[position] = flow

    def forget(self, before: int) -> None:
        """Drops what only faces before this position needed (keeps what later faces still read)."""
        for store in (self.inputs, self.restored, self.flows, self.float_inputs, self.guides, self.residuals, self.stabilised,
                      self.finals, self.limits, self.input_embeddings, self.links, self.fused, self.bases):
            for position in [p for p in store if p < before - GUARD_HORIZON - TEMPORAL_RADIUS]:
                del store[position]
        for key in [key for key in self.candidates if key[0] < before]:
            del self.candidates[key]
        for key in [key for key in self.chains if key[0] < before - GUARD_HORIZON - TEMPORAL_RADIUS]:
            del self.chains[key]

    # ---- per face, once

    def _existing(self, positions) -> list[int]:
        return sorted({p for p in positions if 0 <= p < self.length})

    def _groups(self, positions: list[int]) -> list[list[int]]:
        """The positions in the groups whose faces are worked on together: on a device, DEVICE_GROUP at a
        time (one op for many faces); numpy one by one (nothing to gain, and a face's memory at a time)."""
        if not positions:
            return []
        size = 1 if ops.is_numpy(self.restored[positions[0]]) else DEVICE_GROUP
        return [positions[start:start + size] for start in range(0, len(positions), size)]

    def _residuals(self, positions: list[int]) -> None:
        missing = [p for p in positions if p not in self.residuals]
        if not missing:
            return
        if self.resolution is None:
            first = [self.inputs[p] for p in range(min(RESOLUTION_FACES, self.length)) if p in self.inputs]
            self.resolution = effective_resolution(np.stack(first))
        self._bases(missing)
        for group in self._groups(missing):
            xp = ops.namespace(self.restored[group[0]])
            residuals = xp.stack([self.restored[p] - self._base(p) for p in group])
            for position, residual in zip(group, match_band(residuals, self.resolution)):
                self.residuals[position] = residual

    def _step_flow(self, position: int, step: int, size: int) -> tuple:
        """(flow from this face to the one `step` positions away, valid) on a size x size grid over the crop
        (of the flows' kind: numpy, or tensors on the restorer's device)."""
        if step == -1:
            return self.flows[position].backward(size)
        if step == 1:
            return self.flows[position + 1].forward(size)
        if (position, step) not in self.chains:  # two frames apart: two pairs chained, on the nearer pair's grid
            if step == -2:
                native = self.flows[position].side
                flow = chained(self.flows[position].backward(native), self.flows[position - 1].backward(native))
            else:
                native = self.flows[position + 1].side
                flow = chained(self.flows[position + 1].forward(native), self.flows[position + 2].forward(native))
            self.chains[position, step] = flow
        return on_grid(self.chains[position, step], size)

    def _links(self, position: int) -> "Links":
        """The face's neighbours within TEMPORAL_RADIUS and how far to trust each pixel of them (kept)."""
        if position not in self.links:
            self._link([position])
        return self.links[position]

    def _link(self, positions: list[int]) -> None:
        """The Links of these faces (and, fused, their inputs fused with their neighbours'): each pair of a
        face and a neighbour is worked on with the others at once, each face's sums in a fixed order."""
        picture = self._float_input(positions[0])
        xp = ops.namespace(picture)
        size = picture.shape[0]
        half = self._guide(positions[0]).shape[0]
        pairs = [(position, step) for position in positions for step in range(-TEMPORAL_RADIUS, TEMPORAL_RADIUS + 1)
                 if step and 0 <= position + step < self.length]
        if pairs:
            coarse = [self._step_flow(position, step, half) for position, step in pairs]
            guides = ops.warp(xp.stack([self._guide(p + step) for p, step in pairs]), xp.stack([ops.like(picture, f) for f, _ in coarse]))
            mismatch = abs(xp.stack([self._guide(p) for p, _ in pairs]) - guides) @ ops.constant(picture, CHANNEL_MEAN)
            valid = xp.stack([ops.like(picture, v) for _, v in coarse])
            agreement = valid * xp.exp(-0.5 * (mismatch / MATCH_TOLERANCE) ** 2)
            if half != size:
                agreement = ops.resize(agreement[..., None], (size, size), ops.LINEAR)[..., 0]
            flows = xp.stack([ops.like(picture, self._step_flow(p, step, size)[0]) for p, step in pairs])
            points = flows + ops.grid(flows)
            if self.fusion:
                there = ops.sample(xp.stack([self._float_input(p + step) for p, step in pairs]), points)
                likeness = self._likeness(xp.stack([self._float_input(p) for p, _ in pairs]), there, agreement)
        for position in positions:
            ours = [k for k, (p, _) in enumerate(pairs) if p == position]
            steps = [pairs[k][1] for k in ours]
            links = Links([position + step for step in steps], steps)
            fused_sum, fused_total = self._float_input(position), 1.0  # the face fused with its neighbours (_base)
            if ours:
                kept = np.s_[ours[0]:ours[-1] + 1]
                links.points, links.agreement = points[kept], agreement[kept][..., None]
                if self.fusion:
                    links.likeness = likeness[kept]
                    weights = links.agreement * links.likeness * _step_weights(picture, steps, FUSION_SIGMA)
                    fused_sum, fused_total = ops.added(fused_sum, there[kept], weights), ops.added(xp.ones_like(weights[0]), weights)
            self.links[position] = links
            if self.fusion:
                self.fused[position] = fused_sum / fused_total

    def _likeness(self, pictures, there, agreement):
        """How alike (0..1, K x S x S x 1) K faces' inputs and their neighbours' warped onto them (there) are,
        pixel by pixel, against their mean difference where the flow holds (agreement, K x S x S: FUSION_TOLERANCE)."""
        xp = ops.namespace(there)
        difference = abs(pictures - there) @ ops.constant(there, CHANNEL_MEAN)
        difference = ops.blur(difference[..., None], FUSION_BLUR)
        typical = xp.sum(difference[..., 0] * agreement, axis=(1, 2)) / (xp.sum(agreement, axis=(1, 2)) + 1e-6) + 1e-3
        return xp.exp(-0.5 * (difference / (FUSION_TOLERANCE * typical[:, None, None, None])) ** 2)

    def _base(self, position: int):
        """The face's base (kept): its input fused with its neighbours' along the track (see the module
        notes), or with fusion off its input."""
        if not self.fusion:
            return self._float_input(position)
        if position not in self.bases:
            self._bases([position])
        return self.bases[position]

    def _bases(self, positions: list[int]) -> None:
        if not self.fusion:
            return
        missing = [p for p in positions if p not in self.bases and p not in self.links]
        for group in self._groups(missing):
            self._link(group)
        # A fused input less like the actor than the input itself (the identity guard's test) is not used.
        unset = [p for p in positions if p not in self.bases]
        embeddings = self._embedded(unset, self.fused.__getitem__)
        self._input_embeddings(unset)
        for position in unset:
            fused = self.fused.pop(position)
            as_like = self._similarity(position, embeddings[position]) >= self._floor(position)
            self.bases[position] = fused if as_like else self._float_input(position)

    def _embedded(self, positions: list[int], face: Callable[[int], object]) -> dict[int, np.ndarray]:
        """position -> the embedding of face(position), the faces embedded a group at a time (_groups)."""
        embeddings = {}
        for group in self._groups(positions):
            faces = [face(position) for position in group]
            embeddings.update(zip(group, self.embed(ops.namespace(faces[0]).stack(faces))))
        return embeddings

    def _input_embeddings(self, positions: list[int]) -> None:
        """The embeddings of these faces' input crops (kept), those missing taken at once."""
        missing = [p for p in positions if p not in self.input_embeddings]
        if missing:
            for position, embedding in zip(missing, self.embed(np.stack([self.inputs[p] for p in missing]))):
                self.input_embeddings[position] = embedding

    def _stabilise(self, positions: list[int]) -> None:
        """These faces' residuals filtered along their neighbours (see the module notes); each group's
        neighbours sampled at once, each face's sums in a fixed order."""
        for group in self._groups(positions):
            self._stabilise_group(group)

    def _stabilise_group(self, positions: list[int]) -> None:
        xp = ops.namespace(self.residuals[positions[0]])
        pairs = [(position, k, neighbour) for position in positions
                 for k, neighbour in enumerate(self._links(position).neighbours)]
        if pairs:
            points = xp.concat([self._links(position).points for position in positions if self._links(position).neighbours])
            residuals_there = ops.sample(xp.stack([self.residuals[n] for _, _, n in pairs]), points)
            inputs_there = ops.sample(xp.stack([self._base(n) for _, _, n in pairs]), points)
        filtered = []  # (position, its residual, its base, the sums over it and its neighbours)
        for position in positions:
            residual, picture, links = self.residuals[position], self._base(position), self._links(position)
            if not links.neighbours:  # a track of one face
                self.stabilised[position] = residual
                continue
            first = next(index for index, pair in enumerate(pairs) if pair[0] == position)
            neighbours = np.s_[first:first + len(links.steps)]
            # Fused, the residual holds the noise the base lost: a neighbour's pixel unlike this one's must not bring its noise.
            trusted = links.agreement if links.likeness is None else links.agreement * links.likeness
            weights = trusted * _step_weights(residual, links.steps, TEMPORAL_SIGMA)
            filtered.append((position, residual, picture, ops.added(residual, residuals_there[neighbours], weights),
                             ops.added(picture, inputs_there[neighbours], weights), ops.added(xp.ones_like(weights[0]), weights)))
        if not filtered:
            return
        residual, picture, sum_residual, sum_input, total = (xp.stack(parts) for parts in list(zip(*filtered))[1:])
        smooth_residual = sum_residual / total
        input_change = picture - sum_input / total
        residual_change = residual - smooth_residual
        # The share of the residual's own frame-to-frame change that best cancels the input's
        # (least squares, locally): 1 where the restorer removed noise, 0 where it added flicker.
        ones = ops.constant(residual, np.ones((3, 1)))
        sums = xp.concat([-(input_change * residual_change) @ ones, (residual_change ** 2) @ ones], axis=-1)
        blurred = wide_blur(sums, CANCEL_BLUR * picture.shape[1])
        keep = xp.clip(blurred[..., 0] / (blurred[..., 1] + 1.0), 0.0, 1.0)
        for (position, *_), stabilised in zip(filtered, smooth_residual + keep[..., None] * residual_change):
            self.stabilised[position] = stabilised

    def _float_input(self, position: int):
        """The face's input crop as float32, of the restored crops' kind (kept: its neighbours read it too)."""
        if position not in self.float_inputs:
            self.float_inputs[position] = ops.like(self.restored[position], self.inputs[position])
        return self.float_inputs[position]

    def _guide(self, position: int):
        """The face's input blurred by MATCH_BLUR of its side, at half the crop's resolution (kept)."""
        if position not in self.guides:
            picture = self._float_input(position)[None]
            size = picture.shape[1]
            half = size // 2 if size % 2 == 0 else size
            if half != size:
                picture = ops.resize(picture, (half, half), ops.AREA)
            self.guides[position] = ops.blur(picture, MATCH_BLUR * half)[0]
        return self.guides[position]

    def _identity(self, positions: list[int]) -> None:
        """Input embeddings of these faces and, under AUTO, each one's highest strength step that keeps its
        identity (each step's candidates embedded a group at a time)."""
        self._input_embeddings(positions)
        if self.strength != AUTO:
            return
        undecided = [p for p in positions if p not in self.limits]
        floors = {p: self._floor(p) for p in undecided}
        for strength in STRENGTH_STEPS:
            if not undecided:
                break
            if strength == 0:
                self.limits.update((p, 0.0) for p in undecided)
                break
            candidates = self._embedded(undecided, lambda p: self._base(p) + strength * self.stabilised[p])
            for position, embedding in candidates.items():
                self.candidates[position, strength] = embedding
                if self._similarity(position, embedding) >= floors[position]:
                    self.limits[position] = strength
            undecided = [p for p in undecided if p not in self.limits]

    def _similarity(self, position: int, embedding: np.ndarray) -> float:
        """How like the actor (for a face of nobody: its input) a face in this position's place with this embedding is."""
        return float(identity(embedding[None], self._reference_for(position))[0])

    def _reference_for(self, position: int) -> np.ndarray:
        return self.reference if self.reference is not None else self.input_embeddings[position]

    def _floor(self, position: int) -> float:
        """The least similarity (to the actor, or for a face of nobody to its input) a face in this position's place may have."""
        return self._baseline(position) - IDENTITY_TOLERANCE if self.reference is not None else UNKNOWN_SELF_SIMILARITY

    def _baseline(self, position: int) -> float:
        if self.reference is None:
            return 1.0
        return float(identity(self.input_embeddings[position][None], self.reference)[0])

    def _strength(self, position: int) -> float:
        """The smoothed strength of one face, from the limits within GUARD_HORIZON of it."""
        if self.strength != AUTO:
            return float(self.strength)
        return smoothed_strength(self.limits, position, self.length)

    # ---- a window's faces

    def guard(self, positions: list[int]) -> GuardedFaces:
        """The final faces of these positions (consecutive) and the guards' measures of them."""
        limited = self._existing(range(positions[0] - STRENGTH_REACH, positions[-1] + STRENGTH_REACH + 1)) \
            if self.strength == AUTO else list(positions)
        stabilised = self._existing(limited + list(positions))
        self._residuals(self._existing(range(stabilised[0] - TEMPORAL_RADIUS, stabilised[-1] + TEMPORAL_RADIUS + 1)))
        self._stabilise([position for position in stabilised if position not in self.stabilised])
        self._identity(limited)
        strengths = np.array([self._strength(p) for p in positions], np.float32)
        for position, strength in zip(positions, strengths):
            self.finals[position] = self._base(position) + float(strength) * self.stabilised[position]
        faces = [self.finals[p] for p in positions]
        output_embeddings = self._output_embeddings(positions, strengths, faces)
        identity_in = np.array([self._baseline(p) for p in positions], np.float32)
        identity_out = np.array([self._similarity(p, e) for p, e in zip(positions, output_embeddings)], np.float32)
        reasons = np.array([self._reason(p, s) for p, s in zip(positions, strengths)], dtype=object)
        return GuardedFaces(faces, strengths, reasons, identity_in, identity_out, *self._changes(positions), self.resolution)

    def _output_embeddings(self, positions, strengths, faces) -> list[np.ndarray]:
        """The final faces' embeddings; a face at a strength step already tried has it (the same pixels)."""
        known = {p: self.candidates.get((p, float(s))) for p, s in zip(positions, strengths)}
        final = dict(zip(positions, faces))
        known.update(self._embedded([p for p, embedding in known.items() if embedding is None], final.__getitem__))
        return [known[p] for p in positions]

    def _changes(self, positions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per face, the frame-to-frame change from the face before it, input and output (temporal_changes), inside face_mask."""
        size = self.inputs[positions[0]].shape[0]
        every = np.s_[::MEASURE_STRIDE, ::MEASURE_STRIDE]
        measured = [(index, position) for index, position in enumerate(positions)
                    if position - 1 in self.finals and position in self.flows]
        out = np.zeros((3, len(positions)))
        if not measured:
            return out[0], out[1], out[2]
        # The faces measured at once, each one's sums as alone.
        flows = [self.flows[position].backward(size) for _, position in measured]
        final = self.finals[measured[0][1]]
        xp = ops.namespace(final)
        points = xp.stack([ops.like(final, (flow + ops.grid(flow[None])[0])[every]) for flow, _ in flows])
        weights = xp.stack([ops.like(final, valid[every]) for _, valid in flows]) * ops.constant(final, face_mask(size)[every])
        sums = []
        for pictures in (self._float_input, self.finals.__getitem__):
            now = xp.stack([pictures(position)[every] for _, position in measured])
            then = ops.sample(ops.stack([pictures(position - 1) for _, position in measured]), points)
            sums.append(xp.sum(channel_mean_change(now, then) * weights, axis=(1, 2)))
        sums.append(xp.sum(weights, axis=(1, 2)))
        out[:, [index for index, _ in measured]] = ops.to_numpy(xp.stack(sums))  # one transfer for the window's sums
        return out[0], out[1], out[2]

    def _reason(self, position: int, strength: float) -> str:
        if self.strength != AUTO or strength >= STRENGTH_STEPS[0]:
            return ""
        if self.limits[position] < STRENGTH_STEPS[0]:
            return LESS_LIKE_THE_ACTOR if self.reference is not None else UNLIKE_ITSELF
        return WITH_NEIGHBOURS


def smoothed_strength(limits, position: int, length: int) -> float:
    """One face's strength along a track of `length` faces whose limits (by position) are given
    within STRENGTH_REACH of it: the lowest of the limits, each raised by STRENGTH_SLOPE per face
    between it and this one (see the module notes)."""
    nearby = range(max(position - STRENGTH_REACH, 0), min(position + STRENGTH_REACH, length - 1) + 1)
    return float(np.float32(min(limits[v] + STRENGTH_SLOPE * abs(position - v) for v in nearby)))


def smooth_strengths(limits: np.ndarray) -> np.ndarray:
    """smoothed_strength of every face of a whole track's limits."""
    return np.array([smoothed_strength(limits, t, len(limits)) for t in range(len(limits))], np.float32)


def stabilise(inputs: np.ndarray, residuals, scale: float = 1.0):
    """The stabilisation alone over a whole track: its N x S x S x 3 residuals filtered along the
    inputs' flows (no band match, no identity guard; scale: the faces' crop pixels per frame pixel)."""
    guard = TrackGuard(len(inputs), None, None, 1.0, fusion=False)
    for position in range(len(inputs)):
        flow = PairFlow.of_crops(inputs[position - 1], inputs[position], scale) if position else None
        guard.add(position, inputs[position], ops.as_float(residuals[position]), flow)
        guard.residuals[position] = ops.as_float(residuals[position])
    guard._stabilise(list(range(len(inputs))))
    xp = ops.namespace(residuals)
    return xp.stack([guard.stabilised[position] for position in range(len(inputs))])


def guard_track(inputs: np.ndarray, restored, embed: Callable[[object], np.ndarray], reference: np.ndarray | None,
                strength: float | str = AUTO, resolution: float | None = None, scale: float = 1.0,
                fusion: bool = True) -> GuardedFaces:
    """The guarded faces of one whole track (consecutive frames of one shot) and its measures.

    inputs: N x S x S x 3 uint8 aligned input crops; restored: the restorer's N x S x S x 3
    (float 0..255); embed: crops -> unit embeddings (see aligned_embedder); reference: the
    actor's unit centroid, None for a face of nobody; strength: AUTO or 0..1; resolution: the
    input's effective resolution (default: estimated from the first crops); scale: the faces'
    crop pixels per frame pixel (the flows' size, finish.flow.flow_side); fusion: as TrackGuard takes it.
    """
    if inputs.shape != restored.shape or inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise ValueError(f"guard_track needs N x S x S x 3 inputs and restored crops of one shape, got {inputs.shape} and {restored.shape}")
    guard = TrackGuard(len(inputs), embed, reference, strength, resolution, fusion)
    restored = ops.as_float(restored)
    for position in range(len(inputs)):
        flow = PairFlow.of_crops(inputs[position - 1], inputs[position], scale) if position else None
        guard.add(position, inputs[position], restored[position], flow)
    guarded = guard.guard(list(range(len(inputs))))
    return replace(guarded, faces=ops.namespace(restored).stack(guarded.faces))


def summarise(results: list[GuardedFaces]) -> dict:
    """Report fields of one track from the results of its faces (in any number of parts)."""
    strength = np.concatenate([r.strength for r in results])
    change_in = sum(float(r.change_in.sum()) for r in results)
    change_out = sum(float(r.change_out.sum()) for r in results)
    reasons = Counter(reason for r in results for reason in r.reasons if reason)
    return {
        "faces": int(strength.size),
        "flicker_ratio": round(change_out / change_in, 4) if change_in > 0 else None,
        "identity_in": round(float(np.concatenate([r.identity_in for r in results]).mean()), 4),
        "identity_out": round(float(np.concatenate([r.identity_out for r in results]).mean()), 4),
        "strength_mean": round(float(strength.mean()), 3),
        "strength_min": round(float(strength.min()), 3),
        "held_back": int((strength < STRENGTH_STEPS[0]).sum()),
        "held_back_why": dict(reasons),
    }
