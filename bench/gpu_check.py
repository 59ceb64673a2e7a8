"""One command for a bare GPU node: DMDNet engines x precisions x batch sizes, as a Markdown table.

Needs only this repository, torch (CUDA build), numpy and onnxruntime (onnxruntime-gpu for
its GPU providers; exporting the ONNX graph also needs onnx and onnxscript, else carry an
engine cache folder exported elsewhere with --cache). TensorRT rows run where the tensorrt
package is installed. Each row: faces/s (after a warm-up call), PSNR against torch float32
on the same faces, and peak memory. Rows past the time budget are skipped and say so.

    python -m bench.gpu_check                          # full size on cuda, batch 1, 8, 32
    python -m bench.gpu_check --device cpu --quick --width 8 -o /tmp/check.md
"""
import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from dmdnet import engines
from dmdnet.engines.auto import cpu_candidates, label
from dmdnet.files import atomic_path
from bench.seeded import faces_and_dictionary, seeded_model

REFERENCES = 8


def candidates(device: torch.device, compile: bool) -> list[tuple[str, str, dict]]:
    """(engine, precision, options) rows; torch float32 first, the reference of every PSNR."""
    if device.type == "cpu":  # auto's CPU candidates: bfloat16 only where the CPU has it natively (else emulated, slow)
        return cpu_candidates("auto")
    rows = [("torch", "float32", {}), ("torch", "bfloat16", {"channels_last": True}),
            ("torch", "float16", {"channels_last": True})]
    if compile:
        rows.append(("torch", "float16", {"channels_last": True, "compile": True}))
    return rows + [("onnxruntime", "float16", {}), ("tensorrt", "float16", {})]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak of torch's allocator on the GPU (engines outside it: device memory in use); CPU: process peak RSS."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return max(torch.cuda.max_memory_allocated(device), total - free) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(engine, lq, boxes, dictionary, calls: int, device) -> tuple[float, torch.Tensor]:
    """(faces/s, output) over `calls` calls after a warm-up call."""
    output = engine(lq, boxes, dictionary)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        engine(lq, boxes, dictionary)
    synchronize(device)
    return calls * lq.shape[0] / (time.perf_counter() - start), output


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--device", default="cuda")
    arguments.add_argument("--quick", action="store_true", help="batches 1 and 2, one timed call: a smoke run")
    arguments.add_argument("--width", type=int, default=64, help="network width (64 = the authors' full size)")
    arguments.add_argument("--checkpoint", help="a DMDNet checkpoint instead of seeded weights (--width is then its own)")
    arguments.add_argument("--calls", type=int, default=5, help="timed calls per row")
    arguments.add_argument("--budget", type=float, default=420, help="seconds; later rows are skipped")
    arguments.add_argument("--compile", action="store_true", help="also torch.compile (GPU; compiles per batch size)")
    arguments.add_argument("--cache", help="engine cache folder (exported graphs, TensorRT engines)")
    arguments.add_argument("-o", "--output", default="gpu_check.md")
    args = arguments.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch has no CUDA device here: install a CUDA build of torch or pass --device cpu --quick")
    batches, calls = ((1, 2), 1) if args.quick else ((1, 8, 32), args.calls)
    started = time.perf_counter()
    model = engines.model_from(args.checkpoint) if args.checkpoint else seeded_model(width=args.width)
    faces, boxes, dictionary = faces_and_dictionary(model, batch=max(batches), references=REFERENCES)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    lines = [f"DMDNet width {model.width}, {model.image_size} px, stored dictionary of {REFERENCES} references, "
             f"on {name}, torch {torch.__version__}, {calls} timed calls after a warm-up", "",
             "| engine | batch | faces/s | PSNR vs float32 (dB) | peak memory (GiB) |", "|---|---:|---:|---:|---:|"]
    references: dict[int, torch.Tensor] = {}
    rows = [*candidates(device, args.compile), ("auto", "auto", {})]
    for row in rows:
        if time.perf_counter() - started > args.budget:
            lines.append(f"| {label(*row)} | - | skipped: over the {args.budget:.0f} s budget | | |")
            continue
        try:
            engine = (engines.load(model, "auto", device=device, cache=args.cache) if row[0] == "auto"
                      else engines.load(model, row[0], row[1], device=device, cache=args.cache, **row[2]))
        except (engines.EngineUnavailable, ValueError) as error:
            lines.append(f"| {label(*row)} | - | unavailable: {error} | | |")
            continue
        title = f"auto: {engine.name} {engine.precision}" if row[0] == "auto" else label(*row)
        for batch in batches:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                rate, output = measure(engine, faces[:batch], boxes[:batch], dictionary, calls, device)
            except (RuntimeError, ValueError) as error:
                lines.append(f"| {title} | {batch} | failed: {str(error).splitlines()[0]} | | |")
                continue
            references.setdefault(batch, output)  # torch float32 runs first
            quality = engines.psnr_db(output, references[batch])
            lines.append(f"| {title} | {batch} | {rate:.1f} | {quality:.1f} | {peak_memory_gib(device):.2f} |")
        if row[0] == "auto":
            lines += ["", f"auto: {engine.reason}"]
        del engine
    lines += ["", f"total {time.perf_counter() - started:.0f} s"]
    table = "\n".join(lines) + "\n"
    print(table)
    output_path = Path(args.output)
    with atomic_path(output_path) as temporary:
        temporary.write_text(table)


if __name__ == "__main__":
    main()
