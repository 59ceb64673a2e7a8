"""Multi-scale patch discriminators with spectral normalisation, for training DMDNet.

The paper (Li et al., "Learning Dual Memory Dictionaries for Blind Face Restoration",
TPAMI 2022) trains DMDNet adversarially against discriminators at three image scales with
a hinge loss (`dmdnet.losses.discriminator_hinge` / `generator_hinge`, scale weights 4, 1,
0.5 for scales 1, 1/2, 1/4). Here every scale has its own discriminator (no shared weights):

- input at scale s: the image averaged over non-overlapping k x k blocks with k = 1 / s
  (`F.avg_pool2d(x, k, k)`, a box filter). Bilinear without antialias would equal it at
  1/2 but at 1/4 read only the middle 2 x 2 of every 4 x 4 block (aliasing), hence pooling.
  A side that k does not divide loses its last (side mod k) rows or columns;
- a PatchGAN-style stack: `depth` convolutions 4 x 4, stride 2, padding 1, each followed by
  LeakyReLU(0.2) (`dmdnet.model.NEGATIVE_SLOPE`), channels width, 2 width, 4 width, ... capped
  at `max_width`; then one 3 x 3, stride 1, padding 1 convolution to a single channel of raw
  logits (no activation). An input of side S at scale s gives a logit map of side
  (S * s) / 2**depth (for sides divisible by 2**depth / s).

Every convolution carries `torch.nn.utils.parametrizations.spectral_norm` (one power
iteration per forward pass in train mode; the estimate is frozen in eval mode). Its state
dict keys are the parametrization's (`...parametrizations.weight.original`, `..._u`, `..._v`),
not the authors' old-style `weight_orig` / `weight_u` / `weight_v` that `dmdnet.checkpoint`
folds for the generator: the authors published no discriminator, so these keys are ours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from dmdnet.model import NEGATIVE_SLOPE

DEFAULT_SCALES = (1.0, 0.5, 0.25)


def _pool_factor(scale: float) -> int:
    """The averaging block side k = 1 / scale; scales must be 1 / (positive integer)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ValueError(f"discriminator scales must be in (0, 1], got {scale!r}")
    factor = round(1 / scale)
    if abs(factor * scale - 1) > 1e-6:
        raise ValueError(f"discriminator scale {scale} is not 1 / an integer (1, 0.5, 0.25, ...)")
    return factor


def downsample(image: torch.Tensor, scale: float) -> torch.Tensor:
    """The image at this scale: the mean of each (1 / scale)-pixel square block (scale 1: unchanged)."""
    factor = _pool_factor(scale)
    return image if factor == 1 else F.avg_pool2d(image, factor, factor)


class PatchDiscriminator(nn.Module):
    """Spectral-normalised PatchGAN: `depth` strided 4 x 4 convs + LeakyReLU, then a 3 x 3 conv to 1 logit map."""

    def __init__(self, in_channels: int = 3, width: int = 64, depth: int = 4, max_width: int = 512):
        super().__init__()
        if depth < 1 or width < 1 or max_width < 1 or in_channels < 1:
            raise ValueError(f"PatchDiscriminator needs positive sizes, got in_channels={in_channels} width={width} depth={depth} max_width={max_width}")
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(depth):
            cout = min(width * 2**i, max_width)
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(NEGATIVE_SLOPE)]
            cin = cout
        layers.append(spectral_norm(nn.Conv2d(cin, 1, 3, stride=1, padding=1)))
        self.body = nn.Sequential(*layers)
        self.depth = depth

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class MultiScaleDiscriminator(nn.Module):
    """One `PatchDiscriminator` per scale; forward returns the list of B x 1 x h_s x w_s logit maps, in `scales` order."""

    def __init__(self, width: int = 64, depth: int = 4, scales=DEFAULT_SCALES, in_channels: int = 3, max_width: int = 512):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales:
            raise ValueError("MultiScaleDiscriminator needs at least one scale")
        self.factors = tuple(_pool_factor(s) for s in scales)
        self.scales = scales
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(in_channels, width, depth, max_width) for _ in scales
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.ndim != 4:
            raise ValueError(f"the discriminator needs a B x C x H x W batch, got shape {tuple(image.shape)}")
        smallest = min(image.shape[-2:])
        if smallest < max(self.factors):
            raise ValueError(f"image side {smallest} is smaller than the coarsest scale's block {max(self.factors)}")
        return [d(downsample(image, s)) for d, s in zip(self.discriminators, self.scales)]
