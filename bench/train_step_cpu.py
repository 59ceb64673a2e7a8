"""DMDNet training step speed on this machine's CPU, by memory layout and precision.

Measures in one run, so the ratios compare like with like (same batches, same weights):
  float32 NCHW        the layout torch gives by default;
  float32 channels    channels-last images and weights (what dmdnet.train uses);
  bfloat16 channels   channels-last in bfloat16 autocast (`precision: bfloat16`).
Each variant runs the backward phase (generic restore, pixel + query loss, Adam) from the
same initial state on the same batches. Prints the median seconds per step (after 2 warm-up
steps) and the ratio to float32 NCHW, as a markdown table.

    python -m bench.train_step_cpu --data prepared/celeba256 [--width 16] [--batch 4] [--steps 10]
"""
import argparse
import copy
import os
import platform
import statistics
import time

import torch

from dmdnet.data import PreparedFaces
from dmdnet.train import Training, TrainingFaces, TrainConfig, split_identities


class NCHWTraining(Training):
    """Training as it would run without the channels-last layout."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.to(memory_format=torch.contiguous_format)

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)


def seconds_per_step(training: Training, batches, warm_up: int = 2) -> float:
    training.enter("backward")
    seconds = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        training.step(batch)
        if index >= warm_up:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--data", required=True, help="a `python -m dmdnet.data prepare` folder")
    arguments.add_argument("--width", type=int, default=16)
    arguments.add_argument("--batch", type=int, default=4)
    arguments.add_argument("--steps", type=int, default=10)
    arguments.add_argument("--threads", type=int, default=os.cpu_count())
    args = arguments.parse_args()
    torch.set_num_threads(args.threads)
    faces = PreparedFaces(args.data)
    identities, _ = split_identities(list(faces.identities), 0.1)
    data = TrainingFaces(faces, identities, references=0, seed=0)
    batches = [data.batch(step, args.batch, references=False) for step in range(args.steps + 2)]
    torch.manual_seed(0)
    initial = Training(TrainConfig(data=args.data, output="unused", width=args.width), faces.size, torch.device("cpu"))
    initial.initialize_dictionary(data)
    weights = copy.deepcopy(initial.model.state_dict())
    variants = (("float32 NCHW", NCHWTraining, "float32"), ("float32 channels-last", Training, "float32"),
                ("bfloat16 channels-last", Training, "bfloat16"))
    results = []
    for label, kind, precision in variants:
        config = TrainConfig(data=args.data, output="unused", width=args.width, precision=precision, plateau_steps=10**6)
        training = kind(config, faces.size, torch.device("cpu"))
        training.model.load_state_dict(weights)
        results.append((label, seconds_per_step(training, batches)))
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"width {args.width}, {faces.size} px, batch {args.batch}, median of {args.steps} steps\n")
    print("| variant | s/step | faces/s | speed-up |\n|---|---|---|---|")
    for label, seconds in results:
        print(f"| {label} | {seconds:.3f} | {args.batch / seconds:.1f} | {results[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
