"""How many CPUs keep one GPU restoring busy: stage costs measured at 1080p, two faces per frame.

Makes a 1920 x 1080 H.264 film of two real clips side by side (one face each), then measures
on this machine, in this process, with one thread as each task and actor has on a cluster, CPU
seconds (process time) and wall seconds:
  decode        reading and converting every frame (film_restore.video.read_frames, .rgb())
  analyse       faces, tracks, smoothing, identities (stages.FaceTracker)
  encode        encoding the decoded frames alone (video.ChunkWriter, codec auto: x264 CRF 14; and FFV1)
  master        the film as a ProRes 422 HQ 10-bit master: decoding it, and encoding its frames with codec
                auto (ProRes again)
  compose       a compose task (compose.Composer) with a stand-in restorer that changes the faces
                (sharpens, adds fresh noise; its own CPU is counted apart), timed step by step:
                on a CPU node every step runs in the task; on a GPU node the steps from WarpCrops to
                AddGrain run beside the restorer on its GPU (finish.device), so the node's CPUs do
                Align (without the crops' warp) and Blend (and decode and encode) in the task, and beside the restorer all but
                the torch ops' own work: measured on a torch run of the same chunk (on the CPU here),
                its CPU less the time inside the ops (a GPU's work there; OpCounter's hook stands
                in for their dispatch and launch), its freed memory kept for reuse as a GPU's caching
                allocator keeps it (RetainedMemory). Not in it: the GPU node's waits for its GPU
  restore       one 512 px face through the full-size network (width 64, 128 items) per CPU engine
and prints them per frame and per face, then the sizing at 250 faces/s (the issue's goal for
an H100/H200), 2 faces per frame:
  CPUs per GPU = faces/s x (compose CPU s per face + (decode + encode + analyse) CPU s per frame / 2)
The rows "face models on the GPU" leave out the CPU time of onnxruntime's run calls (the detector,
landmarks and recogniser of the analysis, the identity guard's recogniser), which a GPU node with
onnxruntime-gpu (install.sh) runs on CUDA: what stays on its CPUs, measured here without a GPU, so a
lower bound (the CUDA provider's own CPU per call is not in it).
The rows of the first table have stable names (a script may read them; --json prints them as JSON).

    FILM_RESTORE_ASSETS=../shared python -m bench.pool_size [--frames 24] [--repeats 2]
        [--engines torch,onnxruntime] [--cache DIR] [--json]   (from the repository root)
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import onnxruntime
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dmdnet import DMDNet, engines
from dmdnet.export import example_inputs
from film_restore.compose import ComposeSettings, Composer
from film_restore.finish import steps
from film_restore.finish.device import LocalDevice
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
# Faces per second one H100/H200 restores (the goal of the pool's sizing).
GOAL_FACES_PER_S = 250
# An archive's master (ProRes 422 HQ, 10-bit): made from the test film, decoded and encoded again as
# codec auto keeps it, for the sizing of a GPU node restoring masters.
MASTER_ENCODER, MASTER_PIX_FMT = "prores_ks", "yuv422p10le"


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


def restore_table(names: list[str], repeats: int, cache) -> dict[str, tuple[float, float]]:
    """Engine name -> restore_seconds of the full-size network (none built where no engine is named)."""
    if not names:
        return {}
    torch.manual_seed(0)
    model = DMDNet().eval()  # speed does not depend on the weights' values
    return {name: restore_seconds(name, model, repeats, cache) for name in names}


def restore_seconds(name: str, model: DMDNet, repeats: int, cache) -> tuple[float, float]:
    """(median CPU s, median wall s) of one face through `name`, after a warm-up call."""
    engine = engines.load(model, name, "float32", device="cpu", cache=cache)
    lq, boxes = example_inputs(model, batch=1)
    engine(lq, boxes)
    runs = [measured(lambda: engine(lq, boxes))[:2] for _ in range(repeats)]
    return statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)


class Timed:
    """A function, its CPU time kept (summed over its calls)."""

    def __init__(self, function):
        self.function, self.cpu_seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        started = time.process_time()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.cpu_seconds += time.process_time() - started


class OnnxRunTimer:
    """The CPU time of every onnxruntime session's run calls in this process while installed (`with`)."""

    def __enter__(self):
        self.original = onnxruntime.InferenceSession.run
        self.runs = Timed(self.original)
        onnxruntime.InferenceSession.run = lambda session, *args, **kwargs: self.runs(session, *args, **kwargs)
        return self

    def __exit__(self, *exc):
        onnxruntime.InferenceSession.run = self.original

    def measured(self, work) -> tuple[float, float, object, float]:
        """measured(work), with the onnxruntime run calls' CPU seconds during it as a fourth value."""
        before = self.runs.cpu_seconds
        cpu, wall, result = measured(work)
        return cpu, wall, result, self.runs.cpu_seconds - before


class OpCounter(TorchDispatchMode):
    """While installed (`with`): the torch ops run (those that run a kernel, and views) and the CPU seconds
    inside them (their work on a CPU device: a GPU's on a GPU node). The hook's own Python per op, outside
    that time (~6 us here once warm; more after an op that sweeps tens of MB, whose caches it refills:
    BENCHMARKS.md), stands in for what an op's dispatch and launch cost a process on CUDA."""

    def __init__(self):
        super().__init__()
        self.kernels = self.views = 0
        self.cpu_seconds = 0.0

    def __torch_dispatch__(self, function, types, args=(), kwargs=None):
        started = time.process_time()
        try:
            return function(*args, **(kwargs or {}))
        finally:
            self.cpu_seconds += time.process_time() - started
            if function.is_view:
                self.views += 1
            else:
                self.kernels += 1


class RetainedMemory:
    """While installed (`with`): memory this process frees is kept and reused, as a GPU's caching allocator
    keeps the device's (glibc's malloc told to take no block from the OS by mmap and to give none back).
    Without it the torch run standing in for a GPU node returns its large tensors to the OS as they are
    freed (munmap, in the Python that drops them: outside the ops, so counted as the node's CPU) and
    takes fresh pages for the next ones, which a GPU node's finishing does not (BENCHMARKS.md). It holds for
    all the run's work, the node's own numpy and OpenCV parts too. applied: whether this C library took the
    settings (glibc; elsewhere the run is measured as it comes). Leaving restores glibc's defaults, but its
    threshold for mmap, adjusted to the blocks freed until then, stays fixed for the rest of the process."""

    # mallopt's parameters and glibc's defaults for them (malloc.h).
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
    # The free memory at the heap's top it keeps: the most mallopt's int takes.
    KEPT_TRIM_THRESHOLD = 2 ** 31 - 1

    def __enter__(self):
        self.taken = []  # (parameter, its default) of each setting taken
        try:
            self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
            for parameter, value, default in ((self.M_MMAP_MAX, 0, self.DEFAULT_MMAP_MAX),
                                              (self.M_TRIM_THRESHOLD, self.KEPT_TRIM_THRESHOLD, self.DEFAULT_TRIM_THRESHOLD)):
                if self.libc.mallopt(parameter, value):
                    self.taken.append((parameter, default))
        except (OSError, AttributeError, TypeError):
            pass
        self.applied = len(self.taken) == 2
        return self

    def __exit__(self, *exc):
        for parameter, default in self.taken:
            self.libc.mallopt(parameter, default)


class StandInRestorer:
    """Changes faces as a restorer does (sharper, with fresh noise of its own), cheaply; its CPU time is kept apart."""

    def __init__(self):
        self.cpu_seconds = 0.0

    def __call__(self, crops, boxes, actor):
        started = time.process_time()
        faces = crops.astype(np.float32)
        sharp = np.stack([face + 0.8 * (face - cv2.GaussianBlur(face, (0, 0), 1.5)) for face in faces])
        restored = sharp + np.random.default_rng(len(crops)).normal(0, 1.5, faces.shape).astype(np.float32)
        self.cpu_seconds += time.process_time() - started
        return restored


def warm_up(composer: Composer, chunk, tracks, frame_pts, path: Path) -> None:
    """The chunk composed once, unmeasured, its torch ops counted: what a process pays once (imports; the op
    counter's first use imports torch._dynamo, ~1.3 s; the memory its work takes) is no face's cost where a
    worker composes a whole film, and would be charged to the bench's few faces."""
    with OpCounter():
        composer(chunk, tracks, frame_pts, path)


def decoded(film: Path) -> list:
    """(picture, its RGB, pts) of every frame, decoded and converted as a compose task does."""
    return [(frame.picture, frame.picture.rgb(), frame.pts) for frame in read_frames(film)]


def make_master(pictures: list, path: Path) -> None:
    """The decoded film as an archive master would hold it (MASTER_ENCODER, MASTER_PIX_FMT)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(MASTER_ENCODER, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], MASTER_PIX_FMT
        for _, rgb, _ in pictures:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def encode(path: Path, info, codec: str, pictures: list) -> None:
    """The decoded pictures encoded as a compose task encodes its chunk (ChunkWriter), with this codec."""
    with ChunkWriter(path, info, codec) as writer:
        for picture, _, pts in pictures:
            writer.write(picture, pts)


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--frames", type=int, default=24)
    arguments.add_argument("--repeats", type=int, default=2, help="restore calls per engine (median)")
    arguments.add_argument("--engines", default="torch,onnxruntime", help="CPU engines to time the full network with ('' for none)")
    arguments.add_argument("--cache", type=Path, help="engine cache (exported graphs; default $DMDNET_CACHE or ~/.cache/dmdnet)")
    arguments.add_argument("--json", action="store_true", help="print the rows as JSON only")
    args = arguments.parse_args()
    # One CPU per stage, as the pipeline's tasks and actors have on a cluster (pipeline.cluster).
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    models = ASSETS / "models"
    load_before = os.getloadavg()[0]
    # The full network's restores are timed first: the GPU node's run, last, leaves glibc's malloc policy changed (RetainedMemory).
    names = [] if args.json else [name for name in args.engines.split(",") if name]
    restores = restore_table(names, args.repeats, args.cache)
    with tempfile.TemporaryDirectory() as folder, OnnxRunTimer() as onnx:
        film = Path(folder) / "film1080.mp4"
        make_two_face_film(film, args.frames)
        info = probe(film)
        scan = Scanner(args.frames)(film)
        chunk = scan.chunks[0]
        count = len(scan.frame_pts)

        decode_cpu, _, pictures = measured(lambda: decoded(film))
        analyzer = FaceAnalyzer.from_models_dir(models)
        first = sorted(analyzer.analyze(pictures[0][1]), key=lambda face: face.box[0])
        if len(first) != FACES_PER_FRAME:
            raise SystemExit(f"the test film's first frame shows {len(first)} faces, expected {FACES_PER_FRAME}")
        identifier = Identifier({"Left": first[0].embedding[None], "Right": first[1].embedding[None]}, 0.45)
        tracker = FaceTracker(models, identifier)
        tracker(film, chunk, scan.frame_pts)  # its sessions' first runs, unmeasured (as warm_up for the compose)
        analyse_cpu, _, tracks, analyse_onnx = onnx.measured(lambda: tracker(film, chunk, scan.frame_pts))
        faces = sum(len(track.faces) for track in tracks)

        settings = ComposeSettings("auto", 512, references=dict(zip(identifier.names, identifier.centroids)),
                                   models_dir=str(models))
        embedding = Timed(steps.embedder_of(str(models)))
        steps.embedder_of = lambda models_dir: embedding  # the identity guard's embeddings timed apart
        warm_up(Composer(info, settings, StandInRestorer()), chunk, tracks, scan.frame_pts, Path(folder) / "warm.mp4")
        embedding.cpu_seconds = 0.0
        restorer = StandInRestorer()
        composer = Composer(info, settings, restorer)
        compose_cpu, compose_wall, _, _ = onnx.measured(
            lambda: composer(chunk, tracks, scan.frame_pts, Path(folder) / "composed.mp4"))
        steps_cpu = dict(composer.cpu_seconds)
        steps_cpu["Restore"] -= restorer.cpu_seconds
        embedding_cpu = embedding.cpu_seconds
        encode_cpu = {codec: measured(lambda: encode(Path(folder) / f"{codec}.mkv", info, codec, pictures))[0]
                      for codec in ("auto", "ffv1")}
        master = Path(folder) / "master.mov"
        make_master(pictures, master)
        master_decode_cpu, _, master_pictures = measured(lambda: decoded(master))
        master_info = probe(master)
        master_encode_cpu = measured(lambda: encode(Path(folder) / "master.mkv", master_info, "auto", master_pictures))[0]

        # The same chunk finished as on a GPU node, in torch (on the CPU here), its ops counted: what its
        # finishing costs the node's CPU is its time less the ops' own work (a GPU's there). Measured last:
        # its memory is kept for reuse, as a GPU's caching allocator keeps it (RetainedMemory).
        device_restorer = StandInRestorer()
        device_composer = Composer(info, settings, LocalDevice(device_restorer, "cpu"))
        with RetainedMemory() as retained:
            warm_up(Composer(info, settings, LocalDevice(StandInRestorer(), "cpu")), chunk, tracks, scan.frame_pts,
                    Path(folder) / "warm_torch.mp4")
            with OpCounter() as device_ops:
                device_onnx = onnx.measured(lambda: device_composer(chunk, tracks, scan.frame_pts, Path(folder) / "torch.mp4"))[3]
        device_cpu = dict(device_composer.cpu_seconds)
        beside_restorer = device_cpu["Finish"] - device_restorer.cpu_seconds - device_ops.cpu_seconds

    cpu_node = sum(steps_cpu.values()) / faces
    # On a GPU node the finishing steps run beside the restorer, on its GPU, but for their CPU parts: the
    # flows (OpenCV's DIS), the identity guard's embeddings (the face models run on the CPU unless
    # onnxruntime-gpu is installed) and launching the torch ops.
    gpu_node = (device_cpu["Align"] + beside_restorer + device_cpu["Blend"]) / faces
    gpu_node_face_models = gpu_node - device_onnx / faces
    per_frame = (decode_cpu + encode_cpu["auto"] + analyse_cpu) / count
    per_frame_face_models = (decode_cpu + encode_cpu["auto"] + analyse_cpu - analyse_onnx) / count
    # The analysis decodes the master too, in place of the H.264 film its run decoded.
    per_frame_master = (2 * master_decode_cpu - decode_cpu + master_encode_cpu + analyse_cpu - analyse_onnx) / count
    rows = {
        "decode CPU ms per frame": decode_cpu / count * 1e3,
        "analyse CPU ms per frame": analyse_cpu / count * 1e3,
        "encode CPU ms per frame": encode_cpu["auto"] / count * 1e3,
        "compose CPU ms per face, CPU node": cpu_node * 1e3,
        "compose CPU ms per face, GPU node": gpu_node * 1e3,
        "CPUs per GPU at 250 faces/s, CPU node": GOAL_FACES_PER_S * (cpu_node + per_frame / FACES_PER_FRAME),
        "CPUs per GPU at 250 faces/s, GPU node": GOAL_FACES_PER_S * (gpu_node + per_frame / FACES_PER_FRAME),
        "torch ops per face on a GPU node, kernels": device_ops.kernels / faces,
        "torch ops per face on a GPU node, views": device_ops.views / faces,
        "CPU ms per face beside the restorer on a GPU node": beside_restorer / faces * 1e3,
        "encode CPU ms per frame, ffv1": encode_cpu["ffv1"] / count * 1e3,
        "decode CPU ms per frame, ProRes master": master_decode_cpu / count * 1e3,
        "encode CPU ms per frame, ProRes master": master_encode_cpu / count * 1e3,
        "analyse CPU ms per frame, face models on the GPU": (analyse_cpu - analyse_onnx) / count * 1e3,
        "compose CPU ms per face, GPU node, face models on the GPU": gpu_node_face_models * 1e3,
        "CPUs per GPU at 250 faces/s, GPU node, face models on the GPU":
            GOAL_FACES_PER_S * (gpu_node_face_models + per_frame_face_models / FACES_PER_FRAME),
        "CPUs per GPU at 250 faces/s, GPU node, face models on the GPU, ProRes master":
            GOAL_FACES_PER_S * (gpu_node_face_models + per_frame_master / FACES_PER_FRAME),
    }
    if args.json:
        print(json.dumps({name: round(value, 1) for name, value in rows.items()}))
        return
    memory = "with its memory kept (RetainedMemory)" if retained.applied else "with the C library's own memory policy"
    print(f"{count} frames {SIZE[0]}x{SIZE[1]} H.264 at {RATE} fps, {faces} faces ({faces / count:.1f} per frame), compact "
          f"face pack, {os.cpu_count()} CPU cores ({cpu_name()}), torch {torch.__version__}, load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; the GPU node's torch run {memory}\n")
    print("| row | value |\n|---|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value:.1f} |")
    print(f"\ncompose task: {compose_cpu / count * 1e3:.0f} ms CPU and {compose_wall / count * 1e3:.0f} ms wall per frame, "
          f"decode and encode included; the stand-in restorer's own {restorer.cpu_seconds / faces * 1e3:.1f} ms per face left out\n")
    print("| compose step | CPU ms / face |\n|---|---:|")
    for name, seconds in steps_cpu.items():
        print(f"| {name} | {seconds / faces * 1e3:.1f} |")
    print(f"| (of Guard: the identity embeddings) | {embedding_cpu / faces * 1e3:.1f} |")
    if restores:
        print("\n| restore, full-size network, 1 face, CPU | CPU s / face | wall s / face |\n|---|---:|---:|")
        for name, (cpu, wall) in restores.items():
            print(f"| {name} float32 | {cpu:.2f} | {wall:.2f} |")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
