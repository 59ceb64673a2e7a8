"""Film pipeline throughput on this machine's CPU: a 720p film, dry run and full run.

Makes a 1280 x 720 H.264 film with audio from a real clip, a one-actor cast from frames of
another part of the clip, and a narrow seeded DMDNet (width 8; the full network's restore
speed is in bench/dmdnet_cpu.py), then runs the pipeline in-process on a local Ray:
  --dry-run   scan + face analysis (shots, tracks, identities)
  full        the same + restore, compose, encode (codec auto: x264) and join.
Prints frames/s per run and per stage, and the stage that bounds the throughput.

    FILM_RESTORE_ASSETS=../shared python -m bench.pipeline_cpu [--frames 120]   (from the repository root:
    the film and the cast are made with the tests' helpers)
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from film_restore.pipeline import Job, init_ray, run
from tests.assets import ASSETS, save_small_checkpoint
from tests.media import make_film, write_references

CLIP = ASSETS / "media/clips/retalk_2.mp4"
STAGES = ("scan", "analyse", "restore_and_encode", "join")


def prepare(folder: Path, frames: int) -> tuple[Path, Path, Path]:
    film = folder / "film720.mp4"
    make_film(film, [CLIP], frames, size=(1280, 720), with_audio=True)
    write_references(CLIP, folder / "refs", 4)
    cast = folder / "cast.yaml"
    cast.write_text("actors:\n  - name: Speaker\n    references: refs/*.png\n")
    return film, cast, save_small_checkpoint(folder / "DMDNet.pth")


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--frames", type=int, default=120)
    args = arguments.parse_args()
    os.environ.setdefault("FILM_RESTORE_DASHBOARD", "0")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        film, cast, checkpoint = prepare(folder, args.frames)
        start = time.perf_counter()
        init_ray()
        ray_start = time.perf_counter() - start
        reports = {}
        for name, dry_run in (("dry run", True), ("full run", False)):
            job = Job(input=film, cast=cast, output=folder / f"{name.replace(' ', '_')}.mp4", checkpoint=checkpoint,
                      models=ASSETS / "models", workdir=folder / f"work-{dry_run}", dry_run=dry_run)
            reports[name] = run(job)
    frames = args.frames
    print(f"{frames} frames 1280x720 H.264 ({CLIP.name}, one face per frame), compact face pack, DMDNet width 8, "
          f"{os.cpu_count()} CPU cores, local Ray (started in {ray_start:.1f} s, not counted)\n")
    print("| run | total s | frames/s | " + " | ".join(f"{s} s (frames/s)" for s in STAGES) + " |")
    print("|---|---:|---:|" + "---:|" * len(STAGES))
    for name, report in reports.items():
        timings = report["timings_s"]
        cells = [f"{timings[s]:.1f} ({frames / timings[s]:.1f})" if s in timings else "-" for s in STAGES]
        print(f"| {name} | {timings['total']:.1f} | {frames / timings['total']:.2f} | " + " | ".join(cells) + " |")
    for name, report in reports.items():
        timings = {s: report["timings_s"][s] for s in STAGES if s in report["timings_s"]}
        bound = max(timings, key=timings.get)
        print(f"\n{name}: bounded by {bound} ({timings[bound] / report['timings_s']['total']:.0%} of the time); "
              f"cast preparation {report['timings_s']['cast']:.1f} s")


if __name__ == "__main__":
    main()
