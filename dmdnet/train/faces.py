"""Training samples: the held-out split of identities, and each step's degraded faces with references."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from dmdnet.boxes import mirrored_boxes
from dmdnet.data import PreparedFaces
from dmdnet.degradations import degrade, sample_params
from dmdnet.images import to_tensor
from dmdnet.train.config import ConfigError


def split_identities(identities, heldout_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) identities: held out when the name's sha256 falls below the
    fraction, so the split is the same on every machine and does not shift when identities are added."""
    def position(identity: str) -> float:
        return int(hashlib.sha256(identity.encode()).hexdigest()[:12], 16) / 16**12

    heldout = sorted(i for i in identities if position(i) < heldout_fraction)
    return sorted(set(identities) - set(heldout)), heldout


class TrainingFaces:
    """Training samples of a prepared folder: each face degraded (Eq. 19), with up to
    `references` other photos of its person; sample i of epoch e is the same on every run.
    With `flip`, every face and reference is mirrored with probability 1/2 (by its own
    generator, so a run's degradations are the same with and without)."""

    def __init__(self, faces: PreparedFaces, identities, references: int, seed: int, flip: bool = False):
        self.faces = faces
        self.flip = flip
        self.items = [(identity, name) for identity in identities for name in faces.identities[identity]]
        if not self.items:
            raise ConfigError(f"no training faces in {faces.folder} (every identity is held out?)")
        self.references = references
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.items))

    def sample(self, position: int, references: bool = True) -> dict[str, torch.Tensor]:
        """The sample at this position of the endless shuffled stream (with its references
        when asked: only the specific phase reads them)."""
        epoch, offset = divmod(position, len(self.items))
        index = int(self.order(epoch)[offset])
        identity, name = self.items[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        mirror = np.random.default_rng([self.seed, epoch, index, 1]).random(1 + self.references) < 0.5 if self.flip else None
        size = self.faces.size

        def crop_and_boxes(other: str, slot: int) -> tuple[np.ndarray, np.ndarray]:
            face = self.faces.face(identity, other)
            if mirror is not None and mirror[slot]:
                return np.ascontiguousarray(face.crop[:, ::-1]), mirrored_boxes(face.boxes, size)
            return face.crop, face.boxes

        crop, boxes = crop_and_boxes(name, 0)
        refs = torch.zeros(self.references, 3, size, size)
        ref_boxes = torch.zeros(self.references, 4, 4, dtype=torch.int64)
        others = [other for other in self.faces.identities[identity] if other != name]
        count = int(rng.integers(0, min(self.references, len(others)) + 1)) if self.references else 0
        chosen = rng.choice(others, count, replace=False) if count else []
        count = count if references else 0
        for slot, other in enumerate(chosen[:count]):
            reference, reference_boxes = crop_and_boxes(str(other), 1 + slot)
            refs[slot] = to_tensor([reference])[0]
            ref_boxes[slot] = torch.from_numpy(reference_boxes)
        lq = degrade(crop, sample_params(rng), rng)
        return {
            "lq": to_tensor([lq])[0],
            "hq": to_tensor([crop])[0],
            "boxes": torch.from_numpy(boxes),
            "refs": refs,
            "ref_boxes": ref_boxes,
            "ref_count": torch.tensor(count),
        }

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1, references: bool = True) -> dict[str, torch.Tensor]:
        """This worker's share of the global batch of a step."""
        first = (step * world + rank) * batch_size
        samples = [self.sample(first + i, references) for i in range(batch_size)]
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
