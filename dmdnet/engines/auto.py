"""engine="auto": the fastest engine available here that restores within 40 dB PSNR of float32.

GPU: the first that loads and passes, fastest first: TensorRT, onnxruntime (TensorRT or CUDA
provider), torch, each at the precision asked for (auto: float16; float32 keeps every
engine's arithmetic in float32, so auto still prefers TensorRT to eager torch). CPU: every
candidate that loads is checked and timed on one face against eager float32 and the fastest
wins; the measurement is kept in the engine cache (per CPU, library versions, threads and
model), so it runs once per node.
bfloat16 is a CPU candidate only where the CPU computes it natively (AVX512-BF16 or AMX).
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import torch

from dmdnet.engines.base import MIN_PSNR_DB, EngineUnavailable, psnr_db
from dmdnet.engines.cache import cache_dir, key_name
from dmdnet.engines.onnx_engine import OnnxRuntimeEngine
from dmdnet.engines.tensorrt_engine import TensorRTEngine
from dmdnet.engines.torch_engine import TorchEngine
from dmdnet.export import example_inputs
from dmdnet.files import write_json
from dmdnet.model import DMDNet

log = logging.getLogger("dmdnet.engines")
CLASSES = {cls.name: cls for cls in (TorchEngine, OnnxRuntimeEngine, TensorRTEngine)}
# Fastest first, with the precisions each runs on a GPU (TensorRT and onnxruntime have no bfloat16).
GPU_ORDER = (("tensorrt", ("float16", "float32"), {}), ("onnxruntime", ("float16", "float32"), {}),
             ("torch", ("float16", "bfloat16", "float32"), {"channels_last": True}))
CPU_CANDIDATES = (
    ("torch", "float32", {}),
    ("torch", "float32", {"channels_last": True}),
    ("onnxruntime", "float32", {}),
)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def build(name: str, model: DMDNet, precision: str, device, cache=None, reason: str = "", **options):
    """One engine by name; `cache` goes to the engines that keep files."""
    if name != "torch":
        options["cache"] = cache
    return CLASSES[name](model, precision, device, reason, **options)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (elsewhere torch emulates it, slower than float32)."""
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def cpu_candidates(precision: str) -> list[tuple[str, str, dict]]:
    candidates = list(CPU_CANDIDATES)
    if native_bfloat16():
        candidates.append(("torch", "bfloat16", {"channels_last": True}))
    return [c for c in candidates if precision in ("auto", c[1])]


def gpu_candidates(precision: str) -> list[tuple[str, str, dict]]:
    """The engines auto tries on a GPU, fastest first, at `precision` (auto: float16)."""
    wanted = "float16" if precision == "auto" else precision
    return [(name, wanted, options) for name, precisions, options in GPU_ORDER if wanted in precisions]


def choose(model: DMDNet, precision: str, device: torch.device, cache=None):
    """The engine auto picks, with its reason (and a logged line for each engine passed over)."""
    lq, boxes = example_inputs(model, batch=1)
    if device.type == "cuda":
        return _first_passing(model, gpu_candidates(precision), device, cache, lq, boxes,
                              _float32_output(model, device, lq, boxes))
    return _fastest_on_cpu(model, precision, device, cache, lq, boxes)


def _float32_output(model, device, lq, boxes):
    """What every candidate is measured against: eager float32 on the same inputs."""
    return TorchEngine(model, "float32", device)(lq, boxes)


def label(name: str, precision: str, options: dict) -> str:
    return " ".join([name, precision, *[k.replace("_", "-") for k, on in options.items() if on]])


def _try(candidate, model, device, cache, lq, boxes, expected, notes: list[str]):
    """(engine, PSNR) if the candidate loads and is accurate enough, else None with a note why."""
    name, precision, options = candidate
    try:
        engine = build(name, model, precision, device, cache, **options)
    except EngineUnavailable as error:
        notes.append(f"{label(*candidate)} unavailable: {error}")
        return None
    quality = psnr_db(engine(lq, boxes), expected)
    if quality < MIN_PSNR_DB:
        notes.append(f"{label(*candidate)} only {quality:.1f} dB against float32 (needs {MIN_PSNR_DB:.0f})")
        return None
    return engine, quality


def _finish(engine, reason: str, notes: list[str]):
    for note in notes:
        log.warning("dmdnet engines: %s; %s %s runs instead", note, engine.name, engine.precision)
    engine.reason = "; ".join([reason, *notes])
    return engine


def _first_passing(model, order, device, cache, lq, boxes, expected):
    notes: list[str] = []
    for candidate in order:
        found = _try(candidate, model, device, cache, lq, boxes, expected, notes)
        if found:
            engine, quality = found
            return _finish(engine, f"auto on {device}: first available of {', '.join(label(*c) for c in order)}; "
                                   f"{quality:.1f} dB against float32", notes)
    raise EngineUnavailable("no engine passed on " + str(device) + ": " + "; ".join(notes))


def _seconds(engine, lq, boxes) -> float:
    start = time.perf_counter()
    engine(lq, boxes)
    return time.perf_counter() - start


def _fastest_on_cpu(model, precision, device, cache, lq, boxes):
    candidates = cpu_candidates(precision)
    record_path = cache_dir(cache) / (key_name(
        "auto", model.fingerprint, platform.processor() or platform.machine(), f"torch{torch.__version__}",
        f"threads{torch.get_num_threads()}", precision) + ".json")
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        chosen = next((c for c in candidates if label(*c) == record["chosen"]), None)
        if chosen:
            engine = build(chosen[0], model, chosen[1], device, cache, **chosen[2])
            return _finish(engine, f"auto on cpu: measured fastest earlier ({record['summary']})", [])
    expected = _float32_output(model, device, lq, boxes)
    notes: list[str] = []
    timed = []
    for candidate in candidates:
        found = _try(candidate, model, device, cache, lq, boxes, expected, notes)
        if found:
            engine, quality = found
            timed.append((_seconds(engine, lq, boxes), quality, candidate, engine))
    timed.sort(key=lambda entry: entry[0])
    seconds, quality, candidate, engine = timed[0]
    summary = ", ".join(f"{label(*c)} {s:.3f} s" for s, _, c, _ in timed)
    write_json(record_path, {"chosen": label(*candidate), "summary": summary})
    return _finish(engine, f"auto on cpu: fastest measured per face ({summary}); {quality:.1f} dB against float32", notes)
