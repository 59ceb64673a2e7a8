"""The hold-still: where the restoration would make a face change more from frame to frame than the
film, only the share of it that does not is kept (under --strength auto). The share is measured per
window of faces; along the track the share used moves toward it by at most SHARE_SLOPE per face
(`toward`), so no face steps where a window ends."""
from __future__ import annotations

import numpy as np

from film_restore.finish.measures import ChangeSamples

# steady_share's bisections (the share is found to 2^-16) and its tolerance on the mean
# |change| (levels): float rounding of a restorer that changes nothing must not hold it.
STEADY_BISECTIONS = 16
STEADY_TOLERANCE = 1e-4
# The most a track's share changes from one face to the next: with finish.guards.STRENGTH_SLOPE,
# the strength a face is restored with changes by at most 0.1 from its neighbour's.
SHARE_SLOPE = 0.04


def steady_share(change: ChangeSamples) -> float:
    """The largest share s (0..1) of a restoration that leaves a face changing from frame to frame
    no more than its input: input + s (output - input) has mean |change| at most the input's
    (give or take STEADY_TOLERANCE, below any output's precision).

    1 where the output changes no more than the input; s = 0 gives the input back. The mean
    |change| is convex in s, so the shares that qualify run from 0 to the one found here."""
    input_change = np.asarray(change.input, np.float32)
    difference = np.asarray(change.output, np.float32) - input_change
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


def toward(share: float, target: float) -> float:
    """The share the next face of a track uses: the last face's moved toward the measured one by at most SHARE_SLOPE."""
    return float(np.clip(target, share - SHARE_SLOPE, share + SHARE_SLOPE))
