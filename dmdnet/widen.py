"""A wider DMDNet that starts out computing exactly what a trained narrower one computes.

A network that has stopped improving for lack of channels is better grown than trained
again from scratch: the wide network keeps every weight of the narrow one, so fine-tuning
starts where the narrow one ended and only has to teach the new channels (Net2Net,
Chen et al. 2016, with the new channels' outgoing weights zeroed instead of split).

Every convolution keeps the narrow weights between old channels. A new output channel gets
the wide layer's fresh random filter over all inputs; an old output channel reads nothing
from new inputs (zero weights), so no new channel reaches an old one and the image is
unchanged. Everything else the network does is per channel (activations, residual sums,
AdaIN, the mask blend, the style modulation), except the dictionary read, whose
similarity sums query x key over all channels: new key channels (the key head's last
convolution and the generic dictionary's keys) start at zero, so the similarities are
unchanged, while new query channels are random, which gives the key channels a gradient.
The generic dictionary's new value channels start at zero as well. The zero weights from
new channels into old ones have gradients from the first step; once they move, the new
channels' own weights have gradients too.
"""
from __future__ import annotations

import torch

from dmdnet.model import DMDNet

# Convolutions whose input is a concatenation of equal branches (the mask fusion reads the
# degraded, specific and generic branches; the dilation merge its four dilations): old
# channels keep their place within each branch.
CONCATENATED_INPUTS = {"mask.fuse.0.weight": 3, "ms_dilate.merge.weight": 4}


def channel_positions(narrow: int, wide: int, branches: int = 1) -> torch.Tensor:
    """Indices of a narrow layer's channels among a wide layer's: the first channels of each branch."""
    narrow_branch, wide_branch = narrow // branches, wide // branches
    return torch.cat([torch.arange(narrow_branch) + branch * wide_branch for branch in range(branches)])


def widen(model: DMDNet, width: int, seed: int = 0) -> DMDNet:
    """A DMDNet of `width` channels (and the same dictionary size and image size) whose
    output equals `model`'s; the new channels' random filters are drawn from `seed`."""
    if width <= model.width:
        raise ValueError(f"the new width must be larger than the model's {model.width}, got {width}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wide = DMDNet(width, model.dictionary_size, model.image_size)
    narrow_state = model.state_dict()
    state = wide.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            narrow = narrow_state[name].to(tensor.dtype)
            if narrow.shape == tensor.shape:
                tensor.copy_(narrow)
                continue
            if name.endswith(("generic_key", "generic_value")):
                columns = channel_positions(narrow.shape[1], tensor.shape[1])
                tensor.zero_()
                tensor[:, columns] = narrow
                continue
            rows = channel_positions(narrow.shape[0], tensor.shape[0])
            if name.endswith((".key.2.weight", ".key.2.bias")):
                tensor.zero_()
            if tensor.dim() == 1:
                tensor[rows] = narrow
                continue
            branches = next((n for suffix, n in CONCATENATED_INPUTS.items() if name.endswith(suffix)), 1)
            columns = channel_positions(narrow.shape[1], tensor.shape[1], branches)
            tensor[rows] = 0
            tensor[rows[:, None], columns[None, :]] = narrow
    return wide.train(model.training)
