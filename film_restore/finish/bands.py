"""The band split: a face larger in the frame than in its aligned crop keeps the frame's own detail
above the crop's resolution.

Such a face was shrunk into the crop; above the crop's Nyquist frequency (in frame pixels) the
restored layer carries nothing, so there the frame keeps its own detail -- but not its grain or
noise, which the restoration removed for good reason: detail no stronger than the film's own
frame-to-frame grain there (finish.grain_model) is dropped, as a Wiener filter would. The grain
itself is re-created fresh by finish.grain.
"""
from __future__ import annotations

import numpy as np

from film_restore.finish import ops
from film_restore.finish.colour import luma

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


def frame_detail_weight(scale: float) -> float:
    """How much of the frame's detail above the crop's resolution a face keeps: 0 for a face
    no larger in the frame than in the crop (scale >= 1 crop pixels per frame pixel), 1 from
    DETAIL_FULL_BELOW, continuous in between so a zoom does not pop."""
    return float(np.clip(np.log(scale) / np.log(DETAIL_FULL_BELOW), 0.0, 1.0)) if scale > 0 else 1.0


def band_split_sigma(scale: float) -> float:
    """Frame-pixel sigma of the Gaussian whose response is 1/2 at BAND_SPLIT_FRACTION of the crop's Nyquist."""
    cutoff = BAND_SPLIT_FRACTION * 0.5 * scale  # cycles per frame pixel
    return float(np.sqrt(2 * np.log(2)) / (2 * np.pi * cutoff))


def keep_frame_detail(face, original, scale: float, round_trip=None, grain_std=None):
    """The restored face (float32 frame region, H x W x 3; numpy or a tensor) with the original
    region's detail above the crop's resolution in place of its own; the face itself where the
    crop had the frame's resolution (scale >= 1).

    round_trip: the unrestored aligned crop warped back the same way (float32): below the
    split the face then keeps only what the restoration changed, added to the original, and
    not the crop's resampling and rounding, which differ from frame to frame (flicker); a
    restorer that changes nothing gives the original back.
    grain_std: (sigma -> H x W luma std of the film's grain above a band split of this
    sigma, for the region's luma), e.g. finish.grain_model.GrainModel.std_above; with it, detail
    no stronger than the grain is not kept (the restored face gets fresh grain instead)."""
    weight = frame_detail_weight(scale)
    if weight == 0:
        return face
    xp = ops.namespace(face)
    sigma = band_split_sigma(scale)
    original = ops.as_float(original)
    difference = original - face
    # The round trip's change below the split is blurred with the difference, in one pass.
    blurred = ops.blur(difference[None] if round_trip is None else ops.stack([difference, original - round_trip]), sigma, ops.REFLECT)
    detail = difference - blurred[0]
    if grain_std is not None:
        energy = ops.blur((luma(detail) ** 2)[None, ..., None], CORING_REACH * sigma, ops.REFLECT)[0, ..., 0]
        kept = 1 - CORING_MARGIN * grain_std(sigma) ** 2 / xp.maximum(energy, ops.constant(energy, 1e-6))
        detail = detail * xp.sqrt(xp.clip(kept, 0.0, 1.0))[..., None]
    if round_trip is not None:
        detail = detail + blurred[1]
    return face + weight * detail
