"""Restore the actors' faces of a film.

    python -m film_restore.run INPUT --cast CAST.yaml [-o OUTPUT] [--checkpoint DMDNet.pth]
        [--models DIR] [--workdir DIR] [--resume] [--codec auto|x264|x265|prores|dnxhd|ffv1]
        [--report report.json] [--dry-run] [--strength 0..1|auto] [--grain auto|off] [--fusion on|off] [--min-face PX]
        [--address HOST:PORT] [--engine torch|onnxruntime|tensorrt|auto] [--precision float32|bfloat16|float16|auto]
        [--edits EDITS.yaml] [--drop-chunks] [--verbose]

Runs on an embedded local Ray, or on the cluster of `ray job submit` / RAY_ADDRESS.
The output appears only when complete; the input is never written. A failure ends in one line
`error: ...` and an exit status per class of failure (film_restore.pipeline.failures; README.md);
its traceback goes to WORKDIR/INPUT_NAME.log (and to the terminal with --verbose, or for a bug).
SIGINT and SIGTERM stop the run within seconds, keeping its finished chunks for --resume.
--edits with --resume corrects tracks (film_restore.edits) and composes again only the chunks they change.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import ray

from dmdnet.engines import ENGINES, PRECISIONS
from film_restore import settings
from film_restore.pipeline import Job, run
from film_restore.pipeline.failures import UNEXPECTED, FailureLog, Interrupted, exit_code, stopping_on_signals
from film_restore.video import CODECS
from film_restore.workdir import failure_log


def _strength(value: str):
    try:
        return settings.parse_strength(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(prog="python -m film_restore.run", description=__doc__.split("\n\n")[0])
    arguments.add_argument("input", type=Path, help="the film")
    arguments.add_argument("--cast", type=Path, required=True, help="cast.yaml: actors and reference photos")
    arguments.add_argument("-o", "--output", type=Path, help="default: INPUT_STEM.restored.EXT beside the input")
    arguments.add_argument("--checkpoint", type=Path, help="DMDNet.pth (default $FILM_RESTORE_CHECKPOINT, else fetched)")
    arguments.add_argument("--models", type=Path,
                           help="face models folder or pack name (default $FILM_RESTORE_MODELS, else buffalo_l, fetched)")
    arguments.add_argument("--workdir", type=Path, help="where chunk results are kept (default beside the output)")
    arguments.add_argument("--resume", action="store_true",
                           help="reuse the finished work of an earlier run (interrupted, or done: with --edits)")
    arguments.add_argument("--edits", type=Path, help="edits.yaml: corrections per track (actor, none, strength, skip); "
                                                      "with --resume only the chunks they change are composed again")
    arguments.add_argument("--drop-chunks", action="store_true",
                           help="delete the restored chunks after the join (as large as the film's video); a later "
                                "--edits run then composes every chunk again")
    arguments.add_argument("--codec", choices=CODECS, default=settings.CODEC, help="auto keeps the input's codec family")
    arguments.add_argument("--report", type=Path, help="report.json path (default OUTPUT_STEM.report.json)")
    arguments.add_argument("--dry-run", action="store_true", help="shots, tracks and identities only; no restore")
    arguments.add_argument("--chunk-frames", type=int, default=settings.CHUNK_FRAMES, help="frames per unit of work (whole shots)")
    arguments.add_argument("--min-face", type=int, default=settings.MIN_FACE, metavar="PX",
                           help=f"faces whose box is narrower or shorter than this are left as they are (default {settings.MIN_FACE})")
    arguments.add_argument("--address", help="join this Ray cluster (host:port or ray://host:port; default $RAY_ADDRESS, "
                                             "else a local Ray)")
    arguments.add_argument("--grain", choices=settings.GRAIN_MODES, default=settings.GRAIN,
                           help="auto re-creates the film's grain on restored faces; off leaves them clean")
    arguments.add_argument("--fusion", choices=settings.FUSION_MODES, default=settings.FUSION,
                           help="on fuses each face's input with its neighbours' along its track; off uses each frame alone")
    arguments.add_argument("--strength", type=_strength, default=settings.STRENGTH,
                           help="0..1: share of the restoration used; auto (default): the guards decide per face")
    arguments.add_argument("--engine", choices=ENGINES, default=settings.ENGINE,
                           help=f"what runs DMDNet (default {settings.ENGINE}; auto: the fastest within 40 dB of float32, "
                                "measured at start; use it on GPU nodes)")
    arguments.add_argument("--precision", choices=("auto", *PRECISIONS), default=settings.PRECISION,
                           help=f"the engine's number format (default {settings.PRECISION}; auto: the engine's choice for the device)")
    arguments.add_argument("--verbose", action="store_true", help="print a failure's full traceback, not only its line")
    return arguments


def job_from_args(args) -> Job:
    output = args.output or settings.default_output(args.input)
    return Job(
        input=args.input, cast=args.cast, output=output, checkpoint=args.checkpoint, models=args.models,
        workdir=args.workdir, resume=args.resume, codec=args.codec, report=args.report, dry_run=args.dry_run,
        chunk_frames=args.chunk_frames, min_face=args.min_face, address=args.address, grain=args.grain, fusion=args.fusion,
        strength=args.strength, engine=args.engine, precision=args.precision, edits=args.edits,
        drop_chunks=args.drop_chunks,
    )


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    job = job_from_args(args)
    with stopping_on_signals():
        failure = None
        try:
            run(job)
        except (Exception, KeyboardInterrupt) as error:
            failure = error
        if ray.is_initialized():
            ray.shutdown()  # before the last line: nothing of Ray's prints after it
        return 0 if failure is None else _failed(job, failure, args.verbose)


def _failed(job: Job, error: BaseException, verbose: bool) -> int:
    """Logs the failure with its traceback in the work folder and says it in one line; its exit status."""
    code = exit_code(error)
    line = " ".join(str(error).split()) or type(error).__name__
    if code == UNEXPECTED:
        line = f"{job.input.name}: unexpected {type(error).__name__}: {line} (a bug: please report it with its log)"
    elif isinstance(error, Interrupted) and error.message is None:
        line = f"{job.input.name}: {line} before its chunks were worked on"
    log = FailureLog(failure_log(job.workroot.expanduser().absolute(), job.input))
    details = "".join(traceback.format_exception(error))
    log.write(f"exit status {code}: {line}", details)
    if verbose or code == UNEXPECTED:
        print(details, end="", file=sys.stderr)
    if log.path.is_file():
        print(f"{job.input.name}: details in {log.path}", file=sys.stderr)
    print(f"error: {line}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
