"""Nightly archive runner: restores every film of archive.yaml that is not already done.

    python -m jobs.nightly archive.yaml [--address http://HEAD:8265] [-j N] [--summary PATH]
        [--force] [--env KEY=VALUE ...] [--poll-seconds S]

Each film runs as `python -m film_restore.run ...`:
- with --address (or RAY_API_SERVER_ADDRESS, or an http(s):// RAY_ADDRESS): submitted as a Ray
  job with Ray's JobSubmissionClient, watched until it ends; its log is kept;
- otherwise as a process on this machine joined to one Ray that the runner starts or joins
  (RAY_ADDRESS as host:port, e.g. when the runner is itself a `ray job submit` entrypoint),
  so concurrent films share one resource pool and a crash of one film cannot stop the others.

A film is skipped when its output is complete for the same settings and model: after a
success the runner writes OUTPUT_STEM.nightly.json beside the output with the key the
pipeline stored the restored chunks under (film_restore.keys: the input's sha256, the cast's
reference photos and threshold, the checkpoint's sha256, the face models, the settings and
stage versions); the film is skipped when that key is the same now, the output has the
recorded size and the pipeline's report (OUTPUT_STEM.report.json) names the same key. Otherwise it runs with --resume (unless `resume: false`), which
reuses the finished chunks of an interrupted run whose settings match.

At most N films run at once (-j). One film's failure never stops the others. A film that failed
is tried again on the next night, up to `attempts` nights in a row (archive.yaml, default
settings.NIGHTLY_ATTEMPTS): ARCHIVE_STEM.state.json beside the archive keeps, per film, its key,
the nights it failed, its last one-line cause and exit status; a success, a changed film, cast
or setting (a new key) or --force starts the count again. The summary is written as JSON and as
a short text (done, skipped, failed with the reason and the night of the count); the exit status
is 0 when no film failed, 1 when one or more failed (or were not tried again), 2 when the archive
file is invalid.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from jobs.archive import Archive, ArchiveError, Film, load

SIDECAR_VERSION = 1


@dataclass
class Outcome:
    """What became of one film."""

    input: str
    output: str
    status: str  # done | skipped | failed
    reason: str = ""
    resumed: bool = False
    seconds: float = 0.0
    key: str | None = None
    log: str | None = None
    job_id: str | None = None
    exit_status: int | None = None  # the film's run's (film_restore.pipeline.failures), when known
    failed_nights: int = 0  # nights in a row it failed, this one included


# --- films that keep failing: tried again on the next nights, up to their attempts -----------------------

STATE_VERSION = 1


def state_path(archive: Archive) -> Path:
    return archive.path.with_name(f"{archive.path.stem}.state.json")


def load_state(path: Path) -> dict:
    """Per film output: {key, failed_nights, last_cause, last_exit_status, last_failed}; {} when none yet."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state.get("films", {}) if state.get("version") == STATE_VERSION else {}


def failed_before(state: dict, film: Film, key: str) -> int:
    """Nights in a row this film, as it is now (same key), has failed."""
    entry = state.get(str(film.output))
    return entry["failed_nights"] if entry and entry.get("key") == key else 0


def updated_state(state: dict, outcomes: list[Outcome]) -> dict:
    state = dict(state)
    for outcome in outcomes:
        if outcome.status == "failed" and outcome.failed_nights:
            state[outcome.output] = {"key": outcome.key, "failed_nights": outcome.failed_nights,
                                     "last_cause": outcome.reason, "last_exit_status": outcome.exit_status,
                                     "last_failed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        elif outcome.status in ("done", "skipped"):
            state.pop(outcome.output, None)
    return state


# --- is the output complete for the same settings and model? ----------------------------------

def sidecar_path(film: Film) -> Path:
    return film.output.with_name(f"{film.output.stem}.nightly.json")


def completion_keys(film: Film):
    """The keys the pipeline stores this film's results under (film_restore.keys); raises with the reason."""
    from film_restore.cast import Cast
    from film_restore.keys import job_keys
    from film_restore.models import find_pack, pack_id

    if not film.input.is_file():
        raise FileNotFoundError(f"no input file at {film.input}")
    if not film.checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint file at {film.checkpoint}")
    return job_keys(film.job(), pack_id(find_pack(film.models)), Cast.load(film.cast))


def why_not_complete(film: Film, key: str, parts: dict) -> str | None:
    """None when the output is complete for this key, else why it is not (for the log)."""
    sidecar = sidecar_path(film)
    if not film.output.is_file():
        return "no output yet"
    if not sidecar.is_file():
        return f"no {sidecar.name} (not restored by this runner)"
    try:
        record = json.loads(sidecar.read_text())
        report = json.loads(film.report.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable record or report ({' '.join(str(error).split())})"
    if record.get("key") != key:
        changed = sorted(k for k in parts if record.get("parts", {}).get(k) != parts[k])
        return f"settings or model changed ({', '.join(changed) or 'key'})"
    size = film.output.stat().st_size
    if record.get("output", {}).get("size_bytes") != size:
        return "the output changed since it was restored"
    if report.get("dry_run") or report.get("output_key") != key or (report.get("output") or {}).get("size_bytes") != size:
        return f"{film.report.name} does not describe this output"
    return None


def record_complete(film: Film, key: str, parts: dict, how: dict) -> None:
    from dmdnet.files import write_json

    report = json.loads(film.report.read_text())
    write_json(sidecar_path(film), {
        "version": SIDECAR_VERSION,
        "key": key,
        "parts": parts,
        "model_fingerprint": report.get("model_fingerprint"),
        "input": str(film.input),
        "output": {"path": str(film.output), "size_bytes": film.output.stat().st_size},
        "report": str(film.report),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **how,
    })


def has_partial_work(film: Film, parts: dict) -> bool:
    from film_restore.workdir import WorkFolder

    return WorkFolder(film.workroot, film.input, parts["input_sha256"]).has_results()


# --- running one film ------------------------------------------------------------------------------

def film_arguments(film: Film, resume: bool) -> list[str]:
    arguments = [str(film.input), "--cast", str(film.cast), "-o", str(film.output),
                 "--checkpoint", str(film.checkpoint), "--workdir", str(film.workroot),
                 "--codec", film.codec, "--chunk-frames", str(film.chunk_frames),
                 "--engine", film.engine, "--precision", film.precision,
                 # The archive passes no edits files, so it keeps no restored chunks for them after the join.
                 "--drop-chunks"]
    if film.models is not None:
        arguments += ["--models", str(film.models)]
    if resume:
        arguments.append("--resume")
    return arguments


def failure_reason(log: str, fallback: str) -> str:
    """The film's own one-line error (`error: ...`), else the log's last line, else the fallback."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: "):]
    last = [line for line in lines if not line.startswith(("(", "---"))]
    return f"{fallback}: {last[-1]}" if last else fallback


class LocalRunner:
    """Films as processes on this machine, all joined to one Ray (started here or RAY_ADDRESS's)."""

    mode = "local"

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.address = None

    def start(self) -> None:
        """Starts (or joins) the Ray the films share; in the main thread, before any film runs."""
        import ray

        from film_restore.pipeline import init_ray

        init_ray()  # RAY_ADDRESS's cluster, else a local Ray (FILM_RESTORE_DASHBOARD=0: without dashboard)
        self.address = ray.get_runtime_context().gcs_address

    def run(self, film: Film, arguments: list[str], log_path: Path) -> tuple[bool, str, str | None, int | None]:
        # os.environ now carries what the films need to join (RAY_AUTH_MODE where Ray enabled tokens)
        environment = {**os.environ, **self.env, "RAY_ADDRESS": self.address}
        command = [sys.executable, "-m", "film_restore.run", *arguments]
        with open(log_path, "w") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment).returncode
        if code == 0:
            return True, "", None, code
        return False, failure_reason(log_path.read_text(), f"exit status {code}"), None, code


class JobRunner:
    """Films as Ray jobs on a running cluster, through its dashboard's job API."""

    mode = "job"
    TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

    def __init__(self, address: str, env: dict[str, str], poll_seconds: float):
        self.address = address
        self.client = None
        self.env = env
        self.poll_seconds = poll_seconds

    def start(self) -> None:
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(self.address)

    def run(self, film: Film, arguments: list[str], log_path: Path) -> tuple[bool, str, str | None, int | None]:
        slug = re.sub(r"[^a-z0-9]+", "-", film.input.stem.lower()).strip("-") or "film"
        job_id = f"film-restore-{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{film.index}"
        entrypoint = shlex.join(["python", "-m", "film_restore.run", *arguments])
        self.client.submit_job(
            entrypoint=entrypoint, submission_id=job_id,
            runtime_env={"env_vars": self.env} if self.env else None,
            metadata={"film": str(film.input), "submitted_by": "jobs.nightly"},
        )
        while True:
            status = self.client.get_job_status(job_id)
            status = getattr(status, "value", str(status))
            if status in self.TERMINAL:
                break
            time.sleep(self.poll_seconds)
        logs = self.client.get_job_logs(job_id)
        log_path.write_text(f"$ ray job {job_id}: {entrypoint}\n{logs}")
        info = self.client.get_job_info(job_id)
        code = getattr(info, "driver_exit_code", None)
        if status == "SUCCEEDED":
            return True, "", job_id, code
        message = (info.message or "").strip().splitlines()
        return False, failure_reason(logs, f"job {status.lower()}" + (f" ({message[0]})" if message else "")), job_id, code


@dataclass
class Plan:
    """A film to run: its completion key, why it is not complete, whether it resumes."""

    film: Film
    key: str
    parts: dict
    why: str
    resumed: bool
    failed_before: int = 0


def plan(film: Film, force: bool, state: dict | None = None) -> Plan | Outcome:
    """The film's Plan, or its Outcome when it is complete (skipped), cannot run or failed on its last
    `attempts` nights (failed; state: the archive's, load_state)."""
    from film_restore.models import resolve_checkpoint, resolve_models_dir

    outcome = Outcome(str(film.input), str(film.output), "failed")
    try:
        # the models the runner hashes are the ones the run is given, wherever it runs
        film = dataclasses.replace(film, models=resolve_models_dir(film.models),
                                   checkpoint=film.checkpoint or resolve_checkpoint().path)
        keys = completion_keys(film)
        parts, key = keys.parts, keys.compose
        outcome.key = key
        why = why_not_complete(film, key, parts)
    except Exception as error:  # a missing or unreadable input, cast, checkpoint or models folder
        outcome.reason = " ".join(str(error).split()) or type(error).__name__
        return outcome
    if why is None and not force:
        outcome.status, outcome.reason = "skipped", "output complete for the same settings and model"
        return outcome
    failed = 0 if force else failed_before(state or {}, film, key)
    if failed >= film.attempts:
        last = (state or {})[str(film.output)]["last_cause"]
        outcome.failed_nights = failed
        outcome.reason = (f"not tried: it failed {failed} night{'s' if failed > 1 else ''} in a row (last: {last}); "
                          "fix the cause, then run with --force (a changed film, cast or setting is tried again by itself)")
        return outcome
    return Plan(film, key, parts, why or "forced", film.resume and has_partial_work(film, parts), failed)


def execute(planned: Plan, runner, logs: Path, say) -> Outcome:
    """Runs one film; never raises (a failure is the outcome's reason)."""
    film = planned.film
    started = time.perf_counter()
    outcome = Outcome(str(film.input), str(film.output), "failed", key=planned.key, resumed=planned.resumed)
    try:
        sidecar_path(film).unlink(missing_ok=True)
        film.output.parent.mkdir(parents=True, exist_ok=True)  # the pipeline writes into an existing folder
        log_path = logs / f"{film.index:03d}-{film.input.stem}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        outcome.log = str(log_path)
        say(f"{film.name}: {'resuming' if planned.resumed else 'running'} ({planned.why}); log {log_path}")
        ok, reason, outcome.job_id, outcome.exit_status = runner.run(film, film_arguments(film, film.resume), log_path)
        if ok and not (film.output.is_file() and film.report.is_file()):
            ok, reason = False, (f"the run succeeded but {film.output} or its report is not visible here: input, "
                                 "work folder and output must be on storage that every node and this machine mount")
        if ok:
            record_complete(film, planned.key, planned.parts, {"mode": runner.mode, "job_id": outcome.job_id})
            outcome.status = "done"
        else:
            outcome.reason = reason
    except Exception as error:  # one film's problem, whatever it is, is reported and the others go on
        outcome.reason = " ".join(str(error).split()) or type(error).__name__
    if outcome.status == "failed":
        outcome.failed_nights = planned.failed_before + 1
    outcome.seconds = round(time.perf_counter() - started, 1)
    return outcome


# --- the archive -------------------------------------------------------------------------------------

def text_summary(archive: Archive, outcomes: list[Outcome], seconds: float) -> str:
    attempts = {str(film.input): film.attempts for film in archive.films}
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    lines = [f"{archive.path}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
             f"({len(outcomes)} films, {seconds:.0f} s)"]
    for outcome in outcomes:
        if outcome.status == "done":
            detail = f" -> {outcome.output} ({outcome.seconds:.0f} s{', resumed' if outcome.resumed else ''})"
        elif outcome.status == "skipped":
            detail = f" -> {outcome.output}: {outcome.reason}"
        else:
            night = f"night {outcome.failed_nights} of {attempts[outcome.input]}" if outcome.log else ""
            notes = "; ".join(note for note in (night, outcome.log and f"log {outcome.log}") if note)
            detail = f": {outcome.reason}" + (f" ({notes})" if notes else "")
        lines.append(f"{outcome.status:8s} {outcome.input}{detail}")
    return "\n".join(lines) + "\n"


def submission_address(given: str | None) -> str | None:
    """The job API address for JobSubmissionClient, or None to run films on a local Ray."""
    if given:
        return given
    for variable in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(variable, "")
        if value.startswith(("http://", "https://")):
            return value
    return None


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(prog="python -m jobs.nightly", description=__doc__.split("\n\n")[0])
    arguments.add_argument("archive", type=Path, help="archive.yaml listing the films")
    arguments.add_argument("--address", help="Ray dashboard/job API of a running cluster, e.g. http://HEAD:8265 "
                                             "(default $RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS; else local Ray)")
    arguments.add_argument("-j", "--max-parallel", type=int, default=1, help="films running at once (default 1)")
    arguments.add_argument("--summary", type=Path, help="summary JSON (default ARCHIVE_STEM.summary.json beside it; "
                                                        "the text summary is beside it, .txt)")
    arguments.add_argument("--force", action="store_true", help="restore complete films again")
    arguments.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                           help="environment for every film's run (e.g. FILM_RESTORE_GPUS=4)")
    arguments.add_argument("--poll-seconds", type=float, default=5.0, help="how often a job's status is read")
    return arguments


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.max_parallel < 1:
        parser().error("--max-parallel must be 1 or more")
    env = {}
    for item in args.env:
        if "=" not in item:
            parser().error(f"--env {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        env[key] = value
    try:
        archive = load(args.archive)
    except ArchiveError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    summary = args.summary or archive.path.with_name(f"{archive.path.stem}.summary.json")
    logs = summary.with_name(f"{summary.stem}.logs")
    address = submission_address(args.address)
    runner = JobRunner(address, env, args.poll_seconds) if address else LocalRunner(env)
    started = time.perf_counter()
    printing = threading.Lock()

    def say(message: str) -> None:
        with printing:
            print(f"nightly: {message}", flush=True)

    say(f"{len(archive.films)} films from {archive.path}, {args.max_parallel} at once, "
        f"{'jobs on ' + address if address else 'local Ray'}")

    state_file = state_path(archive)
    state = load_state(state_file)
    outcomes: list[Outcome | None] = []
    for film in archive.films:
        planned = plan(film, args.force, state)
        if isinstance(planned, Outcome):
            say(f"{film.name}: {planned.status}: {planned.reason}")
        outcomes.append(planned)
    to_run = [(number, p) for number, p in enumerate(outcomes) if isinstance(p, Plan)]
    if to_run:
        try:
            runner.start()
        except Exception as error:  # no Ray to run on: every film to run fails with that reason
            reason = f"cannot start or reach Ray ({runner.address or 'local'}): {' '.join(str(error).split())}"
            for number, planned in to_run:
                outcomes[number] = Outcome(str(planned.film.input), str(planned.film.output), "failed", reason,
                                           key=planned.key)
            to_run = []

        def one(planned: Plan) -> Outcome:
            outcome = execute(planned, runner, logs, say)
            say(f"{planned.film.name}: {outcome.status}" + (f": {outcome.reason}" if outcome.reason else ""))
            return outcome

        with ThreadPoolExecutor(max_workers=args.max_parallel) as pool:
            for (number, _), outcome in zip(to_run, pool.map(one, [p for _, p in to_run])):
                outcomes[number] = outcome
    seconds = time.perf_counter() - started
    from dmdnet.files import write_json

    write_json(summary, {
        "archive": str(archive.path),
        "mode": runner.mode,
        "address": address,
        "seconds": round(seconds, 1),
        "counts": {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")},
        "films": [asdict(outcome) for outcome in outcomes],
    })
    write_json(state_file, {"version": STATE_VERSION, "films": updated_state(state, outcomes)})
    text = text_summary(archive, outcomes, seconds)
    summary.with_suffix(".txt").write_text(text)
    print(text, end="", flush=True)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
