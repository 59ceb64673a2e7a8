"""The network itself in PyTorch: float32, bfloat16 or float16, channels-last, optionally compiled.

Half precisions run the convolutions and matrix products in that type under autocast (the
interpolation matrices built from the boxes stay float32 until they meet the features).
Channels-last applies to the convolution weights and the input only: the dictionaries stay
in the row layout their attention reads use.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from dmdnet.engines.base import DTYPES, DictionaryTensors, Engine, EngineUnavailable
from dmdnet.model import DMDNet


class TorchEngine(Engine):
    name = "torch"

    def __init__(
        self,
        model: DMDNet,
        precision: str = "float32",
        device=None,
        reason: str = "",
        channels_last: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
    ):
        device = torch.device(device or "cpu")
        super().__init__(model, precision, device, reason)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("torch has no CUDA device here: pass device='cpu' or run on a GPU node")
        if cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device: drop cuda_graphs or pass device='cuda'")
        self.dtype = DTYPES[precision]
        self.channels_last = channels_last
        converted = device != next(model.parameters()).device or self.dtype != torch.float32 or channels_last
        # Never change the caller's model: a converted engine owns its copy.
        self.model = copy.deepcopy(model).to(device, self.dtype) if converted else model
        if channels_last:
            for module in self.model.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
        self._restore = self.model.restore
        if compile or cuda_graphs:
            # reduce-overhead captures CUDA graphs; each new batch size or reference count compiles once.
            self._restore = torch.compile(self.model.restore, mode="reduce-overhead" if cuda_graphs else "default")
        self._dictionary = DictionaryTensors(lambda d: d.tensors(device, self.dtype))
        variant = [v for v, on in (("channels-last", channels_last), ("compiled", compile), ("CUDA graphs", cuda_graphs)) if on]
        self.variant = ", ".join(variant) or "eager"

    def run(self, lq, boxes, dictionary):
        lq = lq.to(self.device, self.dtype)
        if self.channels_last:
            lq = lq.contiguous(memory_format=torch.channels_last)
        specific = self._dictionary(dictionary) if dictionary is not None else ()
        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            return self._restore(lq, boxes.to(self.device), *specific)

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "variant": self.variant}
