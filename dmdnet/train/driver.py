"""The Ray Train driver: `python -m dmdnet.train CONFIG [--snapshot OUT]` (settings: dmdnet.train.config).

Checks a resume before Ray starts, runs train_loop on every worker, writes the model of
the final (or, with --snapshot, the newest) checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmdnet.checkpoint import save_checkpoint
from dmdnet.data import PreparedFaces
from dmdnet.files import atomic_path
from dmdnet.model import DMDNet
from dmdnet.train.config import FIXED_ON_RESUME, PHASES, ConfigError, TrainConfig, load_config
from dmdnet.train.faces import TrainingFaces, split_identities
from dmdnet.train.training import Training, initial_model

STATE_FILE = "state.pt"
RUN_NAME = "ray_train"


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

