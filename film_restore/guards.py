"""Guards on restored faces, per track, in aligned space, training-free: a face never ends worse than it came.

The restoration is handled as a residual, restored minus input crop, and each guard acts on
it; a restorer that returns its input leaves every face exactly as it was.

fidelity       the residual loses the band the input can vouch for (below the input's effective
               resolution, `effective_resolution`): the restored face re-degraded to that
               resolution agrees with the input. paste.match_colour does this for the coarsest
               scales only; this extends it to every frequency the input really has.
stabilisation  a centred (zero-lag) temporal filter of the residual along the input's optical
               flow (Bonneel et al. 2015, Lai et al. 2018, without their training or lag): each
               face's residual is averaged with its neighbours' warped onto it, weighted by a
               Gaussian in time, a forward-backward flow check and how well the warped
               (blurred) input matches, so occlusions and mistracked pixels (a mouth opening)
               keep their own residual and nothing ghosts. The frame-to-frame part of the
               residual that cancels the input's own frame-to-frame change (noise the restorer
               removed) is kept, locally in proportion; the rest (the restorer's flicker) is
               filtered away. The window ends at the track's ends.
identity       each face's strength (0..1, its share of the residual) is the highest of
               STRENGTH_STEPS at which the face is as like the actor as the input was (within
               IDENTITY_TOLERANCE)
               (a face of nobody: at least UNKNOWN_SELF_SIMILARITY like its own input); the
               strengths are then smoothed along the track by a moving minimum and a moving
               average of the same reach, so they never exceed any face's limit and do not pump.

`guard_track` runs the three on one track; `strength` "auto" lets the identity guard decide
per face, a number 0..1 fixes it (the identity guard then only measures). A face's result
depends on its track within GUARD_HORIZON frames either side, so a track may be guarded in
overlapping segments with results identical to a whole-track run.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from film_restore.faces.align import ffhq_template
from film_restore.quality import flow_pair, gray, identity, temporal_changes, warp

AUTO = "auto"

# Stabilisation: neighbours each side and the Gaussian (frames) that weighs them.
TEMPORAL_RADIUS = 2
TEMPORAL_SIGMA = 1.0
# A neighbour's pixel counts in proportion to exp(-d^2 / 2 tau^2), d the difference (levels)
# of the two inputs blurred by MATCH_BLUR x crop side after warping: blur keeps noise
# (sigma 6 -> ~1.5) from vetoing, while a mouth opening or an occlusion differs by tens of levels.
MATCH_TOLERANCE = 8.0
MATCH_BLUR = 0.006
# Spatial reach (x crop side) over which the residual's frame-to-frame change is compared
# with the input's, to decide how much of it cancels input noise.
CANCEL_BLUR = 0.02
# Identity guard: the strengths tried, best first, and the reach (frames) of their smoothing.
STRENGTH_STEPS = (1.0, 0.75, 0.5, 0.25, 0.0)
STRENGTH_RADIUS = 3
# A named actor's face is held back where restoring it lowers its similarity to the actor by
# more than this: a face's similarity to its actor changes by 0.005-0.012 on average from one
# frame to the next (compact pack, aligned 256 px crops of retalk_2 and liveportrait_d10).
IDENTITY_TOLERANCE = 0.005
# A face of nobody is held back where its restored embedding is less like its input's than this
# (one face in consecutive frames scores 0.97-0.98 against itself on the same clips).
UNKNOWN_SELF_SIMILARITY = 0.8
# Fidelity: the input vouches for frequencies whose power is this many times its noise floor.
VOUCH_SNR = 4.0
# Why a face was held back (reports count them).
LESS_LIKE_THE_ACTOR = "identity: restored face less like the actor than the input"
UNLIKE_ITSELF = "identity: restored face unlike its own input"
WITH_NEIGHBOURS = "identity: held back with neighbouring faces (strengths smoothed along the track)"
# Frames either side a face's result depends on (stabilisation, then the strength smoothing's two passes).
GUARD_HORIZON = TEMPORAL_RADIUS + 2 * STRENGTH_RADIUS


@dataclass
class TrackResult:
    """One track's guarded faces and what the guards measured and decided, per face.

    faces: float32 N x S x S x 3 (0..255) final aligned crops; strength: N (share of the
    residual used); reasons: N strings ("" where the face got the full strength, else
    one of the phrases above);
    identity_in / identity_out: N cosine similarities (to the actor, or for a face of nobody of
    the output to its own input, the input then 1.0); change_in / change_out / change_weight:
    N sums of the frame-to-frame change from the previous face (0 weight for the first), so
    flicker over any run of faces is sum(change_out) / sum(change_in); resolution: the input's
    effective resolution (fraction of the crop's Nyquist frequency) the fidelity guard used.
    """

    faces: np.ndarray
    strength: np.ndarray
    reasons: np.ndarray
    identity_in: np.ndarray
    identity_out: np.ndarray
    change_in: np.ndarray
    change_out: np.ndarray
    change_weight: np.ndarray
    resolution: float

    def part(self, indices) -> "TrackResult":
        """The result for a subset (slice) of the faces."""
        return TrackResult(self.faces[indices], self.strength[indices], self.reasons[indices], self.identity_in[indices],
                           self.identity_out[indices], self.change_in[indices], self.change_out[indices],
                           self.change_weight[indices], self.resolution)


def parse_strength(value) -> float | str:
    """AUTO or a float in [0, 1]; a clear error otherwise."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        strength = float(value)
    except (TypeError, ValueError):
        strength = None
    if strength is None or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number from 0 to 1 or 'auto', got {value!r}")
    return strength


def strength_of(actor: str | None, strength, actor_strengths: dict) -> float | str:
    """The strength a face of this actor (None: nobody) gets: the cast file's own for the actor, else the run's."""
    return parse_strength(actor_strengths.get(actor, strength) if actor is not None else strength)


def aligned_embedder(recogniser) -> Callable[[np.ndarray], np.ndarray]:
    """crops (N x S x S x 3 uint8, FFHQ-aligned) -> N x d unit embeddings, with a film_restore Recogniser."""

    def embed(crops: np.ndarray) -> np.ndarray:
        keypoints = ffhq_template(crops.shape[1])
        return np.stack([recogniser.embedding(crop, keypoints) for crop in crops])

    return embed


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
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.sqrt(fx**2 + fy**2) / 0.5  # 1 at Nyquist
    bins = np.minimum((radius * 50).astype(int), 50)
    counts = np.bincount(bins.ravel(), minlength=51)
    estimates = []
    for crop in crops:
        luma = gray(crop).astype(np.float32)
        luma = (luma - luma.mean()) * window
        power = np.abs(np.fft.fft2(luma)) ** 2
        profile = np.bincount(bins.ravel(), power.ravel(), minlength=51)[:50] / np.maximum(counts[:50], 1)
        floor = np.median(profile[42:50])
        above = np.nonzero(profile[1:] > VOUCH_SNR * floor)[0]
        estimates.append((above.max() + 2) / 50 if above.size else 1 / 50)
    return float(min(np.median(estimates), 1.0))


def match_band(residuals: np.ndarray, resolution: float) -> np.ndarray:
    """Residuals without the band below `resolution` (fraction of Nyquist): the input's own there wins.

    A Gaussian low-pass whose response is one half at the cut-off is taken off each residual.
    """
    sigma = 0.375 / max(resolution, 1e-3)  # exp(-2 pi^2 sigma^2 f^2) = 1/2 at f = resolution / 2 cycles/pixel
    return np.stack([r - cv2.GaussianBlur(r, (0, 0), sigma) for r in residuals.astype(np.float32)])


def stabilise(inputs: np.ndarray, residuals: np.ndarray) -> tuple[np.ndarray, list]:
    """(stabilised residuals, backward flows (flow t -> t-1, valid) of t = 1..N-1), see the module notes."""
    count, size = len(inputs), inputs.shape[1]
    flows = {}
    for step in range(1, TEMPORAL_RADIUS + 1):
        for t in range(count - step):
            forward, valid_forward, backward, valid_backward = flow_pair(inputs[t], inputs[t + step])
            flows[t, step] = (forward, valid_forward)
            flows[t + step, -step] = (backward, valid_backward)
    guides = [cv2.GaussianBlur(frame.astype(np.float32), (0, 0), MATCH_BLUR * size) for frame in inputs]
    cancel_sigma = CANCEL_BLUR * size
    stabilised = np.empty_like(residuals, dtype=np.float32)
    for t in range(count):
        centre = 1.0
        sum_residual = residuals[t].astype(np.float32) * centre
        sum_input = inputs[t].astype(np.float32) * centre
        total = np.full(inputs.shape[1:3], centre, np.float32)
        for step in range(-TEMPORAL_RADIUS, TEMPORAL_RADIUS + 1):
            if step == 0 or not 0 <= t + step < count:
                continue
            flow, valid = flows[t, step]
            mismatch = np.abs(guides[t] - warp(guides[t + step], flow)).mean(-1)
            weight = np.exp(-0.5 * (step / TEMPORAL_SIGMA) ** 2) * valid * np.exp(-0.5 * (mismatch / MATCH_TOLERANCE) ** 2)
            weight = weight.astype(np.float32)
            sum_residual += weight[..., None] * warp(residuals[t + step], flow)
            sum_input += weight[..., None] * warp(inputs[t + step], flow)
            total += weight
        smooth_residual = sum_residual / total[..., None]
        residual_change = residuals[t] - smooth_residual
        input_change = inputs[t].astype(np.float32) - sum_input / total[..., None]
        # The share of the residual's own frame-to-frame change that best cancels the input's
        # (least squares, locally): 1 where the restorer removed noise, 0 where it added flicker.
        agreement = cv2.GaussianBlur(-(input_change * residual_change).sum(-1), (0, 0), cancel_sigma)
        energy = cv2.GaussianBlur((residual_change**2).sum(-1), (0, 0), cancel_sigma)
        keep = np.clip(agreement / (energy + 1.0), 0.0, 1.0)
        stabilised[t] = smooth_residual + keep[..., None] * residual_change
    return stabilised, [flows[t, -1] for t in range(1, count)]


def _compose(inputs: np.ndarray, residuals: np.ndarray, strength) -> np.ndarray:
    return inputs.astype(np.float32) + np.asarray(strength, np.float32).reshape(-1, 1, 1, 1) * residuals


def _similarity(embeddings, reference, input_embeddings) -> np.ndarray:
    return identity(embeddings, reference if reference is not None else input_embeddings)


def identity_limits(inputs: np.ndarray, residuals: np.ndarray, embed, reference,
                    input_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(highest allowed strength, identity of the input) per face; input_embeddings: embed(inputs)."""
    baseline = identity(input_embeddings, reference) if reference is not None else np.ones(len(inputs), np.float32)
    limits = np.zeros(len(inputs), np.float32)
    undecided = np.arange(len(inputs))
    for strength in STRENGTH_STEPS:
        if strength == 0 or undecided.size == 0:
            break
        candidates = np.clip(np.round(_compose(inputs[undecided], residuals[undecided], strength)), 0, 255).astype(np.uint8)
        scores = _similarity(embed(candidates), reference, input_embeddings[undecided])
        passed = scores >= (baseline[undecided] - IDENTITY_TOLERANCE if reference is not None else UNKNOWN_SELF_SIMILARITY)
        limits[undecided[passed]] = strength
        undecided = undecided[~passed]
    return limits, baseline


def smooth_strengths(limits: np.ndarray) -> np.ndarray:
    """Strengths along a track that never exceed any face's limit and change gently (see the module notes)."""
    count, reach = len(limits), STRENGTH_RADIUS
    lowest = np.array([limits[max(t - reach, 0):t + reach + 1].min() for t in range(count)], np.float32)
    offsets = np.arange(-reach, reach + 1)
    gauss = np.exp(-0.5 * (offsets / (reach / 2)) ** 2)
    smoothed = np.empty(count, np.float32)
    for t in range(count):
        inside = (t + offsets >= 0) & (t + offsets < count)
        smoothed[t] = (gauss[inside] * lowest[t + offsets[inside]]).sum() / gauss[inside].sum()
    return np.minimum(smoothed, limits)


def guard_track(inputs: np.ndarray, restored: np.ndarray, embed: Callable[[np.ndarray], np.ndarray],
                reference: np.ndarray | None, strength: float | str = AUTO, resolution: float | None = None,
                mask: np.ndarray | None = None) -> TrackResult:
    """The guarded faces of one track (consecutive frames of one shot) and its measures.

    inputs: N x S x S x 3 uint8 aligned input crops; restored: the restorer's N x S x S x 3
    (float 0..255); embed: crops -> unit embeddings (see aligned_embedder); reference: the
    actor's unit centroid, None for a face of nobody; strength: AUTO or 0..1; resolution: the
    input's effective resolution (default: estimated from the crops); mask: face weights for
    the flicker measure (default face_mask).
    """
    if inputs.shape != restored.shape or inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise ValueError(f"guard_track needs N x S x S x 3 inputs and restored crops of one shape, got {inputs.shape} and {restored.shape}")
    strength = parse_strength(strength)
    resolution = effective_resolution(inputs) if resolution is None else resolution
    residuals = match_band(restored.astype(np.float32) - inputs.astype(np.float32), resolution)
    residuals, backward_flows = stabilise(inputs, residuals)
    input_embeddings = embed(inputs)
    if strength == AUTO:
        limits, identity_in = identity_limits(inputs, residuals, embed, reference, input_embeddings)
        strengths = smooth_strengths(limits)
    else:
        limits = None
        identity_in = identity(input_embeddings, reference) if reference is not None else np.ones(len(inputs), np.float32)
        strengths = np.full(len(inputs), strength, np.float32)
    faces = _compose(inputs, residuals, strengths)
    output_embeddings = embed(np.clip(np.round(faces), 0, 255).astype(np.uint8))
    identity_out = identity(output_embeddings, reference if reference is not None else input_embeddings)
    reasons = np.array([_reason(strengths[t], limits, reference, t) for t in range(len(inputs))], dtype=object)
    sums_in, sums_out, weights = temporal_changes(inputs, faces, face_mask(inputs.shape[1]) if mask is None else mask, backward_flows)
    pad = lambda values: np.concatenate([[0.0], values])
    return TrackResult(faces, strengths, reasons, np.asarray(identity_in, np.float32), np.asarray(identity_out, np.float32),
                       pad(sums_in), pad(sums_out), pad(weights), resolution)


def _reason(strength: float, limits, reference, t: int) -> str:
    if limits is None or strength >= STRENGTH_STEPS[0]:
        return ""
    if limits[t] < STRENGTH_STEPS[0]:
        return LESS_LIKE_THE_ACTOR if reference is not None else UNLIKE_ITSELF
    return WITH_NEIGHBOURS


class TrackGuard:
    """guard_track with a film's settings, for the Composer: the cast's references and strengths.

    references: actor -> unit centroid; strength: the run's (AUTO or 0..1); actor_strengths:
    actor -> a cast file's own strength for that actor, which wins over the run's.
    """

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], references: dict[str, np.ndarray],
                 strength: float | str = AUTO, actor_strengths: dict[str, float | str] | None = None):
        self.embed = embed
        self.references = references
        self.strength = parse_strength(strength)
        self.actor_strengths = {actor: parse_strength(value) for actor, value in (actor_strengths or {}).items()}

    @classmethod
    def from_models_dir(cls, models_dir, references, strength=AUTO, actor_strengths=None) -> "TrackGuard":
        """A guard embedding faces with the recogniser of the face models in models_dir."""
        from film_restore.models import find_pack

        return cls(_pack_embedder(str(find_pack(models_dir).recogniser)), references, strength, actor_strengths)

    def __call__(self, inputs: np.ndarray, restored: np.ndarray, actor: str | None) -> TrackResult:
        strength = strength_of(actor, self.strength, self.actor_strengths)
        return guard_track(inputs, restored, self.embed, self.references.get(actor) if actor else None, strength)


@functools.lru_cache(maxsize=2)
def _pack_embedder(recogniser_path: str) -> Callable[[np.ndarray], np.ndarray]:
    """One recogniser per worker process: each chunk's Composer builds a guard, and Ray reuses workers."""
    from film_restore.faces.recogniser import Recogniser

    return aligned_embedder(Recogniser(recogniser_path))


def summarise(results: list[TrackResult]) -> dict:
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
