"""DMDNet restore speed on this machine's CPU, full-size network, one face at a time.

Measures in one run, so the ratios compare like with like:
  generic     restore with the generic dictionary only;
  stored      specific restore with a stored dictionary of 8 references (our pipeline);
  authors     the authors' way: build the dictionary from the 8 references, then decode
              both the generic and the specific result (their forward does both).
Prints seconds (median of --repeats), GFLOP per face and the ratios, as a markdown table.

Then the engines (dmdnet.engines) against eager float32 on seeded weights whose signal
survives the depth (bench/seeded.py), generic and with the stored dictionary: seconds and
faces/s, speed-up over eager float32 and PSNR against it. Variants run round-robin, one
call each per round, so that a busy machine slows all of them alike.

    python -m bench.dmdnet_cpu [--repeats 3] [--threads N] [--table ways|engines|all]
                               [--width 64] [--compile] [--cache DIR]
"""
import argparse
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dmdnet import DMDNet, engines
from dmdnet.engines.torch_engine import TorchEngine
from dmdnet.export import example_inputs
from bench.seeded import faces_and_dictionary, seeded_model

REFERENCES = 8


def authors_way(model: DMDNet, lq, boxes, refs, ref_boxes):
    """Their forward: one E_lq pass, the dictionary from the references, two decodes."""
    keys, values = model.dictionary_tensors(refs, ref_boxes)
    features = model.encoder_lq(lq)
    windows = model.windows(boxes)
    generic = model.decode(features, model.read_parts(features, windows))
    specific = model.decode(features, model.read_parts(features, windows, keys, values))
    return generic, specific


def timed(function, repeats: int) -> tuple[float, float]:
    """(median seconds, GFLOP) of one call, after a warm-up call that also counts FLOPs."""
    with FlopCounterMode(display=False) as counter:
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), counter.get_total_flops() / 1e9


def ways_table(args) -> None:
    torch.manual_seed(0)
    model = DMDNet().eval()  # speed does not depend on the weights' values
    lq, boxes, *_ = example_inputs(model, batch=1)
    refs = torch.rand(REFERENCES, 3, 512, 512) * 2 - 1
    ref_boxes = boxes[:1].expand(REFERENCES, -1, -1)
    with torch.inference_mode():
        dictionary = model.build_dictionary(refs, ref_boxes)
        runs = {
            "generic": lambda: model(lq, boxes),
            f"stored dictionary ({REFERENCES} refs)": lambda: model(lq, boxes, dictionary),
            f"authors' way (build from {REFERENCES} refs, decode both)": lambda: authors_way(
                model, lq, boxes, refs, ref_boxes
            ),
        }
        results = {name: timed(run, args.repeats) for name, run in runs.items()}
    generic_s = results["generic"][0]
    stored_s = results[f"stored dictionary ({REFERENCES} refs)"][0]
    authors_s = results[f"authors' way (build from {REFERENCES} refs, decode both)"][0]
    print(f"DMDNet full size, 1 face, float32, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, median of {args.repeats}\n")
    print("| restore | s / face | GFLOP / face |")
    print("|---|---:|---:|")
    for name, (seconds, gflop) in results.items():
        print(f"| {name} | {seconds:.2f} | {gflop:.0f} |")
    print(f"\nstored / authors' way = {stored_s / authors_s:.2f}x (target <= 0.5x)")
    print(f"stored / generic      = {stored_s / generic_s:.2f}x (target <= 1.4x)\n")


def engine_variants(model, args) -> dict:
    """Label -> engine; eager float32 first (the baseline), auto last."""
    variants = {
        "torch float32 eager (baseline)": TorchEngine(model, "float32", "cpu"),
        "torch float32 channels-last": TorchEngine(model, "float32", "cpu", channels_last=True),
        "onnxruntime float32": engines.load(model, "onnxruntime", device="cpu", cache=args.cache),
    }
    if args.compile:
        variants["torch float32 channels-last compiled"] = TorchEngine(
            model, "float32", "cpu", channels_last=True, compile=True
        )
    auto = engines.load(model, "auto", device="cpu", cache=args.cache)
    variants[f"auto ({auto.name} {auto.precision})"] = auto
    print(f"auto: {auto.reason}\n")
    return variants


def engines_table(args) -> None:
    model = seeded_model(width=args.width)
    lq, boxes, dictionary = faces_and_dictionary(model, batch=1, references=REFERENCES)
    variants = engine_variants(model, args)
    modes = {"generic": None, f"stored dictionary ({REFERENCES} refs)": dictionary}
    outputs = {(label, mode): engine(lq, boxes, d) for label, engine in variants.items() for mode, d in modes.items()}
    seconds = {key: [] for key in outputs}
    for _ in range(args.repeats):
        for label, engine in variants.items():
            for mode, d in modes.items():
                start = time.perf_counter()
                engine(lq, boxes, d)
                seconds[label, mode].append(time.perf_counter() - start)
    baseline = next(iter(variants))
    print(f"DMDNet width {args.width}, 512 px, 1 face, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, median of {args.repeats} round-robin rounds\n")
    print("| engine | restore | s / face | faces/s | x eager float32 | PSNR vs float32 (dB) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, mode in outputs:
        median = statistics.median(seconds[label, mode])
        speedup = statistics.median(seconds[baseline, mode]) / median
        quality = engines.psnr_db(outputs[label, mode], outputs[baseline, mode])
        print(f"| {label} | {mode} | {median:.2f} | {1 / median:.2f} | {speedup:.2f}x | {quality:.1f} |")


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--repeats", type=int, default=3)
    arguments.add_argument("--threads", type=int, default=os.cpu_count())
    arguments.add_argument("--table", choices=("ways", "engines", "all"), default="all")
    arguments.add_argument("--width", type=int, default=64, help="engines table: network width (64 = full size)")
    arguments.add_argument("--compile", action="store_true", help="engines table: also torch.compile (slow to compile)")
    arguments.add_argument("--cache", help="engine cache folder (exported graphs; default $DMDNET_CACHE or ~/.cache/dmdnet)")
    args = arguments.parse_args()
    torch.set_num_threads(args.threads)
    if args.table in ("ways", "all"):
        ways_table(args)
    if args.table in ("engines", "all"):
        engines_table(args)


if __name__ == "__main__":
    main()
