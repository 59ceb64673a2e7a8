"""Training DMDNet in the paper's stages, on Ray Train.

The stages follow the paper's outline (three-stage generic dictionary, then the specific
branch); the paper's full text could not be read here, so the details below (k-means,
the VQ-VAE-style moving average, the query loss) are our choices and say so.

    python -m dmdnet.train config.yaml            (also under `ray job submit -- ...`)
    python -m dmdnet.train config.yaml --snapshot MODEL.safetensors
                                                  (the model at the newest checkpoint; no training)

One run goes through four phases, each resumable from Ray Train checkpoints:

1. initialize: the generic dictionary of every part is set from `initialize_faces` (Y)
   high-quality faces: k-means over the keys of their component crops (key head on the
   E_lq features of the ground truth), values averaged over the same clusters. A fine-tune
   (`initial_weights`: DMDNet.pth or a trained .safetensors) loads every weight instead,
   and usually sets forward_steps to 0.
2. forward (`forward_steps`): the network learns at `learning_rate`; the dictionary is
   not a parameter but follows the ground-truth features by moving averages: each
   ground-truth key goes to its most similar item (the read's similarity) and every item
   becomes the decayed average of what was assigned to it (the VQ-VAE update, with
   Laplace-smoothed counts). A query loss pulls the degraded face's queries onto the
   ground truth's keys, so the read finds the item the ground truth would have.
3. backward (`backward_steps`): the dictionary becomes a parameter at
   `dictionary_learning_rate` (2e-6) beside the network at `learning_rate`.
4. specific (`specific_steps`): the generic dictionary is frozen; the specific extractor
   E_hq starts as a copy of the generic one (E_lq, whose features built the generic
   dictionary, so both dictionaries start in one feature space) and learns with the key,
   value and mask heads from references: every sample of a batch has 0..`references`
   other photos of its person (0: the generic path).

Adam (0.5, 0.999) everywhere; each phase's learning rates are halved when the mean loss
of `plateau_steps` steps has not improved for `plateau_patience` such windows. With
`weight_average_decay` (e.g. 0.999, as BasicSR's EMA) the run also keeps a moving average
of every weight and saves that as its model: it smooths the noise of small batches. Losses:
dmdnet.losses (pixel, perceptual/style when VGG-19 weights are given, hinge adversarial
when `discriminator_width` > 0) plus the query loss in the generic phases.

`precision: bfloat16` runs the network and losses under bfloat16 autocast (weights,
gradients and Adam stay float32): with the channels-last layout every run uses, a step
takes half the time of plain float32 on a CPU with AVX512-BF16 (BENCHMARKS.md), and GPUs
want it too. The default is float32.

Ray Train: a TorchTrainer with ScalingConfig(num_workers, use_gpu) runs `train_loop` on
every worker; gradients and the moving-average statistics are averaged over workers.
Every step's metrics are appended to OUTPUT/metrics.jsonl (rank 0) and reported to Ray
Train as means over `report_every` steps (a report waits on the controller: reporting
every step doubled the step time of the CPU run); checkpoints every `checkpoint_every`
steps and at phase ends, into OUTPUT/ray_train.
A worker that dies is restarted from the newest checkpoint (`max_failures`); running
the command again with the same output resumes the run the same way. The YAML may
change between the two: a new learning rate replaces the checkpoint's (which the plateau
rule may have halved) and restarts the plateau count; the steps of a phase not yet
finished may change (fewer than done ends it). Settings the run cannot continue under (the
network, data, split, seed, start, a finished phase's length) are refused before Ray
starts. The trained network is written to OUTPUT/model.safetensors under the authors'
key names (fp16 by default), loadable by dmdnet.load and the film pipeline's
--checkpoint.

Samples: every face of the training identities in a seeded endless shuffle, degraded by
Eq. 19 with its own draws; `horizontal_flip` (default on) mirrors each face and each
reference with probability 1/2, their component boxes with them (eyes swapped).

Identities whose name hashes below `heldout_fraction` are never trained on; they are
listed in OUTPUT/heldout_identities.txt for `python -m dmdnet evaluate --identities`.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dmdnet
from dmdnet.boxes import mirrored_boxes
from dmdnet.checkpoint import CheckpointError, save_checkpoint
from dmdnet.data import PreparedFaces
from dmdnet.degradations import degrade, sample_params
from dmdnet.discriminator import MultiScaleDiscriminator
from dmdnet.files import atomic_path
from dmdnet.images import to_tensor
from dmdnet.losses import LossWeights, TrainingLoss
from dmdnet.model import DMDNet

STATE_FILE = "state.pt"
RUN_NAME = "ray_train"
KMEANS_ITERATIONS = 10
MAX_SKIPPED_STEPS = 10
LAPLACE_EPSILON = 1e-5
PHASES = ("forward", "backward", "specific")
# What a resumed run must keep: the network, its data and split, where it started. Rates,
# the lengths of phases not yet finished, reporting and workers may change between runs.
FIXED_ON_RESUME = ("width", "dictionary_size", "discriminator_width", "data", "heldout_fraction", "seed",
                   "initial_weights", "initialize_faces")


class ConfigError(ValueError):
    """A training configuration that cannot run, named by file and field."""


@dataclass(frozen=True)
class TrainConfig:
    data: str                           # a `python -m dmdnet.data prepare` folder
    output: str                         # run folder: checkpoints, metrics, model
    width: int = 16
    dictionary_size: int = 128
    batch_size: int = 4
    references: int = 3                 # most references of a sample in the specific phase
    initialize_faces: int = 512         # Y
    initial_weights: str | None = None  # a checkpoint to fine-tune: replaces the initialize phase
    forward_steps: int = 1000
    backward_steps: int = 500
    specific_steps: int = 500
    moving_average_decay: float = 0.99
    weight_average_decay: float = 0.0   # > 0: the saved model is this moving average of the weights
    learning_rate: float = 2e-4
    dictionary_learning_rate: float = 2e-6
    betas: tuple[float, float] = (0.5, 0.999)
    plateau_steps: int = 500            # 100-step windows of a batch-4 loss: noise halved the rate
    plateau_patience: int = 3
    pixel_weight: float = 300.0
    perceptual_weight: float = 1.0
    style_weight: float = 1.0
    adversarial_weights: tuple[float, ...] = (4.0, 1.0, 0.5)
    query_weight: float = 1.0
    vgg19_weights: str | None = None
    discriminator_width: int = 0        # 0: no discriminator, no adversarial loss
    heldout_fraction: float = 0.1
    checkpoint_every: int = 100
    report_every: int = 10              # steps per Ray Train report (each costs a round trip)
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1            # also the worker's torch threads
    max_failures: int = 3
    seed: int = 0
    save_dtype: str = "float16"
    precision: str = "float32"          # or bfloat16: autocast (see the module notes)
    horizontal_flip: bool = True        # mirror half the training faces (and references)

    def __post_init__(self):
        positive = ("width", "dictionary_size", "batch_size", "initialize_faces", "plateau_steps", "checkpoint_every", "report_every", "num_workers",
                    "cpus_per_worker")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("forward_steps", "backward_steps", "specific_steps", "references", "max_failures", "plateau_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.initialize_faces < self.dictionary_size:
            raise ConfigError(f"initialize_faces ({self.initialize_faces}) must be at least dictionary_size ({self.dictionary_size})")
        if not 0 <= self.weight_average_decay < 1:
            raise ConfigError(f"weight_average_decay must be in [0, 1) (0: no average), got {self.weight_average_decay}")
        if not 0 < self.moving_average_decay < 1:
            raise ConfigError(f"moving_average_decay must be in (0, 1), got {self.moving_average_decay}")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.precision not in ("float32", "bfloat16"):
            raise ConfigError(f"precision must be float32 or bfloat16, got {self.precision!r}")
        if self.save_dtype not in ("float16", "float32"):
            raise ConfigError(f"save_dtype must be float16 or float32, got {self.save_dtype!r}")

    @property
    def total_steps(self) -> int:
        return self.forward_steps + self.backward_steps + self.specific_steps

    def phase(self, step: int) -> str:
        """The phase a (0-based) optimisation step belongs to."""
        if step < self.forward_steps:
            return "forward"
        if step < self.forward_steps + self.backward_steps:
            return "backward"
        return "specific"

    def loss_weights(self) -> LossWeights:
        return LossWeights(self.pixel_weight, self.perceptual_weight, self.style_weight, tuple(self.adversarial_weights))


def load_config(path) -> TrainConfig:
    """The YAML file's settings (unknown or mistyped fields are errors naming the field);
    relative `data`, `output`, `vgg19_weights` and `initial_weights` are relative to the file's folder."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read training config {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of settings (data: ..., output: ...)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    missing = [name for name in ("data", "output") if name not in raw]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)} (the prepared data folder and the run folder)")
    values = {}
    for name, value in raw.items():
        default = fields[name].default
        try:
            if name in ("data", "output", "vgg19_weights", "initial_weights"):
                value = None if value is None else str((path.parent / str(value)).resolve())
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise TypeError
            elif isinstance(default, int):
                if isinstance(value, bool) or int(value) != value:
                    raise TypeError
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, tuple):
                value = tuple(float(v) for v in value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{path}: {name} must be like {default!r}, got {value!r}") from error
        values[name] = value
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


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


def _kmeans(points: torch.Tensor, clusters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres, assignment) of points N x D; clusters that empty keep their seed point."""
    centres = points[torch.randperm(points.shape[0], generator=generator)[:clusters]].clone()
    for _ in range(KMEANS_ITERATIONS):
        assignment = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=clusters).to(points.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres, torch.cdist(points, centres).argmin(dim=1)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_mean(tensors) -> None:
    import torch.distributed as dist

    if _distributed():
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor /= dist.get_world_size()


def _average_gradients(parameters) -> None:
    """Gradients averaged over workers; a parameter that got none on one worker (e.g. the
    mask when its samples had no references) counts as 0 there, so every worker reduces the same tensors."""
    if _distributed():
        parameters = [p for p in parameters if p.requires_grad]
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        _all_reduce_mean([p.grad for p in parameters])


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


class Training:
    """The model, discriminator, losses and optimisers of one worker, phase by phase."""

    def __init__(self, config: TrainConfig, image_size: int, device: torch.device):
        self.config = config
        self.device = device
        # Channels-last convolutions are 1.3x faster on the CPU (oneDNN) and suit tensor cores.
        self.model = DMDNet(config.width, config.dictionary_size, image_size).to(device, memory_format=torch.channels_last).train()
        if device.type == "cpu" and config.precision == "bfloat16":
            run_in_float32(unsafe_bfloat16_convolutions(self.model))
        self.discriminator = (
            MultiScaleDiscriminator(width=config.discriminator_width).to(device).train()
            if config.discriminator_width else None
        )
        self.loss = TrainingLoss(config.loss_weights(), vgg19_weights=config.vgg19_weights).to(device)
        # Moving-average statistics of the forward stage: per part, counts N and sums of keys and values.
        self.averages: dict[str, dict[str, torch.Tensor]] = {}
        self.phase: str | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.discriminator_optimizer: torch.optim.Adam | None = None
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.window: list[float] = []
        self.skipped = 0  # consecutive steps skipped for non-finite gradients
        # The weights' moving average (weight_average_decay); starts at the first step's weights.
        self.weight_average: dict[str, torch.Tensor] | None = None

    # --- phases ----------------------------------------------------------------------------

    def network_parameters(self, phase: str) -> list[torch.nn.Parameter]:
        """What learns at the network's rate in a phase (the dictionary never does)."""
        model = self.model
        excluded = {id(p) for part in model.parts.values() for p in (part.generic_key, part.generic_value)}
        if phase in ("forward", "backward"):
            # E_hq and the mask serve only the specific read; key and value heads only
            # describe the ground truth for the dictionary, whose update is not a gradient.
            excluded |= {id(p) for p in model.encoder_hq.parameters()}
            for part in model.parts.values():
                excluded |= {id(p) for module in (part.mask, part.key, part.value) for p in module.parameters()}
        return [p for p in model.parameters() if id(p) not in excluded]

    def dictionary_parameters(self) -> list[torch.nn.Parameter]:
        return [p for part in self.model.parts.values() for p in (part.generic_key, part.generic_value)]

    def enter(self, phase: str, optimizer_state: dict | None = None) -> None:
        """Sets what learns in `phase` and builds its optimisers (restoring their state when given)."""
        config = self.config
        self.model.requires_grad_(False)
        network = self.network_parameters(phase)
        for parameter in network:
            parameter.requires_grad_(True)
        groups = [{"params": network, "lr": config.learning_rate, "name": "network"}]
        if phase == "backward":
            dictionary = self.dictionary_parameters()
            for parameter in dictionary:
                parameter.requires_grad_(True)
            groups.append({"params": dictionary, "lr": config.dictionary_learning_rate, "name": "dictionary"})
        self.optimizer = torch.optim.Adam(groups, betas=tuple(config.betas))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=config.plateau_patience)
        if self.discriminator is not None:
            self.discriminator_optimizer = torch.optim.Adam(
                self.discriminator.parameters(), lr=config.learning_rate, betas=tuple(config.betas))
        if phase == "forward" and not self.averages:
            self._start_averages()
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state["optimizer"])
            self.scheduler.load_state_dict(optimizer_state["scheduler"])
            if self.discriminator_optimizer is not None:
                self.discriminator_optimizer.load_state_dict(optimizer_state["discriminator_optimizer"])
            self.window = list(optimizer_state["window"])
        else:
            self.window = []
        self.phase = phase

    def copy_generic_extractor(self) -> None:
        """Start of the specific phase: E_hq becomes a copy of E_lq."""
        self.model.encoder_hq.load_state_dict(self.model.encoder_lq.state_dict())
        if self.weight_average is not None:
            for name in self.model.encoder_hq.state_dict():
                self.weight_average[f"encoder_hq.{name}"].copy_(self.weight_average[f"encoder_lq.{name}"])

    def start(self, faces: TrainingFaces) -> str:
        """Phase 1 of a new run: the generic dictionary from k-means, or every weight from
        `initial_weights` when fine-tuning. Returns what was done, for the log."""
        config = self.config
        if config.initial_weights:
            self.model.load_state_dict(initial_model(config, self.model.image_size).state_dict())
            return f"started from the weights of {config.initial_weights}"
        self.initialize_dictionary(faces)
        return f"initialised the generic dictionary from {config.initialize_faces} faces"

    # --- the generic dictionary ---------------------------------------------------------------

    def ground_truth_features(self, hq: torch.Tensor, boxes: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per part: (key, value) of the ground truth's component crops, on E_lq features."""
        keys, values = self.model.dictionary_tensors(hq, boxes, extractor=self.model.encoder_lq)
        return {name: (keys[name], values[name]) for name in keys}

    @torch.no_grad()
    def initialize_dictionary(self, faces: TrainingFaces) -> None:
        """Phase 1: k-means of Y high-quality faces' keys; values averaged per cluster."""
        config = self.config
        keys: dict[str, list[torch.Tensor]] = {name: [] for name in self.model.parts}
        values: dict[str, list[torch.Tensor]] = {name: [] for name in self.model.parts}
        positions = range(0, config.initialize_faces, config.batch_size)
        for first in positions:
            count = min(config.batch_size, config.initialize_faces - first)
            samples = [faces.sample(first + i, references=False) for i in range(count)]
            hq = torch.stack([s["hq"] for s in samples]).to(self.device)
            boxes = torch.stack([s["boxes"] for s in samples]).to(self.device)
            for name, (key, value) in self.ground_truth_features(hq, boxes).items():
                keys[name].append(key.cpu())
                values[name].append(value.cpu())
        generator = torch.Generator().manual_seed(config.seed)
        for name, part in self.model.parts.items():
            key, value = torch.cat(keys[name]), torch.cat(values[name])
            centres, assignment = _kmeans(key.flatten(1), config.dictionary_size, generator)
            sums = torch.zeros(config.dictionary_size, value[0].numel()).index_add_(0, assignment, value.flatten(1))
            counts = torch.bincount(assignment, minlength=config.dictionary_size)[:, None]
            nearest = torch.cdist(centres, key.flatten(1)).argmin(dim=1)
            item_values = torch.where(counts > 0, sums / counts.clamp(min=1), value.flatten(1)[nearest])
            part.generic_key.data.copy_(centres.view_as(part.generic_key))
            part.generic_value.data.copy_(item_values.view_as(part.generic_value))

    def _start_averages(self) -> None:
        for name, part in self.model.parts.items():
            self.averages[name] = {
                "count": torch.ones(part.generic_key.shape[0], device=self.device),
                "key": part.generic_key.detach().flatten(1).clone(),
                "value": part.generic_value.detach().flatten(1).clone(),
            }

    @torch.no_grad()
    def update_dictionary(self, ground_truth: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Phase 2: every item moves towards the ground-truth features assigned to it."""
        decay = self.config.moving_average_decay
        for name, part in self.model.parts.items():
            key, value = (t.detach().flatten(1).float() for t in ground_truth[name])
            items = part.generic_key.shape[0]
            assignment = F.one_hot((key @ part.generic_key.flatten(1).T).argmax(dim=1), items).to(key.dtype)
            counts, key_sums, value_sums = assignment.sum(0), assignment.T @ key, assignment.T @ value
            _all_reduce_mean([counts, key_sums, value_sums])
            average = self.averages[name]
            average["count"].mul_(decay).add_(counts, alpha=1 - decay)
            average["key"].mul_(decay).add_(key_sums, alpha=1 - decay)
            average["value"].mul_(decay).add_(value_sums, alpha=1 - decay)
            total = average["count"].sum()
            smoothed = (average["count"] + LAPLACE_EPSILON) / (total + items * LAPLACE_EPSILON) * total
            part.generic_key.copy_((average["key"] / smoothed[:, None]).view_as(part.generic_key))
            part.generic_value.copy_((average["value"] / smoothed[:, None]).view_as(part.generic_value))

    # --- one step ---------------------------------------------------------------------------

    def restore_generic(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The network's output with generic reads, and every part's crop of the degraded
        face's features (the query loss reads them: the encoder runs once per step)."""
        model = self.model
        features, windows = model.encoder_lq(batch["lq"]), model.windows(batch["boxes"])
        return model.decode(features, model.read_parts(features, windows)), model.part_crops(features, windows)

    def restore_specific(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each sample restored with its own references (samples without references take the generic path)."""
        model = self.model
        outputs = []
        for i, count in enumerate(batch["ref_count"].tolist()):
            lq, boxes = batch["lq"][i : i + 1], batch["boxes"][i : i + 1]
            if count:
                keys, values = model.dictionary_tensors(batch["refs"][i, :count], batch["ref_boxes"][i, :count])
                outputs.append(model.restore(lq, boxes, keys, values))
            else:
                outputs.append(model.restore(lq, boxes))
        return torch.cat(outputs)

    def query_loss(self, crops: dict[str, torch.Tensor], ground_truth) -> torch.Tensor:
        """Mean squared distance of the degraded face's queries to the ground truth's keys."""
        losses = [F.mse_loss(part.query(crops[name]), ground_truth[name][0].detach())
                  for name, part in self.model.parts.items()]
        return torch.stack(losses).mean()

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        batch = {key: self._placed(value) for key, value in batch.items()}
        generic = self.phase in ("forward", "backward")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            if generic:
                restored, crops = self.restore_generic(batch)
            else:
                restored = self.restore_specific(batch)
            restored = restored.float()
            fake_logits = self.discriminator(restored) if self.discriminator is not None else None
            total, terms = self.loss(restored, batch["hq"], fake_logits)
            ground_truth = None
            if generic:
                with torch.no_grad():
                    ground_truth = self.ground_truth_features(batch["hq"], batch["boxes"])
                query = self.query_loss(crops, ground_truth) * self.config.query_weight
                total = total + query
                terms["query"] = float(query.detach())
                terms["total"] = float(total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        _average_gradients(parameters)
        # A non-finite loss or gradient would put NaN into every weight: that step is skipped
        # (every worker sees the same averaged gradients, so all skip it together).
        if not all(torch.isfinite(p.grad).all() for p in parameters if p.grad is not None):
            self.skipped += 1
            if self.skipped > MAX_SKIPPED_STEPS:
                raise FloatingPointError(
                    f"the loss or its gradients were not finite for {self.skipped} steps in a row ({self.phase} phase): "
                    "lower learning_rate in the config and run again (it resumes from the last checkpoint)")
            return {**terms, "skipped": 1.0}
        self.skipped = 0
        self.optimizer.step()
        if self.phase == "forward":
            self.update_dictionary(ground_truth)
        self._average_weights()
        if self.discriminator is not None:
            real_logits, fake_logits = self.discriminator(batch["hq"]), self.discriminator(restored.detach())
            d_total, d_terms = self.loss.discriminator_loss(real_logits, fake_logits)
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            d_total.backward()
            _average_gradients(self.discriminator.parameters())
            self.discriminator_optimizer.step()
            terms.update(d_terms)
        self.window.append(terms["total"])
        if len(self.window) >= self.config.plateau_steps:
            self.scheduler.step(sum(self.window) / len(self.window))
            self.window = []
        for group in self.optimizer.param_groups:
            terms[f"lr_{group['name']}"] = group["lr"]
        return terms

    @torch.no_grad()
    def _average_weights(self) -> None:
        decay = self.config.weight_average_decay
        if not decay:
            return
        if self.weight_average is None:
            self.weight_average = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}
            return
        for name, tensor in self.model.state_dict().items():
            self.weight_average[name].lerp_(tensor, 1 - decay)

    def final_weights(self) -> dict[str, torch.Tensor]:
        """What the run's model is: the weights' moving average when one is kept."""
        return self.weight_average if self.weight_average is not None else self.model.state_dict()

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        """On the training device; images in the model's channels-last layout."""
        tensor = tensor.to(self.device)
        return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 and tensor.is_floating_point() else tensor

    # --- checkpoints ----------------------------------------------------------------------------

    def state(self, step: int) -> dict:
        return {
            "step": step,
            "phase": self.phase,
            "model": self.model.state_dict(),
            "discriminator": self.discriminator.state_dict() if self.discriminator is not None else None,
            "averages": self.averages,
            "weight_average": self.weight_average,
            "optimizer_state": self.optimizer_state(),
            "config": dataclasses.asdict(self.config),
        }

    def optimizer_state(self) -> dict | None:
        if self.optimizer is None:
            return None
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "discriminator_optimizer": self.discriminator_optimizer.state_dict() if self.discriminator_optimizer else None,
            "window": list(self.window),
        }

    def load(self, state: dict) -> int:
        """Restores a checkpoint; returns the next step to run."""
        self.model.load_state_dict(state["model"])
        if self.discriminator is not None and state["discriminator"] is not None:
            self.discriminator.load_state_dict(state["discriminator"])
        self.averages = {name: {k: v.to(self.device) for k, v in average.items()} for name, average in state["averages"].items()}
        average = state.get("weight_average")
        self.weight_average = {name: tensor.to(self.device) for name, tensor in average.items()} if average else None
        if state["phase"] in PHASES:
            self.enter(state["phase"], state["optimizer_state"])
            self._apply_changed_rates(state["config"])
        else:
            self.phase = state["phase"]
        return state["step"]

    def _apply_changed_rates(self, saved: dict) -> None:
        """A rate changed in the YAML since the checkpoint replaces the checkpoint's (which
        the plateau rule may have halved) and starts the plateau count again."""
        rates = {"network": "learning_rate", "dictionary": "dictionary_learning_rate"}
        changed = False
        for group in self.optimizer.param_groups:
            name = rates[group["name"]]
            if getattr(self.config, name) != saved[name]:
                group["lr"] = getattr(self.config, name)
                changed = True
        if self.discriminator_optimizer is not None and self.config.learning_rate != saved["learning_rate"]:
            for group in self.discriminator_optimizer.param_groups:
                group["lr"] = self.config.learning_rate
        if changed:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=0.5, patience=self.config.plateau_patience)
            self.window = []


def initial_model(config: TrainConfig, image_size: int) -> DMDNet:
    """The checkpoint a fine-tune starts from, checked against the configured network."""
    try:
        model = dmdnet.load(config.initial_weights)
    except CheckpointError as error:
        raise ConfigError(f"initial_weights: {error}") from error
    found = (model.width, model.dictionary_size, model.image_size)
    wanted = (config.width, config.dictionary_size, image_size)
    if found != wanted:
        raise ConfigError(
            f"initial_weights {config.initial_weights} is a network of width {found[0]}, {found[1]} dictionary items "
            f"and {found[2]} px, but this run trains width {wanted[0]}, {wanted[1]} items on {wanted[2]} px data: "
            "set width and dictionary_size to the checkpoint's and prepare the data at its size")
    return model


def newest_checkpoint(run_folder: Path) -> Path | None:
    """The state file of the newest Ray Train checkpoint in run_folder, if there is one."""
    checkpoints = sorted(run_folder.glob(f"checkpoint_*/{STATE_FILE}"), key=os.path.getmtime)
    return checkpoints[-1] if checkpoints else None


def check_resume(config: TrainConfig, run_folder: Path) -> None:
    """Refuses to resume the newest checkpoint in run_folder with settings it cannot continue
    under (FIXED_ON_RESUME, or the length of a phase it has finished), in one line naming both."""
    newest = newest_checkpoint(run_folder)
    if newest is None:
        return
    # mmap: only the config and step are read, not the weights and optimiser state beside them
    state = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)
    saved, step = state["config"], state["step"]
    changed = [name for name in FIXED_ON_RESUME if saved[name] != getattr(config, name)]
    finished = 0
    for phase in PHASES:
        finished += saved[f"{phase}_steps"]
        if finished < step and saved[f"{phase}_steps"] != getattr(config, f"{phase}_steps"):
            changed.append(f"{phase}_steps")
    if changed:
        was = ", ".join(f"{name} {saved[name]!r} -> {getattr(config, name)!r}" for name in changed)
        raise ConfigError(f"{run_folder.parent} holds a run at step {step} that cannot resume with these settings ({was}): "
                          "put them back, or give the YAML a new output folder")


def train_loop(loop_config: dict) -> None:
    """Ray Train's per-worker function: resumes from the newest checkpoint, runs every phase."""
    import ray.train
    import ray.train.torch

    config = TrainConfig(**loop_config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config.use_gpu else torch.device("cpu")
    torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed)
    faces = PreparedFaces(config.data)
    identities, _ = split_identities(list(faces.identities), config.heldout_fraction)
    data = TrainingFaces(faces, identities, config.references, config.seed, config.horizontal_flip)
    training = Training(config, faces.size, device)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            step = training.load(torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True))
        _log(rank, f"resumed at step {step} ({training.phase})")
    metrics_path = Path(config.output) / "metrics.jsonl"

    def report(metrics: dict, save: bool) -> None:
        if not save:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                torch.save(training.state(step), Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)

    if training.phase is None:
        started = time.monotonic()
        done = training.start(data)
        training.phase = "initialize"
        report({"step": 0, "phase": "initialize", "seconds": time.monotonic() - started}, save=True)
        _log(rank, done)
    recent: list[dict] = []
    while step < config.total_steps:
        phase = config.phase(step)
        if phase != training.phase:
            if phase == "specific":
                training.copy_generic_extractor()
            training.enter(phase)
            _log(rank, f"phase {phase} from step {step}")
        started = time.monotonic()
        terms = training.step(data.batch(step, config.batch_size, rank, world, references=phase == "specific"))
        step += 1
        metrics = {"step": step, "phase": phase, "seconds": time.monotonic() - started, **terms}
        if rank == 0:
            with open(metrics_path, "a") as stream:
                stream.write(json.dumps(metrics) + "\n")
        recent.append(metrics)
        phase_end = step == config.total_steps or config.phase(step) != phase
        save = step % config.checkpoint_every == 0 or phase_end
        if save or step % config.report_every == 0:
            numbers = [key for key, value in metrics.items() if isinstance(value, float)]
            report({**metrics, **{key: float(np.mean([m.get(key, 0.0) for m in recent])) for key in numbers}}, save)
            recent = []


def _log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"dmdnet.train: {message}", flush=True)


def run(config: TrainConfig) -> Path:
    """Trains (or resumes) on Ray Train and writes OUTPUT/model.safetensors; returns its path."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    faces = PreparedFaces(config.data)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if config.initial_weights:
        initial_model(config, faces.size)  # a mismatch is reported here, not by every worker after retries
    check_resume(config, output / RUN_NAME)
    _, heldout = split_identities(list(faces.identities), config.heldout_fraction)
    with atomic_path(output / "heldout_identities.txt") as temporary:
        temporary.write_text("".join(f"{identity}\n" for identity in heldout))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), configure_logging=False)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=dataclasses.asdict(config),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(output),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    path = save_model(config, state, faces.size, output / "model.safetensors")
    print(f"dmdnet.train: {state['step']} steps done; model -> {path}", flush=True)
    return path


def save_model(config: TrainConfig, state: dict, image_size: int, path: Path) -> Path:
    """The model of a checkpoint's state (its weight average where kept), as a .safetensors file."""
    model = DMDNet(config.width, config.dictionary_size, image_size)
    model.load_state_dict(state.get("weight_average") or state["model"])
    return save_checkpoint(model, path, getattr(torch, config.save_dtype), metadata={
        "format": "dmdnet-trained/1", "steps": str(state["step"]), "data": str(config.data),
        "config": json.dumps(dataclasses.asdict(config)),
    })


def snapshot(config: TrainConfig, path: Path) -> Path:
    """Writes the model of the run's newest checkpoint to path, without training: a run in
    progress (or stopped) can be evaluated or used, and later resumed where it was."""
    run_folder = Path(config.output) / RUN_NAME
    newest = newest_checkpoint(run_folder)
    if newest is None:
        raise ConfigError(f"{config.output} holds no checkpoint yet: train first (checkpoint_every steps write one)")
    check_resume(config, run_folder)  # a YAML edited since (another width, say) is named, not a traceback
    state = torch.load(newest, map_location="cpu", weights_only=True)
    path = save_model(config, state, PreparedFaces(config.data).size, path)
    print(f"dmdnet.train: the model at step {state['step']} of {config.output} -> {path}", flush=True)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmdnet.train", description="Train DMDNet (see the module notes).")
    parser.add_argument("config", type=Path, help="training settings (YAML)")
    parser.add_argument("--snapshot", type=Path, metavar="MODEL.safetensors",
                        help="do not train: write the model of the run's newest checkpoint here")
    args = parser.parse_args(argv)
    from ray.train import TrainingFailedError

    try:
        if args.snapshot:
            snapshot(load_config(args.config), args.snapshot)
            return 0
        run(load_config(args.config))
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrainingFailedError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        print(f"error: training failed after its retries ({reason}); fix the cause and run the same command "
              "to resume from the last checkpoint", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
