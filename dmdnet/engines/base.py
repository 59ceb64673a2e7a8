"""What every engine shares: the model it came from, input checks, the call, its description."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from dmdnet.dictionary import SpecificDictionary
from dmdnet.model import DMDNet, check_dictionary, checked_batch

PRECISIONS = ("float32", "bfloat16", "float16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# auto keeps an engine only if it restores within this PSNR of eager float32 (dB, range [-1, 1]).
MIN_PSNR_DB = 40.0


class EngineUnavailable(RuntimeError):
    """This engine cannot run here (a package, a GPU or a provider is missing); the message says why."""


def psnr_db(output: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of `output` against `reference`, images in [-1, 1] (peak-to-peak 2); inf if equal."""
    mse = (output.detach().float().cpu() - reference.detach().float().cpu()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def model_from(source) -> DMDNet:
    """A DMDNet from a model, a checkpoint path or a state dict (loaded in eval mode on the CPU)."""
    if isinstance(source, DMDNet):
        return source.eval()
    if isinstance(source, (str, Path, dict)):
        from dmdnet.checkpoint import load

        return load(source)
    raise TypeError(f"engines.load takes a DMDNet, a checkpoint path or a state dict, got {type(source).__name__}")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)} or 'auto'")


class Engine:
    """Called like `DMDNet`: engine(lq, boxes, dictionary=None) -> float32 B x 3 x S x S on `device`.

    name, precision, device: what runs; reason: why this engine and precision were chosen
    (for reports). Subclasses implement `run` on checked tensors.
    """

    name = "engine"

    def __init__(self, model: DMDNet, precision: str, device: torch.device, reason: str = ""):
        check_precision(precision)
        self.precision = precision
        self.device = torch.device(device)
        self.reason = reason
        self.fingerprint = model.fingerprint
        self.image_size = model.image_size

    def __call__(self, lq, boxes, dictionary: SpecificDictionary | None = None) -> torch.Tensor:
        lq, boxes = checked_batch(lq, boxes, self.image_size, "lq")
        if dictionary is not None:
            check_dictionary(dictionary, self.fingerprint)
        with torch.inference_mode():
            return self.run(lq.float(), boxes.float(), dictionary).to(self.device, torch.float32)

    def run(self, lq: torch.Tensor, boxes: torch.Tensor, dictionary: SpecificDictionary | None) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        """What a report records: engine, precision, device and why."""
        return {"engine": self.name, "precision": self.precision, "device": str(self.device), "reason": self.reason}

    def __repr__(self) -> str:
        return f"<dmdnet engine {self.name} {self.precision} on {self.device}: {self.reason}>"


class DictionaryTensors:
    """The last dictionary's tensors in the form an engine feeds them, converted once per actor."""

    def __init__(self, convert):
        self._convert = convert
        self._dictionary: SpecificDictionary | None = None
        self._tensors = None

    def __call__(self, dictionary: SpecificDictionary):
        if dictionary is not self._dictionary:
            self._tensors = self._convert(dictionary)
            self._dictionary = dictionary
        return self._tensors
