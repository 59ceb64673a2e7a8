"""Fresh grain on restored faces, of the film's own kind (finish.grain_model): how much a face may
take, and the grain itself.

Each track gets one periodic field of unit grain with its model's spectrum (GrainTile, made once);
each frame reads it at a fresh random offset, so the grain is new each frame and costs a lookup.
The grain fills the fine texture (the texture measure's high-pass luma energy) the restored face
lacks against GRAIN_TEXTURE_SHARE of the original's, at most GRAIN_MAX_GAIN times the film's
grain, and at most the amount that keeps the face changing from frame to frame no more than
FLICKER_HEADROOM of its input (`grain_allowed`): grain must not count as flicker.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from film_restore.finish import ops
from film_restore.finish.colour import luma
from film_restore.finish.grain_model import GrainModel, ar_autocovariance, ar_transfer
from film_restore.finish.measures import ChangeSamples, fine_detail

# Grain fills the texture a restored face lacks up to this many times the film's own
# grain: beyond that the loss is of structure, which grain cannot stand in for.
GRAIN_MAX_GAIN = 2.0
# ... and up to this share of the original's fine texture (energy share squared): every level
# of grain re-created is a level of difference from the scene, so it stops inside the
# texture a viewer sees as the film's (issue bar: 0.8-1.25 of the input's texture) with room
# left for fidelity: on the degraded film_look copies (x3 down and up, noise 6) 0.9 gave
# texture 0.89-0.90 but face PSNR only 0.15 dB above the degraded input's, 0.85 gives 0.85 and 0.38 dB.
GRAIN_TEXTURE_SHARE = 0.85
# ... and keeps the face inside its matte changing from frame to frame by at most this share of
# the input's: the matte's feathered edge, where no grain goes, has its own share of the
# restoration's change (measured: the face box's flicker 1.001 at 1.0, on a clean clip).
FLICKER_HEADROOM = 0.98
# The grain a face takes without more flicker is found by this many bisections, on its
# frame-to-frame changes rounded to 1 / CHANGE_STEPS of a level and the grain's change per
# unit of grain rounded to 1 / STD_STEPS.
ALLOWED_BISECTIONS = 24
CHANGE_STEPS = 8
STD_STEPS = 64
# Side of each track's periodic unit grain field; larger faces read it wrapped around (grain
# repeating 512 pixels apart is not seen).
GRAIN_TILE = 512


def unit_grain(ar: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, fields: int = 1, like=None):
    """fields x H x W float32 independent periodic grain fields of unit std with the AR model's spectrum,
    filtered where like is (an array of that kind and device; None: numpy).

    White noise filtered in the frequency domain by the AR transfer function: the AR
    process's stationary spectrum without the recursion's pixel-by-pixel loop.
    """
    height, width = shape
    transfer = ar_transfer(ar, height, width)
    noise = rng.standard_normal((fields, height, width))  # drawn here: the same noise on every kind of node
    grain = ops.frequency_filtered(noise if like is None else ops.send(like, noise), transfer)
    return ops.as_float(grain / np.sqrt(ar_autocovariance(transfer, shape)[0, 0]))


class GrainTile:
    """One track's unit grain (GRAIN_TILE square, one field for monochrome grain, three for colour), made
    once from a seed, read at a fresh offset per frame (`field`)."""

    def __init__(self, model: GrainModel, seed, like=None):
        """like: an array whose kind and device the tile is made on (None: numpy)."""
        self.model = model
        fields = 1 if model.monochrome else 3
        self.fields = unit_grain(model.ar, (GRAIN_TILE, GRAIN_TILE), np.random.default_rng(seed), fields, like)
        self._devices = {}

    def field(self, shape: tuple[int, int], seed, like=None):
        """H x W x (1 or 3) unit grain read from the tile at an offset drawn from seed (a frame and track),
        an array of `like`'s kind and device (numpy by default)."""
        height, width = shape
        dy, dx = (int(offset) for offset in np.random.default_rng(seed).integers(0, GRAIN_TILE, 2))
        fields = self.fields if like is None or ops.is_numpy(like) else self._on(like)
        if ops.is_numpy(fields):
            rows, columns = (dy + np.arange(height)) % GRAIN_TILE, (dx + np.arange(width)) % GRAIN_TILE
            return np.moveaxis(fields[:, rows][:, :, columns], 0, -1)
        import torch

        rows = (torch.arange(height, device=fields.device) + dy) % GRAIN_TILE
        columns = (torch.arange(width, device=fields.device) + dx) % GRAIN_TILE
        return fields[:, rows][:, :, columns].permute(1, 2, 0)

    def _on(self, like):
        if like.device not in self._devices:
            self._devices[like.device] = ops.like(like, self.fields)
        return self._devices[like.device]


def synthesise_grain(tile: GrainTile, luma_values, seed):
    """H x W x 3 float32 grain for a picture of this luma (numpy, or a tensor): the model's spectrum,
    channel correlation and luma scaling function, fresh for each seed."""
    model = tile.model
    xp = ops.namespace(luma_values)
    scale = model.amplitude_at(luma_values)[..., None]
    unit = tile.field(luma_values.shape, seed, luma_values)
    if model.monochrome:
        return xp.concat([unit * scale] * 3, axis=-1)
    mix = ops.constant(luma_values, model.channel_mix.T * model.channel_gain[None, :])
    return (unit @ mix) * scale


def detail_energies(pictures: list, inside) -> list[float]:
    """Each picture's (H x W x 3) mean square of the fine detail (the texture measure's high-pass luma) over the
    pixels inside: on a device all at once, brought back together."""
    if ops.is_numpy(pictures[0]):
        return [float(np.mean(fine_detail(picture)[inside] ** 2)) for picture in pictures]
    xp = ops.namespace(*pictures)
    details = xp.reshape(fine_detail(xp.stack(pictures)), (len(pictures), -1))
    return [float(energy) for energy in ops.to_numpy(xp.mean(details[:, xp.reshape(inside, (-1,))] ** 2, axis=1))]


def add_missing_grain(face, original, alpha, tile: GrainTile, seed, allowed: float):
    """The face layer region (float32 H x W x 3; numpy or a tensor) with fresh grain of the
    track's kind inside alpha = 1, in the amount of fine texture the face lacks against
    GRAIN_TEXTURE_SHARE of the original's, at most GRAIN_MAX_GAIN times the film's grain, and
    at most `allowed` luma std (grain_allowed)."""
    xp = ops.namespace(face)
    inside = alpha >= 1
    if not bool(xp.any(inside)):
        return face
    grain = synthesise_grain(tile, luma(face), seed)
    original_energy, face_energy, grain_energy = detail_energies([ops.as_float(original), face, grain], inside)
    missing = GRAIN_TEXTURE_SHARE ** 2 * original_energy - face_energy
    gain_squared = min(missing / max(grain_energy, 1e-9),
                       allowed ** 2 / max(float(xp.mean(luma(grain)[inside] ** 2)), 1e-9), GRAIN_MAX_GAIN ** 2)
    return face + float(np.sqrt(gain_squared)) * grain if gain_squared > 0 else face


def grain_allowed(change: ChangeSamples, model: GrainModel) -> float:
    """The largest luma std of fresh grain of the model's kind that leaves the output changing no
    more from frame to frame than FLICKER_HEADROOM of the input (the mean absolute change over
    the channels, as the flicker measure has it). Fresh grain of luma std s adds Gaussian change
    of std s g sqrt(1 + w) to a channel whose grain is g times the luma's, w the share of the
    earlier frame's grain the flow's interpolation leaves (the input's grain is averaged alike)."""
    target = FLICKER_HEADROOM * float(np.abs(change.input).mean())
    spread = np.round(np.sqrt(1 + model.warped_variance(change.offsets)) * STD_STEPS).astype(np.int64)
    channels = []
    for c in range(3):
        steps = np.round(change.output[:, c] * CHANGE_STEPS).astype(np.int64)
        low = steps.min()
        # Each (change, spread) pair counted once: the bisection sums over distinct pairs.
        keys = (steps - low) * (STD_STEPS + 1) + (spread - STD_STEPS)
        counts = np.bincount(keys)
        present = np.flatnonzero(counts)
        values = (present // (STD_STEPS + 1) + low) / CHANGE_STEPS
        spreads = (present % (STD_STEPS + 1) + STD_STEPS) / STD_STEPS
        channels.append((values, spreads, counts[present]))

    def mean_change(luma_std: float) -> float:
        """E|c + g| over the outputs' changes c, g fresh grain's change, averaged over the channels."""
        total = 0.0
        for (values, spreads, counts), gain in zip(channels, model.channel_gain):
            std = luma_std * gain * spreads
            expected = np.abs(values) if luma_std * gain == 0 else (
                std * np.sqrt(2 / np.pi) * np.exp(-values ** 2 / (2 * std ** 2)) + values * erf(values / (std * np.sqrt(2))))
            total += float((expected * counts).sum() / counts.sum())
        return total / len(channels)

    if mean_change(0.0) >= target:
        return 0.0
    low, high = 0.0, 2 * target / max(float(np.min(model.channel_gain)), 1e-3)  # alone, grain this strong changes more
    for _ in range(ALLOWED_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_change(middle) <= target else (low, middle)
    return low
