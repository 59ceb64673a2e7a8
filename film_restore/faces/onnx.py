"""What the ONNX face models share: providers, session options, insightface's loader, BGR at the boundary.

Providers: CUDA where the installed onnxruntime build has it (onnxruntime-gpu, installed by
install.sh with FILM_RESTORE_ONNXRUNTIME=onnxruntime-gpu), then the CPU, which runs whatever
CUDA cannot (onnxruntime also falls back to it where CUDA has no device to run on).

insightface's model classes expect BGR (they swap to RGB inside cv2.dnn.blobFromImage), so
images are flipped to BGR here, at the model boundary, and nowhere else.
"""
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime
from insightface.model_zoo import get_model

CPU_PROVIDERS = ("CPUExecutionProvider",)
GPU_PROVIDERS = ("CUDAExecutionProvider",)


def preferred_providers(available: Sequence[str] | None = None) -> tuple[str, ...]:
    """The face models' providers, best first: CUDA where `available` (default: this onnxruntime build's) has it, then the CPU."""
    available = onnxruntime.get_available_providers() if available is None else available
    return tuple(provider for provider in GPU_PROVIDERS if provider in available) + CPU_PROVIDERS


def session_providers(providers: Sequence[str] | None) -> list[str]:
    """The providers asked for, or preferred_providers() where none were."""
    return list(preferred_providers() if providers is None else providers)


def session_options() -> onnxruntime.SessionOptions:
    """ONNX Runtime options for face models: worker threads sleep between runs.

    Several small models run in turn on each frame; threads spinning after one model's
    run would take the cores from the next (measured: detection 50 -> 90 ms on 2 cores).
    """
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


def load_insightface_model(path: Path, expected_type: type, role: str, providers: Sequence[str] | None):
    model = get_model(str(path), providers=session_providers(providers), sess_options=session_options())
    if not isinstance(model, expected_type):
        raise ValueError(f"{path} is not a {role} model (insightface reads it as {type(model).__name__}): check the models folder")
    return model
