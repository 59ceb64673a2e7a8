"""Training losses for DMDNet (Li et al., "Learning Dual Memory Dictionaries for Blind Face
Restoration", TPAMI 2022, Eqs. 11-17): pixel, perceptual, style and multi-scale hinge
adversarial terms. Images are B x 3 x H x W RGB in [-1, 1], as the network's output.

Terms (each function returns the term already multiplied by its weight):

- pixel_loss:       w_pixel * mean((restored - target)^2)  (MSE over every element).
- perceptual_loss:  w_perceptual * sum over layers of mean((phi_l(restored) - phi_l(target))^2),
                    i.e. the squared L2 distance of the features divided by B * C * H * W
                    (Johnson et al.'s feature reconstruction loss; squared L2 rather than L1
                    is our reading of the paper, whose text could not be checked here).
- style_loss:       w_style * sum over layers of mean over the batch of
                    ||G_l(restored) - G_l(target)||_F^2, G = F F^T / (C * H * W) with F the
                    C x HW feature matrix (Johnson et al.'s style reconstruction loss). Gram
                    matrices are computed in float32 whatever the feature dtype.
- discriminator_hinge: sum over scales w_s * (mean(relu(1 - D_s(real))) + mean(relu(1 + D_s(fake)))).
- generator_hinge:     sum over scales w_s * (-mean(D_s(fake))).

Features come from a pluggable `FeatureNetwork` (a frozen module mapping an image in [-1, 1]
to a dict or list of feature maps). The paper uses an ImageNet-pretrained VGG-19:
`vgg19_features(path)` builds its feature layers in plain torch (no torchvision) and loads a
file with torchvision's `vgg19` key layout (`features.N.weight` / `.bias`; `classifier.*` keys
are ignored). Nothing is downloaded. Without a weights file (none given, or the path does not
exist) `TrainingLoss` skips the perceptual and style terms: they contribute 0 and the reason is
logged once, when the loss is built, as a warning on the "dmdnet.train" logger.

Weights (`LossWeights`) and where they come from:
- pixel = 300: the paper's lambda for the MSE term;
- adversarial = (4, 1, 0.5) for discriminator scales 1, 1/2, 1/4: the paper's scale weights;
- perceptual = 1 and style = 1: OURS. The paper's values for these two could not be checked
  in this environment; with the normalisations above, calibrate them on the first real run
  from the logged terms (`TrainingLoss` returns every weighted term).
- VGG-19 layers relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, equally weighted: also ours
  (any `conv{b}_{i}` / `relu{b}_{i}` / `pool{b}` name can be chosen).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("dmdnet.train")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's vgg19 "features": channels per conv, "M" for a 2 x 2 max pool.
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
DEFAULT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

Features = Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor], torch.Tensor]


@runtime_checkable
class FeatureNetwork(Protocol):
    """A frozen network: image B x 3 x H x W in [-1, 1] -> feature maps (dict name -> B x C x h x w, or a list)."""

    def __call__(self, image: torch.Tensor) -> Features: ...


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's terms; `adversarial` has one weight per discriminator scale (1, 1/2, 1/4)."""

    pixel: float = 300.0
    perceptual: float = 1.0
    style: float = 1.0
    adversarial: tuple[float, ...] = (4.0, 1.0, 0.5)

    def __post_init__(self):
        adversarial = tuple(self.adversarial)
        for name, value in (("pixel", self.pixel), ("perceptual", self.perceptual), ("style", self.style)) + tuple(
            (f"adversarial[{i}]", v) for i, v in enumerate(adversarial)
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value!r}")
        if not adversarial:
            raise ValueError("LossWeights.adversarial needs one weight per discriminator scale, got none")
        object.__setattr__(self, "adversarial", tuple(float(v) for v in adversarial))
        for name in ("pixel", "perceptual", "style"):
            object.__setattr__(self, name, float(getattr(self, name)))


_DEFAULT = LossWeights()


# --- VGG-19 ------------------------------------------------------------------------------

def vgg19_layer_names() -> list[str]:
    """Names of torchvision's vgg19.features modules by index: conv1_1, relu1_1, conv1_2, ..., pool5."""
    names, block, index = [], 1, 1
    for entry in VGG19_CONFIG:
        if entry == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


def vgg19_state_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of torchvision's vgg19 `features` with its shape (features.0.weight: 64 x 3 x 3 x 3, ...)."""
    shapes, cin, position = {}, 3, 0
    for entry in VGG19_CONFIG:
        if entry == "M":
            position += 1
            continue
        shapes[f"features.{position}.weight"] = (entry, cin, 3, 3)
        shapes[f"features.{position}.bias"] = (entry,)
        cin, position = entry, position + 2
    return shapes


class VGG19Features(nn.Module):
    """VGG-19's feature layers (torchvision's indices), returning the chosen layers' maps by name.

    The input is an RGB image in [-1, 1]; it is mapped to [0, 1] and normalised with the
    ImageNet mean and std inside. Only the layers up to the deepest chosen one are run.
    """

    def __init__(self, layers: Sequence[str] = DEFAULT_LAYERS):
        super().__init__()
        names = vgg19_layer_names()
        layers = tuple(layers)
        unknown = [name for name in layers if name not in names]
        if not layers or unknown:
            raise ValueError(f"unknown VGG-19 layers {unknown or '(none chosen)'}; choose from {names}")
        modules: list[nn.Module] = []
        cin = 3
        for entry in VGG19_CONFIG:
            if entry == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(cin, entry, 3, padding=1), nn.ReLU()]
                cin = entry
        self.features = nn.Sequential(*modules)
        self.layers = layers
        self._index = {name: names.index(name) for name in layers}
        self._last = max(self._index.values())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((image + 1) / 2 - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        wanted = {index: name for name, index in self._index.items()}
        found = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                found[wanted[index]] = x
            if index == self._last:
                break
        return {name: found[name] for name in self.layers}


def vgg19_features(weights_path, layers: Sequence[str] = DEFAULT_LAYERS, map_location="cpu") -> VGG19Features:
    """VGG-19 feature layers with the weights of a torchvision-layout file, frozen and in eval mode.

    The file (`.pth`/`.pt` read with weights_only=True, or `.safetensors`) holds a state dict
    with `features.N.weight` / `features.N.bias` for the 16 convolutions (N = 0, 2, 5, 7, 10,
    12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34), e.g. torchvision's `vgg19-dcbb9e9d.pth`;
    other keys (`classifier.*`) are ignored, a missing or mis-shaped features key is an error.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"no VGG-19 weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(map_location))
    else:
        state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} must hold a state dict of tensors, got {type(state).__name__}")
    if state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = vgg19_state_shapes()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if str(k).startswith("features.") and k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {shape})"
        for k, shape in expected.items()
        if k in state and (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != shape)
    ]
    if missing or unexpected or misshaped:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if keys
        ]
        raise ValueError(f"{path} is not a torchvision vgg19 state dict: " + "; ".join(problems))
    network = VGG19Features(layers)
    network.load_state_dict({k: state[k].to(torch.float32) for k in expected}, strict=True)
    network.requires_grad_(False).eval()
    return network.to(map_location)


# --- loss terms ---------------------------------------------------------------------------

def _check_images(restored: torch.Tensor, target: torch.Tensor) -> None:
    if restored.shape != target.shape or restored.ndim != 4:
        raise ValueError(f"restored and target must be B x C x H x W batches of one shape, got {tuple(restored.shape)} and {tuple(target.shape)}")


def pixel_loss(restored: torch.Tensor, target: torch.Tensor, weight: float = _DEFAULT.pixel) -> torch.Tensor:
    """weight * MSE over every element (the paper's lambda = 300 by default)."""
    _check_images(restored, target)
    return weight * F.mse_loss(restored, target)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """B x C x C Gram matrices F F^T / (C * H * W) of B x C x H x W features, in float32."""
    if features.ndim != 4:
        raise ValueError(f"gram_matrix needs B x C x H x W features, got shape {tuple(features.shape)}")
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w).float()
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def _feature_list(output: Features) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return list(output.values())
    if isinstance(output, Sequence):
        return list(output)
    raise TypeError(f"a feature network must return a dict or list of feature maps, got {type(output).__name__}")


def feature_losses(
    restored: torch.Tensor,
    target: torch.Tensor,
    network: FeatureNetwork,
    perceptual_weight: float = _DEFAULT.perceptual,
    style_weight: float = _DEFAULT.style,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perceptual, style) from one pass of each image through the network; the target's without gradients."""
    _check_images(restored, target)
    ours = _feature_list(network(restored))
    with torch.no_grad():
        theirs = _feature_list(network(target))
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"the feature network gave {len(ours)} and {len(theirs)} feature maps for the two images")
    perceptual = restored.new_zeros((), dtype=torch.float32)
    style = restored.new_zeros((), dtype=torch.float32)
    for a, b in zip(ours, theirs):
        if perceptual_weight:
            perceptual = perceptual + F.mse_loss(a.float(), b.float())
        if style_weight:
            style = style + (gram_matrix(a) - gram_matrix(b)).pow(2).sum(dim=(1, 2)).mean()
    return perceptual_weight * perceptual, style_weight * style


def perceptual_loss(restored, target, network: FeatureNetwork, weight: float = _DEFAULT.perceptual) -> torch.Tensor:
    """weight * sum over the network's layers of the features' MSE (see the module notes)."""
    return feature_losses(restored, target, network, weight, 0.0)[0]


def style_loss(restored, target, network: FeatureNetwork, weight: float = _DEFAULT.style) -> torch.Tensor:
    """weight * sum over layers of the batch mean of ||Gram(restored) - Gram(target)||_F^2."""
    return feature_losses(restored, target, network, 0.0, weight)[1]


def _scale_weights(weights) -> tuple[float, ...]:
    return weights.adversarial if isinstance(weights, LossWeights) else tuple(float(w) for w in weights)


def _check_logits(logits, weights: tuple[float, ...], what: str) -> list[torch.Tensor]:
    if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence):
        raise TypeError(f"{what} must be a list of per-scale logit maps, got {type(logits).__name__}")
    if len(logits) != len(weights):
        raise ValueError(f"{what} has {len(logits)} scales but there are {len(weights)} scale weights {weights}")
    return list(logits)


def discriminator_hinge(real_logits, fake_logits, weights=_DEFAULT.adversarial) -> torch.Tensor:
    """sum_s w_s * (mean(relu(1 - real_s)) + mean(relu(1 + fake_s))); fake logits from a detached restoration."""
    weights = _scale_weights(weights)
    real = _check_logits(real_logits, weights, "real_logits")
    fake = _check_logits(fake_logits, weights, "fake_logits")
    return sum(w * (F.relu(1 - r).mean() + F.relu(1 + f).mean()) for w, r, f in zip(weights, real, fake))


def generator_hinge(fake_logits, weights=_DEFAULT.adversarial) -> torch.Tensor:
    """sum_s w_s * (-mean(fake_s))."""
    weights = _scale_weights(weights)
    fake = _check_logits(fake_logits, weights, "fake_logits")
    return sum(w * -f.mean() for w, f in zip(weights, fake))


# --- the combination ----------------------------------------------------------------------

class TrainingLoss(nn.Module):
    """The generator's total loss and the discriminator's hinge loss, with named terms for logging.

    feature_network: any `FeatureNetwork` (frozen here: no gradients to its parameters, kept
    in eval mode); else `vgg19_weights`, a path to a torchvision-layout VGG-19 file. With
    neither (or a path that does not exist) the perceptual and style terms are 0 and
    `skip_reason` says why (logged once, here). The feature network is a submodule, so
    `.to(device)` moves it along.

        total, terms = loss(restored, target, discriminator(restored))      # generator step
        d_total, d_terms = loss.discriminator_loss(discriminator(target),
                                                   discriminator(restored.detach()))
    """

    def __init__(
        self,
        weights: LossWeights = _DEFAULT,
        feature_network: FeatureNetwork | None = None,
        vgg19_weights=None,
        layers: Sequence[str] = DEFAULT_LAYERS,
    ):
        super().__init__()
        if not isinstance(weights, LossWeights):
            raise TypeError(f"weights must be LossWeights, got {type(weights).__name__}")
        self.weights = weights
        self.skip_reason: str | None = None
        if feature_network is None and (weights.perceptual or weights.style):
            if vgg19_weights is None:
                self.skip_reason = "no VGG-19 weights file was given"
            elif not Path(vgg19_weights).is_file():
                self.skip_reason = f"the VGG-19 weights file {vgg19_weights} does not exist"
            else:
                feature_network = vgg19_features(vgg19_weights, layers)
            if self.skip_reason:
                logger.warning("perceptual and style losses skipped (they contribute 0): %s", self.skip_reason)
        elif feature_network is None:
            self.skip_reason = "the perceptual and style weights are 0"
        if isinstance(feature_network, nn.Module):
            feature_network.requires_grad_(False).eval()
        self.feature_network = feature_network

    def train(self, mode: bool = True):
        super().train(mode)
        if isinstance(self.feature_network, nn.Module):
            self.feature_network.eval()
        return self

    def forward(self, restored: torch.Tensor, target: torch.Tensor, fake_logits=None) -> tuple[torch.Tensor, dict[str, float]]:
        """(total, terms) for the generator; fake_logits None leaves the adversarial term out (0)."""
        w = self.weights
        pixel = pixel_loss(restored, target, w.pixel)
        zero = pixel.new_zeros(())
        if self.feature_network is not None and (w.perceptual or w.style):
            perceptual, style = feature_losses(restored, target, self.feature_network, w.perceptual, w.style)
        else:
            perceptual = style = zero
        adversarial = generator_hinge(fake_logits, w.adversarial) if fake_logits is not None else zero
        total = pixel + perceptual + style + adversarial
        names = ("pixel", "perceptual", "style", "adversarial", "total")
        values = torch.stack([t.detach().float() for t in (pixel, perceptual, style, adversarial, total)]).tolist()
        return total, dict(zip(names, values))

    def discriminator_loss(self, real_logits, fake_logits) -> tuple[torch.Tensor, dict[str, float]]:
        """(hinge loss, terms): terms has the loss and the mean real and fake logit of each scale."""
        total = discriminator_hinge(real_logits, fake_logits, self.weights.adversarial)
        names, values = ["discriminator"], [total.detach().float()]
        for i, (r, f) in enumerate(zip(real_logits, fake_logits)):
            names += [f"real_logit_{i}", f"fake_logit_{i}"]
            values += [r.detach().float().mean(), f.detach().float().mean()]
        return total, dict(zip(names, torch.stack(values).tolist()))
