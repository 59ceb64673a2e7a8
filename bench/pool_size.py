"""How many compose CPUs keep one GPU restoring busy: stage costs measured at 1080p, two faces per frame.

Makes a 1920 x 1080 H.264 film of two real clips side by side (one face each), then measures
on this machine, in this process, CPU seconds (all threads, process time) and wall seconds:
  decode        reading and converting every frame (film_restore.video.read_frames, .rgb())
  analyse       faces on every frame, tracks, smoothing, identities (stages.FaceTracker)
  compose       a compose task with a restorer that returns its input: decode, align, guards,
                grain, blend, encode (compose.Composer, codec auto: x264 CRF 14)
  encode        encoding the decoded frames alone (video.ChunkWriter, codec auto)
  restore       one 512 px face through the full-size network (width 64, 128 items) per CPU engine
and prints them per frame and per face, then the sizing table for 1080p24 with 2 faces per frame:
  compose CPUs per GPU = compose CPU s per frame / (2 x GPU s per face)
for GPU figures that are estimates (no GPU measured here): the paper's V100 64.8 ms per face,
the issue's goal of 250 faces/s, and the H100 floor of ~0.5 ms (374 GFLOP at ~800 TFLOP/s).

    FILM_RESTORE_ASSETS=../shared python -m bench.pool_size [--frames 24] [--repeats 2]
        [--engines torch,onnxruntime] [--cache DIR]   (from the repository root)
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from dmdnet import DMDNet, engines
from dmdnet.export import example_inputs
from film_restore.compose import ComposeSettings, Composer
from film_restore.faces import FaceAnalyzer
from film_restore.faces.identity import Identifier
from film_restore.stages import FaceTracker, Scanner
from film_restore.video import ChunkWriter, probe, read_frames
from tests.assets import ASSETS
from tests.media import clip_frames

CLIPS = (ASSETS / "media/clips/retalk_2.mp4", ASSETS / "media/clips/liveportrait_d10.mp4")
SIZE = (1920, 1080)
RATE = 24
FACES_PER_FRAME = 2
# GPU seconds per face, estimates from the issue (none measured: no GPU was lent).
GPU_ESTIMATES = (
    ("V100, the paper's figure (stored dictionary)", 64.8e-3),
    ("H100/H200 at the issue's goal (250 faces/s)", 1 / 250),
    ("H100 floor (374 GFLOP/face at ~800 TFLOP/s bf16)", 0.5e-3),
)


def make_two_face_film(path: Path, frames: int) -> None:
    """Two clips side by side, each centre-cropped to half the frame: one face in each half."""
    width, height = SIZE
    halves = [clip_frames(clip, frames, (width // 2, height)) for clip in CLIPS]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "18"}
        for left, right in zip(*halves):
            frame = av.VideoFrame.from_ndarray(np.hstack([left, right]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def measured(work) -> tuple[float, float, object]:
    """(CPU seconds of this process, all threads; wall seconds; result) of work()."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def restore_seconds(name: str, model: DMDNet, repeats: int, cache) -> tuple[float, float]:
    """(median CPU s, median wall s) of one face through `name`, after a warm-up call."""
    engine = engines.load(model, name, "float32", device="cpu", cache=cache)
    lq, boxes = example_inputs(model, batch=1)
    engine(lq, boxes)
    runs = [measured(lambda: engine(lq, boxes))[:2] for _ in range(repeats)]
    return statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--frames", type=int, default=24)
    arguments.add_argument("--repeats", type=int, default=2, help="restore calls per engine (median)")
    arguments.add_argument("--engines", default="torch,onnxruntime", help="CPU engines to time the full network with")
    arguments.add_argument("--cache", type=Path, help="engine cache (exported graphs; default $DMDNET_CACHE or ~/.cache/dmdnet)")
    args = arguments.parse_args()
    models = ASSETS / "models"
    load_before = os.getloadavg()[0]
    costs = {}  # stage -> (CPU s, wall s) per frame (restore: per face)
    with tempfile.TemporaryDirectory() as folder:
        film = Path(folder) / "film1080.mp4"
        make_two_face_film(film, args.frames)
        info = probe(film)
        scan = Scanner(args.frames)(film)
        chunk = scan.chunks[0]
        count = len(scan.frame_pts)

        cpu, wall, pictures = measured(lambda: [(frame.picture, frame.picture.rgb(), frame.pts)
                                                for frame in read_frames(film, chunk.first_frame, chunk.last_frame, scan.frame_pts)])
        costs["decode"] = (cpu / count, wall / count)

        analyzer = FaceAnalyzer.from_models_dir(models)
        first = sorted(analyzer.analyze(pictures[0][1]), key=lambda face: face.box[0])
        if len(first) != FACES_PER_FRAME:
            raise SystemExit(f"the test film's first frame shows {len(first)} faces, expected {FACES_PER_FRAME}")
        identifier = Identifier({"Left": first[0].embedding[None], "Right": first[1].embedding[None]}, 0.45)
        tracker = FaceTracker(models, identifier)
        cpu, wall, tracks = measured(lambda: tracker(film, chunk, scan.frame_pts))
        costs["analyse (detect, landmarks, embed, track)"] = (cpu / count, wall / count)
        faces = sum(len(track.faces) for track in tracks)

        settings = ComposeSettings("auto", 512, references=dict(zip(identifier.names, identifier.centroids)),
                                   models_dir=str(models))
        unchanged = lambda crops, boxes, actor: crops.astype(np.float32)  # noqa: E731 (the restorer's share is measured apart)
        cpu, wall, _ = measured(lambda: Composer(info, settings, unchanged)(chunk, tracks, scan.frame_pts,
                                                                           Path(folder) / "composed.mp4"))
        costs["compose task (decode + align, guards, grain, blend + encode)"] = (cpu / count, wall / count)

        def encode():
            with ChunkWriter(Path(folder) / "encoded.mp4", info, "auto") as writer:
                for picture, _, pts in pictures:
                    writer.write(picture, pts)

        cpu, wall, _ = measured(encode)
        costs["encode (x264 CRF 14)"] = (cpu / count, wall / count)

    torch.manual_seed(0)
    model = DMDNet().eval()  # speed does not depend on the weights' values
    restore = {name: restore_seconds(name, model, args.repeats, args.cache) for name in args.engines.split(",")}
    compose_cpu = costs["compose task (decode + align, guards, grain, blend + encode)"][0]
    analyse_cpu = costs["analyse (detect, landmarks, embed, track)"][0]

    print(f"{count} frames {SIZE[0]}x{SIZE[1]} H.264 at {RATE} fps, {faces} faces ({faces / count:.1f} per frame), compact "
          f"face pack, {os.cpu_count()} CPU cores, torch {torch.__version__}, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after\n")
    print("| stage | CPU ms / frame | wall ms / frame |\n|---|---:|---:|")
    for stage, (cpu, wall) in costs.items():
        print(f"| {stage} | {cpu * 1e3:.0f} | {wall * 1e3:.0f} |")
    blend = compose_cpu - costs["decode"][0] - costs["encode (x264 CRF 14)"][0]
    print(f"| compose without decode and encode (align, guards, grain, blend) | {blend * 1e3:.0f} | - |")
    print("\n| restore, full-size network, 1 face, CPU | CPU s / face | wall s / face |\n|---|---:|---:|")
    for name, (cpu, wall) in restore.items():
        print(f"| {name} float32 | {cpu:.2f} | {wall:.2f} |")
    print(f"\n1080p{RATE}, {FACES_PER_FRAME} faces per frame; GPU seconds per face are ESTIMATES (no GPU measured)\n")
    print("| GPU (estimate) | GPU ms / face | frames/s per GPU | compose CPUs per GPU | + analyse CPUs per GPU | "
          f"GPUs for {RATE} fps |\n|---|---:|---:|---:|---:|---:|")
    for gpu, per_face in GPU_ESTIMATES:
        per_frame = FACES_PER_FRAME * per_face
        print(f"| {gpu} | {per_face * 1e3:.1f} | {1 / per_frame:.1f} | {compose_cpu / per_frame:.1f} | "
              f"{(compose_cpu + analyse_cpu) / per_frame:.1f} | {RATE * per_frame:.2f} |")


if __name__ == "__main__":
    main()
