"""Memory against film length: peak RSS of the driver and of each kind of worker, and the object
store's peak, for a film and for the same film 10 times longer (same resolution).

Each film is made of --shots (or 10x as many) shots of --frames-per-shot frames, two real clips
taking turns (one chunk per shot), with a one-actor cast and the narrow seeded DMDNet; the short
film runs once first, unmeasured, to build the cast's store (reference faces, dictionaries), then
--repeats times (its peaks: the highest of those runs, as many chunks as the long film has). The bench
starts its own local Ray and runs `python -m film_restore.run` joined to it, so that the driver is
a process of its own: its peak RSS is what the kernel reports when it ends (wait4's ru_maxrss);
the workers' (children of the raylet, named by their process title: ray::AnalyseActor,
ray::RestoreActor, ray::film_restore.compose-N) is their VmHWM, read every SAMPLE_S; the object store's use
comes from the raylet's memory statistics, read as often.

    FILM_RESTORE_ASSETS=../shared python -m bench.memory_flat [--shots 6] [--frames-per-shot 6] [--size 640x360] [--repeats 10]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import ray

from tests.assets import ASSETS, REPO, save_small_checkpoint
from tests.media import make_film, write_references
from tests.own_ray import own_ray

CLIPS = (ASSETS / "media/clips/retalk_2.mp4", ASSETS / "media/clips/liveportrait_d10.mp4")
SAMPLE_S = 0.25
# Process titles (ray::CLASS for actors, ray::NAME for named tasks) -> the role reported.
ROLES = {"ray::AnalyseActor": "analysis actor", "ray::RestoreActor": "restore actor",
         "ray::film_restore.compose": "compose task", "ray::film_restore.scan": "scan task"}


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


class Sampler(threading.Thread):
    """Peak VmHWM per worker role and the object store's peak use, until stop()."""

    def __init__(self, raylet: int, gcs: str):
        super().__init__(daemon=True)
        self.raylet, self.gcs = raylet, gcs
        self.peaks: dict[str, int] = defaultdict(int)  # role -> kB
        self.store_peak = 0
        self.running = True

    def run(self) -> None:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(self.gcs)
        while self.running:
            for pid in _children(self.raylet):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                except OSError:
                    continue
                role = next((name for prefix, name in ROLES.items() if title.startswith(prefix)), None)
                peak = _status_kb(pid, "VmHWM")
                if role and peak:
                    self.peaks[role] = max(self.peaks[role], peak)
            used = get_memory_info_reply(state).store_stats.object_store_bytes_used
            self.store_peak = max(self.store_peak, used)
            time.sleep(SAMPLE_S)

    def stop(self) -> None:
        self.running = False
        self.join()


def restore(folder: Path, film: Path, gcs: str, raylet: int) -> dict:
    output = folder / f"{film.stem}.restored.mkv"
    command = [sys.executable, "-m", "film_restore.run", str(film), "--cast", str(folder / "cast.yaml"),
               "--checkpoint", str(folder / "DMDNet.pth"), "--models", str(ASSETS / "models"), "-o", str(output),
               "--workdir", str(folder / f"work-{film.stem}"), "--codec", "ffv1", "--chunk-frames",
               str(FRAMES_PER_SHOT), "--address", gcs]
    sampler = Sampler(raylet, gcs)
    sampler.start()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "FILM_RESTORE_DASHBOARD": "0", "FILM_RESTORE_GPUS": "0"},
                               stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    time.sleep(2 * SAMPLE_S)
    sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"{film.name}: the run failed ({process.returncode}): {stderr[-2000:]}")
    return {"seconds": seconds, "driver": usage.ru_maxrss, **sampler.peaks, "object store": sampler.store_peak // 1024}


FRAMES_PER_SHOT = 6


def main() -> None:
    global FRAMES_PER_SHOT
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--shots", type=int, default=6, help="shots of the shorter film (the longer: 10x)")
    arguments.add_argument("--frames-per-shot", type=int, default=FRAMES_PER_SHOT)
    arguments.add_argument("--size", default="640x360")
    arguments.add_argument("--repeats", type=int, default=10, help="runs of the shorter film; its peaks are their highest")
    args = arguments.parse_args()
    FRAMES_PER_SHOT = args.frames_per_shot
    size = tuple(int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        films = {}
        for name, shots in (("film", args.shots), ("film10x", 10 * args.shots)):
            films[name] = folder / f"{name}.mkv"
            make_film(films[name], [CLIPS[shot % 2] for shot in range(shots)], FRAMES_PER_SHOT, size=size, with_audio=True)
        write_references(CLIPS[0], folder / "refs", 4)
        (folder / "cast.yaml").write_text("actors:\n  - name: Speaker\n    references: refs/*.png\n")
        save_small_checkpoint(folder / "DMDNet.pth")
        with own_ray(num_cpus=os.cpu_count()):
            gcs = ray.get_runtime_context().gcs_address
            raylet = next(pid for pid in _children(os.getpid())
                          if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"raylet"))
            restore(folder, films["film"], gcs, raylet)  # not measured: builds the cast's store (references, dictionaries)
            # The short film as often as the long one is longer: the same number of chunks sampled, so that
            # peaks of quantities that vary from moment to moment (requests in flight) are compared fairly.
            short = [restore(folder, films["film"], gcs, raylet) for _ in range(args.repeats)]
            results = {"film": {key: max(run.get(key, 0) for run in short) for key in set().union(*short)},
                       "film10x": restore(folder, films["film10x"], gcs, raylet)}
            results["film"]["seconds"] = sum(run["seconds"] for run in short) / len(short)
    columns = ["driver", "analysis actor", "restore actor", "compose task", "object store"]
    print(f"{size[0]}x{size[1]}, {FRAMES_PER_SHOT} frames per shot and chunk, narrow seeded DMDNet, compact face pack, "
          f"{os.cpu_count()} CPU cores, codec ffv1; peaks in MiB\n")
    print(f"Row film: the highest peaks of {args.repeats} runs (run s: their mean).\n")
    print("| film | frames | chunks | " + " | ".join(columns) + " | run s |")
    print("|---|---:|---:|" + "---:|" * (len(columns) + 1))
    for (name, result), shots in zip(results.items(), (args.shots, 10 * args.shots)):
        cells = [f"{result.get(column, 0) / 1024:.0f}" for column in columns]
        print(f"| {name} | {shots * FRAMES_PER_SHOT} | {shots} | " + " | ".join(cells) + f" | {result['seconds']:.0f} |")
    short, long = results.values()
    ratios = [f"{long.get(c, 0) / short[c]:.2f}" if short.get(c) else "-" for c in columns]
    print("| 10x / 1x | 10.0 | 10.0 | " + " | ".join(ratios) + f" | {long['seconds'] / short['seconds']:.1f} |")


if __name__ == "__main__":
    main()
