"""An actor's specific dictionary: keys and values of their reference faces, stored once.

The specific dictionary depends only on the references and the model, never on the
degraded face, so it is built once per actor and reused for every frame of every film.
It is stored as safetensors (no pickle): the tensors, plus metadata naming the model
fingerprint it belongs to and the content hashes of the references it was built from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dmdnet.files import atomic_path

FORMAT = "dmdnet-specific-dictionary/1"


@dataclass
class SpecificDictionary:
    """Keys (N x c/4 x h x w) and values (N x c x h x w) for each of the nine parts."""

    keys: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    fingerprint: str
    reference_hashes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if set(self.keys) != set(self.values):
            raise ValueError("a specific dictionary needs keys and values for the same parts")
        counts = {t.shape[0] for t in (*self.keys.values(), *self.values.values())}
        if len(counts) != 1:
            raise ValueError(f"dictionary parts disagree on the number of references: {sorted(counts)}")

    @property
    def num_references(self) -> int:
        return next(iter(self.keys.values())).shape[0]

    def tensors(self, device=None, dtype=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Keys and values moved to the device and dtype the model runs in."""
        move = lambda tensors: {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}  # noqa: E731
        return move(self.keys), move(self.values)

    def save(self, path) -> None:
        """Writes the dictionary as safetensors, atomically (a temporary file, then a rename)."""
        from safetensors.torch import save_file  # imported on use: inference alone needs only torch

        path = Path(path)
        tensors = {f"{name}.key": t.contiguous().cpu() for name, t in self.keys.items()}
        tensors.update({f"{name}.value": t.contiguous().cpu() for name, t in self.values.items()})
        metadata = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "num_references": str(self.num_references),
            "reference_hashes": json.dumps(self.reference_hashes),
        }
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)

    @classmethod
    def load(cls, path) -> "SpecificDictionary":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no dictionary file at {path}: build one with `python -m dmdnet dictionary`")
        try:
            with safe_open(str(path), framework="pt") as stored:
                metadata = stored.metadata() or {}
                tensors = {name: stored.get_tensor(name) for name in stored.keys()}
        except (SafetensorError, ValueError, OSError) as error:
            raise ValueError(f"{path} is not a DMDNet dictionary file ({error}): rebuild it") from error
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r}): rebuild it")
        keys = {name[: -len(".key")]: t for name, t in tensors.items() if name.endswith(".key")}
        values = {name[: -len(".value")]: t for name, t in tensors.items() if name.endswith(".value")}
        dictionary = cls(keys, values, metadata["fingerprint"], json.loads(metadata["reference_hashes"]))
        if dictionary.num_references != int(metadata["num_references"]):
            raise ValueError(f"{path} is damaged: its tensors do not hold {metadata['num_references']} references")
        return dictionary
