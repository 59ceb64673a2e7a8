"""One worker's training: the model, discriminator, losses and optimisers, phase by phase
(dictionary initialisation, moving-average forward, backward, specific), and its checkpoint state."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

import dmdnet
from dmdnet.checkpoint import CheckpointError
from dmdnet.discriminator import MultiScaleDiscriminator
from dmdnet.losses import TrainingLoss
from dmdnet.model import DMDNet
from dmdnet.train.config import PHASES, ConfigError, TrainConfig
from dmdnet.train.distributed import all_reduce_mean, average_gradients, run_in_float32, unsafe_bfloat16_convolutions
from dmdnet.train.faces import TrainingFaces

KMEANS_ITERATIONS = 10
MAX_SKIPPED_STEPS = 10
LAPLACE_EPSILON = 1e-5


def _kmeans(points: torch.Tensor, clusters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres, assignment) of points N x D; clusters that empty keep their seed point."""
    centres = points[torch.randperm(points.shape[0], generator=generator)[:clusters]].clone()
    for _ in range(KMEANS_ITERATIONS):
        assignment = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=clusters).to(points.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres, torch.cdist(points, centres).argmin(dim=1)



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
            all_reduce_mean([counts, key_sums, value_sums])
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
        average_gradients(parameters)
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
            average_gradients(self.discriminator.parameters())
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


