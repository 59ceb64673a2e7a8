"""Restoring aligned faces with DMDNet: each actor's stored dictionary, generic for unknown faces,
run by the engine asked for (dmdnet.engines), or by eager torch where that engine cannot run."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

import dmdnet
from dmdnet import SpecificDictionary, engines
from dmdnet.images import to_tensor
from film_restore.settings import ENGINE, PRECISION, RESTORE_BATCH

log = logging.getLogger("film_restore.restore")


def load_engine(checkpoint, engine: str = ENGINE, precision: str = PRECISION, device: str = "cpu") -> engines.Engine:
    """dmdnet.engines.load(checkpoint, engine, precision, device); an engine that cannot run here
    (a package, a GPU or a provider missing) is replaced by eager torch with one logged line
    saying why, which also becomes the engine's `reason` (and so the report's)."""
    model = dmdnet.load(checkpoint)
    try:
        return engines.load(model, engine, precision, device=device)
    except engines.EngineUnavailable as error:
        fallback = engines.load(model, "torch", precision, device=device)
        fallback.reason = (f"restore engine {engine} is unavailable here ({' '.join(str(error).split())}); "
                           f"torch {fallback.precision} runs instead")
        log.warning("film_restore: %s", fallback.reason)
        return fallback


class FaceRestorer:
    """DMDNet loaded once with every actor's dictionary; restores batches of aligned faces
    (512 px for the authors' model; a model's image_size in general).

    dictionaries: actor name -> stored SpecificDictionary file. Faces of an actor without a
    dictionary (or of nobody, actor None) get the generic dictionary only. engine, precision:
    see load_engine; `self.engine.describe()` says what runs and why.
    """

    def __init__(self, checkpoint, dictionaries: dict[str, Path], device: str = "cpu", batch: int = RESTORE_BATCH,
                 engine: str = ENGINE, precision: str = PRECISION):
        self.engine = load_engine(checkpoint, engine, precision, device)
        self.image_size = self.engine.image_size
        self.device = torch.device(device)
        self.batch = batch
        self.dictionaries = {}
        for actor, path in dictionaries.items():
            dictionary = SpecificDictionary.load(path)
            if dictionary.fingerprint != self.engine.fingerprint:
                raise ValueError(f"the dictionary of {actor} ({path}) was built with another checkpoint: rebuild the cast")
            self.dictionaries[actor] = dictionary

    def restore(self, crops: np.ndarray, boxes: np.ndarray, actor: str | None) -> np.ndarray:
        """Restored faces, float32 N x S x S x 3 on the 0..255 scale (S: the model's image_size), from uint8 RGB crops and N x 4 x 4 boxes."""
        dictionary = self.dictionaries.get(actor) if actor is not None else None
        restored = []
        for start in range(0, len(crops), self.batch):
            count = min(self.batch, len(crops) - start)
            lq = to_tensor(_full_batch(crops[start : start + count], self.batch)).to(self.device)
            # A copy: arrays that come through Ray's object store are read-only.
            batch_boxes = torch.tensor(_full_batch(boxes[start : start + count], self.batch), device=self.device)
            out = self.engine(lq, batch_boxes, dictionary)[:count]
            restored.append(((out.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).float().cpu().numpy())
        return np.concatenate(restored) if restored else np.zeros((0, self.image_size, self.image_size, 3), np.float32)


def _full_batch(items: np.ndarray, size: int) -> np.ndarray:
    """items filled up to `size` with copies of the last. Every forward pass has the same shape because
    convolutions pick their method by batch size: a face restored with other faces, or again after
    a lost worker, then gives the same bits."""
    return items if len(items) == size else np.concatenate([items, np.repeat(items[-1:], size - len(items), axis=0)])
