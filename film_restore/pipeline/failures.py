"""How a run ends when it cannot finish: one line, an exit code per class of failure, the whole story in a log.

Exit codes (README.md and RUNBOOK.md list them for users):

    0    done
    1    unexpected error: a bug (the log has the traceback)
    2    bad command line (argparse)
    3    bad input: the film, the cast file or its photos, a setting
    4    a model missing or unusable: checkpoint, dictionaries, face models, engine
    5    a chunk failed settings.CHUNK_ATTEMPTS times: its workers lost (killed, out of memory, node lost) or raising
    6    output not writable: the output's folder, the work folder (permissions, read-only, full)
    7    no Ray cluster answers at the address asked for
    130  interrupted by SIGINT (Ctrl-C); 143: stopped by SIGTERM (`ray job stop`)

A worker's failure reaches the driver as one of Ray's errors; `cause_of` says in one line what
happened to the attempt (worker lost, out of memory, an error raised) and whether another attempt
may succeed.
"""
from __future__ import annotations

import contextlib
import signal
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import ray

from dmdnet import CheckpointError
from film_restore.cast import CastError
from film_restore.models import ModelsError
from film_restore.video import VideoError
from film_restore.video.formats import STORAGE_ERRNOS, StorageError

UNEXPECTED, INPUT, MODEL, CHUNK_FAILED, NOT_WRITABLE, NO_CLUSTER = 1, 3, 4, 5, 6, 7


class PipelineError(RuntimeError):
    """A run that could not complete; the message says what failed and the fix."""

    exit_code = UNEXPECTED


class InputError(PipelineError):
    exit_code = INPUT


class ModelError(PipelineError):
    exit_code = MODEL


class ChunkFailed(PipelineError):
    """A chunk (or the scan) failed settings.CHUNK_ATTEMPTS times."""

    exit_code = CHUNK_FAILED


class NotWritable(PipelineError):
    exit_code = NOT_WRITABLE


class NoCluster(PipelineError):
    exit_code = NO_CLUSTER


class Interrupted(PipelineError):
    """SIGINT or SIGTERM: the run stopped, its finished chunks kept (message: where it stopped, once known)."""

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(signum, message)
        self.signum, self.message = signum, message
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        return self.message or f"{'interrupted' if self.signum == signal.SIGINT else 'stopped'} ({signal.Signals(self.signum).name})"


class _Signals:
    """The signal received (None: none yet), whether Interrupted was raised for it, and how many of Ray's
    blocking calls the main thread is in."""

    received: int | None = None
    raised: bool = False
    in_ray: int = 0


@contextlib.contextmanager
def stopping_on_signals():
    """SIGINT and SIGTERM raise Interrupted in the main thread while the block runs, so that the run's own
    cleanup (workers killed, temporary files removed, nothing at the output path) runs before it ends. In
    one of Ray's blocking calls (in_ray) it is raised as the call returns. A second signal during the
    cleanup is ignored so that it completes."""
    _Signals.received, _Signals.raised = None, False

    def interrupt(signum, frame):
        if _Signals.received is None:
            _Signals.received = signum
            if not _Signals.in_ray:
                _Signals.raised = True
                raise Interrupted(signum)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def in_ray():
    """Around a blocking call into Ray (which cannot take an exception from a signal handler): a signal
    received meanwhile raises Interrupted as the call returns. Keep the call short (a wait with a timeout)."""
    _Signals.in_ray += 1
    try:
        yield
    finally:
        _Signals.in_ray -= 1
    if _Signals.received is not None and not _Signals.raised and not _Signals.in_ray:
        _Signals.raised = True
        raise Interrupted(_Signals.received)


def is_storage_error(error: BaseException) -> bool:
    return isinstance(error, StorageError) or (isinstance(error, OSError) and error.errno in STORAGE_ERRNOS)


def exit_code(error: BaseException) -> int:
    """The exit code of the failure class `error` belongs to (the module docstring lists them)."""
    if isinstance(error, PipelineError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if is_storage_error(error):
        return NOT_WRITABLE
    if isinstance(error, (CheckpointError, ModelsError)):
        return MODEL
    if isinstance(error, (VideoError, CastError, ValueError, FileNotFoundError)):
        return INPUT
    return UNEXPECTED


@dataclass(frozen=True)
class Cause:
    """Why one attempt at a unit of work failed.

    kind: "lost" (the worker's process or node died), "memory" (MemoryError, or killed by Ray's memory
    monitor), "input" or "storage" (no other attempt can succeed: bad input, a folder not writable) or
    "raised" (any other error); stage: the stage that failed when it is not the one called (a compose
    task's restore requests); text: one line; detail: the whole of it, with the worker's traceback.
    """

    kind: str
    text: str
    detail: str
    stage: str | None = None


class StageFailed(Exception):
    """Raised by a worker when a stage it called failed (a compose task's restore requests): carries that Cause."""

    def __init__(self, cause: Cause):
        super().__init__(cause)
        self.cause = cause

    def __str__(self) -> str:
        return f"stage {self.cause.stage}: {self.cause.text}"


def cause_of(error: BaseException, stage: str | None = None) -> Cause:
    """What a failed Ray call tells about its attempt (stage: the stage it called, when it is not the caller's)."""
    detail = "".join(traceback.format_exception(error)) if not isinstance(error, ray.exceptions.RayError) else str(error)
    if isinstance(error, ray.exceptions.RayTaskError):
        raised = error.cause
        if isinstance(raised, StageFailed):
            return raised.cause
        return _raised_cause(raised, detail, stage)
    if isinstance(error, ray.exceptions.GetTimeoutError):
        return Cause("lost", "worker lost and not back in time", detail, stage)
    if isinstance(error, ray.exceptions.OutOfMemoryError):
        return Cause("memory", "killed by Ray's memory monitor (out of memory)", detail, stage)
    if isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                          ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)):
        node = "node" in str(error).lower() and ("died" in str(error).lower() or "dead" in str(error).lower())
        return Cause("lost", "worker lost (its node was lost)" if node else "worker lost", detail, stage)
    return _raised_cause(error, detail, stage)


def _raised_cause(raised: BaseException, detail: str, stage: str | None) -> Cause:
    text = " ".join(str(raised).split())
    if isinstance(raised, MemoryError):
        return Cause("memory", "out of memory (MemoryError)", detail, stage)
    if is_storage_error(raised):
        return Cause("storage", text or type(raised).__name__, detail, stage)
    if isinstance(raised, (VideoError, CastError, CheckpointError, ModelsError)):
        return Cause("input", text, detail, stage)
    return Cause("raised", f"{type(raised).__name__}: {text}" if text else type(raised).__name__, detail, stage)


def failure_line(cause: Cause, times: int) -> str:
    """The cause of a unit's last attempt, as the run's one line says it after `times` attempts."""
    if cause.kind == "lost":
        hint = "" if "node" in cause.text else " (killed: out of memory?)"
        return f"{cause.text} {times} times{hint}" if times > 1 else f"{cause.text}{hint}"
    if cause.kind == "memory":
        return f"{cause.text} {times} times" if times > 1 else cause.text
    return f"failed {times} times, last with {cause.text}" if times > 1 else cause.text


class FailureLog:
    """The run's log of failures in the work folder: each failed attempt and the run's end, with tracebacks."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, title: str, detail: str) -> None:
        """Appends one entry; a log that cannot be written is not a further failure (the terminal line says it all)."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            self.path.parent.mkdir(exist_ok=True)  # never the folders above it (the output's, when it is missing)
            with open(self.path, "a") as log:
                log.write(f"--- {stamp} {title}\n{detail.rstrip()}\n")
        except OSError:
            pass
