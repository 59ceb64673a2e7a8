"""Inference engines for DMDNet: the same call as the model, run by torch, onnxruntime or TensorRT.

    from dmdnet import engines
    engine = engines.load("DMDNet.pth", engine="auto")    # or "torch", "onnxruntime", "tensorrt"
    restored = engine(lq, boxes)                           # or engine(lq, boxes, dictionary)
    engine.name, engine.precision, engine.device, engine.reason

Each engine returns float32 B x 3 x S x S on its device. Exported graphs and TensorRT engines
are cached on disk (`cache=`, else $DMDNET_CACHE, else ~/.cache/dmdnet) and built once.
"""
from __future__ import annotations

import torch

from dmdnet.engines.auto import CLASSES, build, choose
from dmdnet.engines.base import MIN_PSNR_DB, PRECISIONS, Engine, EngineUnavailable, check_precision, model_from, psnr_db

ENGINES = ("auto", *CLASSES)
# Precision an engine named without one runs in, by device type.
DEFAULT_PRECISION = {"cpu": "float32", "cuda": "float16"}

__all__ = ["ENGINES", "MIN_PSNR_DB", "PRECISIONS", "Engine", "EngineUnavailable", "load", "model_from", "psnr_db"]


def load(source, engine: str = "auto", precision: str = "auto", device=None, cache=None, **options) -> Engine:
    """An engine for a DMDNet, a checkpoint path or a state dict.

    device: default CUDA where torch has it, else the CPU. options go to the engine's class
    (torch: channels_last, compile, cuda_graphs; onnxruntime: threads; tensorrt: batch,
    references). A named engine that cannot run here is an EngineUnavailable error saying why;
    auto passes over it with a logged line and says in `reason` which one runs instead.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if precision != "auto":
        check_precision(precision)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model_from(source)
    if engine == "auto":
        return choose(model, precision, device, cache)
    if precision == "auto":
        precision = DEFAULT_PRECISION.get(device.type, "float32")
    return build(engine, model, precision, device, cache, reason=f"{engine} {precision} requested", **options)
