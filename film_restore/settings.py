"""The defaults of a run's settings in one place: the command line, the pipeline and the archive jobs read them here."""
from __future__ import annotations

from pathlib import Path

# Frames per unit of work (and of resume); chunks hold whole shots, so they can be longer.
CHUNK_FRAMES = 250
# Side of the square the face detector letterboxes each frame into.
DETECTOR_SIZE = 640
# The face detector runs on every DETECT_EVERY-th frame of a shot (and its first and last, and
# wherever following a face fails); faces are followed by their landmarks in between
# (film_restore.following; BENCHMARKS.md, "Face analysis: detection every k-th frame").
DETECT_EVERY = 5
# Attempts at each chunk's stage (and at the scan) before the run ends with exit status 5: a lost
# worker (killed, out of memory, its node gone) or an error costs one; the chunk is sent again after
# a pause that doubles (film_restore.pipeline.chunks), and a lost actor is restarted by Ray.
CHUNK_ATTEMPTS = 3
# Chunks sent to each worker ahead of their results (one at work, one waiting): the driver and
# Ray's object store hold this many per worker whatever the film's length, and no worker idles.
CHUNKS_IN_FLIGHT_PER_WORKER = 2
# Nights in a row the nightly archive job (jobs/nightly.py) tries a film that keeps failing before it
# stops trying it (until the film, its cast or its settings change, or --force).
NIGHTLY_ATTEMPTS = 3
# Faces per forward pass of the restorer; bounds memory (about 0.6 GB per face at full width on CPU).
RESTORE_BATCH = 8
CODEC = "auto"
# Faces whose detector box is narrower or shorter than this (frame pixels) are left untouched:
# too little of them for the restorer to recover, and what it invents would show.
MIN_FACE = 24
AUTO = "auto"
# Grain on restored faces: "auto" re-creates the film's own (film_restore.finish.grain), "off" leaves
# them clean (the grain is still estimated: the frame's detail kept above the crop's resolution leaves it out).
GRAIN_MODES = (AUTO, "off")
GRAIN = AUTO
# Track fusion: each face's input fused with its neighbours' along its track before the guards keep
# its low band ("on", film_restore.finish.guards), or the face's own input only ("off").
FUSION_MODES = ("on", "off")
FUSION = "on"
# Share of the restoration a face gets: "auto" lets the guards decide per face (film_restore.finish.guards)
# and holds each face to the film's own change from frame to frame (finish.hold), 0..1 fixes it.
STRENGTH = AUTO
# What runs DMDNet in the restore actors (dmdnet.engines): eager torch in float32, the exact
# reference, on every device. Not "auto" by default: on a CPU, auto exports an ONNX graph and
# times every candidate on a face before the first restore (minutes for the full network on a
# 2-core machine, once per node and model), and on this project's CPUs it gained nothing
# reliable (BENCHMARKS.md, "DMDNet engines on CPU"); a CI run would pay that for nothing. On a
# GPU pool pass --engine auto: TensorRT, else onnxruntime, else torch, at the run's precision
# (with --precision auto or float16: half precision), each checked within 40 dB of float32 at
# actor start, TensorRT engines built once per node and cached.
ENGINE = "torch"
# float32 | bfloat16 | float16 | auto (the engine's own choice for the device: float32 on a CPU, float16 on a GPU).
PRECISION = "float32"


def parse_strength(value) -> float | str:
    """AUTO or a float in [0, 1]; a clear error otherwise."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        strength = float(value)
    except (TypeError, ValueError):
        strength = None
    if strength is None or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number from 0 to 1 or 'auto', got {value!r}")
    return strength


def parse_fusion(value) -> str:
    """One of FUSION_MODES; a clear error otherwise."""
    if value not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {', '.join(FUSION_MODES)}, got {value!r}")
    return value


def parse_grain(value) -> str:
    """One of GRAIN_MODES; a clear error otherwise."""
    if value not in GRAIN_MODES:
        raise ValueError(f"grain must be one of {', '.join(GRAIN_MODES)}, got {value!r}")
    return value


def default_output(film: Path) -> Path:
    """INPUT_STEM.restored.EXT beside the input."""
    return film.with_name(f"{film.stem}.restored{film.suffix}")


def default_workroot(output: Path) -> Path:
    """The hidden work folder beside the output: .OUTPUT_NAME.work"""
    return output.parent / f".{output.name}.work"


def default_report(output: Path) -> Path:
    """OUTPUT_STEM.report.json beside the output (report.html beside it)."""
    return output.with_name(f"{output.stem}.report.json")
