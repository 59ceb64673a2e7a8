"""DMDNet restore speed on this machine's CPU, full-size network, one face at a time.

Measures in one run, so the ratios compare like with like:
  generic     restore with the generic dictionary only;
  stored      specific restore with a stored dictionary of 8 references (our pipeline);
  authors     the authors' way: build the dictionary from the 8 references, then decode
              both the generic and the specific result (their forward does both).
Prints seconds (median of --repeats), GFLOP per face and the ratios, as a markdown table.

    python -m bench.dmdnet_cpu [--repeats 3] [--threads N]
"""
import argparse
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dmdnet import DMDNet
from dmdnet.export import example_inputs

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


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--repeats", type=int, default=3)
    arguments.add_argument("--threads", type=int, default=os.cpu_count())
    args = arguments.parse_args()
    torch.set_num_threads(args.threads)
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
    print(f"stored / generic      = {stored_s / generic_s:.2f}x (target <= 1.4x)")


if __name__ == "__main__":
    main()
