"""Training DMDNet in the paper's stages, on Ray Train: `python -m dmdnet.train CONFIG [--snapshot OUT]`.

config (TrainConfig: every setting, in its docstring) -> faces (the held-out split, the
degraded samples) -> training (one worker's model and optimisers, phase by phase; with
distributed: the averages over workers) -> driver (the Ray Train loop, resume checks,
the saved model, the command line).
"""
from dmdnet.train.config import FIXED_ON_RESUME, PHASES, ConfigError, TrainConfig, load_config
from dmdnet.train.distributed import run_in_float32, unsafe_bfloat16_convolutions
from dmdnet.train.driver import RUN_NAME, STATE_FILE, check_resume, main, newest_checkpoint, run, save_model, snapshot, train_loop
from dmdnet.train.faces import TrainingFaces, split_identities
from dmdnet.train.training import MAX_SKIPPED_STEPS, Training, initial_model

__all__ = ["FIXED_ON_RESUME", "MAX_SKIPPED_STEPS", "PHASES", "RUN_NAME", "STATE_FILE", "ConfigError", "TrainConfig", "Training",
           "TrainingFaces", "check_resume", "initial_model", "load_config", "main", "newest_checkpoint", "run",
           "run_in_float32", "save_model", "snapshot", "split_identities", "train_loop", "unsafe_bfloat16_convolutions"]
