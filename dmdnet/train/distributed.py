"""What every worker computes alike: averages over Ray Train's workers (gradients, the
dictionary's moving-average statistics) and the convolutions kept in float32 under bfloat16."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(tensors) -> None:
    import torch.distributed as dist

    if is_distributed():
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor /= dist.get_world_size()


def average_gradients(parameters) -> None:
    """Gradients averaged over workers; a parameter that got none on one worker (e.g. the
    mask when its samples had no references) counts as 0 there, so every worker reduces the same tensors."""
    if is_distributed():
        parameters = [p for p in parameters if p.requires_grad]
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        all_reduce_mean([p.grad for p in parameters])


def unsafe_bfloat16_convolutions(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    """The dilated convolutions whose channels are not a multiple of 16: on the CPU, oneDNN's
    bfloat16 channels-last weight gradient of these is not finite (torch 2.13; width 20's
    20- and 40-channel encoder residuals), though their outputs and input gradients are right."""
    return [module for module in model.modules() if isinstance(module, torch.nn.Conv2d) and max(module.dilation) > 1
            and (module.in_channels % 16 or module.out_channels % 16)]


def run_in_float32(convolutions: list[torch.nn.Conv2d]) -> None:
    """Makes these convolutions compute in float32 under bfloat16 autocast."""
    def forward(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x.float(), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    for conv in convolutions:
        conv.forward = forward.__get__(conv)
