"""A seeded DMDNet whose activations stay alive through the depth, for speed and precision benches.

Speed does not depend on the weights, but precision does: default initialisation shrinks the
signal layer by layer until every output is the same, which would hide rounding errors. As
the reference's stand-in weights do, each convolution gets spectral norm 1.5 and the generic
dictionaries are standard normal. Needs only torch (runs on a bare GPU node).
"""
import torch
from torch import nn

from dmdnet import DMDNet
from dmdnet.export import example_inputs

GAIN = 1.5


def seeded_model(width: int = 64, dictionary_size: int = 128, seed: int = 0) -> DMDNet:
    generator = torch.Generator().manual_seed(seed)
    model = DMDNet(width=width, dictionary_size=dictionary_size)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                weight = torch.randn(module.weight.shape, generator=generator)
                module.weight.copy_(weight / _spectral_norm(weight.flatten(1), generator) * GAIN)
                module.bias.copy_(0.01 * torch.randn(module.bias.shape, generator=generator))
        for name, parameter in model.named_parameters():
            if name.endswith(("generic_key", "generic_value")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _spectral_norm(matrix: torch.Tensor, generator: torch.Generator, steps: int = 30) -> torch.Tensor:
    """Largest singular value by power iteration (LAPACK's SVD crawls on a busy machine)."""
    vector = torch.randn(matrix.shape[1], generator=generator)
    for _ in range(steps):
        vector = matrix.T @ torch.nn.functional.normalize(matrix @ vector, dim=0)
        vector = torch.nn.functional.normalize(vector, dim=0)
    return (matrix @ vector).norm()


def faces_and_dictionary(model: DMDNet, batch: int, references: int = 8):
    """lq (batch faces with different boxes), boxes and a stored dictionary of `references` faces."""
    lq, boxes = example_inputs(model, batch=batch)
    refs, ref_boxes = example_inputs(model, batch=references)
    return lq, boxes, model.build_dictionary(-refs.flip(3), ref_boxes)
