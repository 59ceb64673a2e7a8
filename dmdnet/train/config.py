"""Training DMDNet in the paper's stages, on Ray Train: the settings of a run (this docstring
lists every one) and what the dmdnet.train package does with them.

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

Ray Train: a TorchTrainer with ScalingConfig(num_workers, use_gpu) runs `train_loop`
(dmdnet.train.driver) on every worker; gradients and the moving-average statistics are
averaged over workers (dmdnet.train.distributed).
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

Samples (dmdnet.train.faces): every face of the training identities in a seeded endless shuffle, degraded by
Eq. 19 with its own draws; `horizontal_flip` (default on) mirrors each face and each
reference with probability 1/2, their component boxes with them (eyes swapped).

Identities whose name hashes below `heldout_fraction` are never trained on; they are
listed in OUTPUT/heldout_identities.txt for `python -m dmdnet evaluate --identities`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from dmdnet.losses import LossWeights

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

