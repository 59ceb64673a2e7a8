"""A run that survives its workers: killed actors and tasks, a lost node, a worker out of memory, a
damaged work folder, Ctrl-C, an output folder that turns read-only.

Every run restores the same small film (8 shots of 5 frames at 256 px, one chunk per shot, narrow
seeded network) through `python -m film_restore.run` joined to the session's own Ray head
(conftest.ray_head). Workers are killed only by the process ids that the head's state API gives
for this run's own actors and tasks (named with the driver's pid), and the added node is a raylet
this module starts. An undisturbed run gives each frame's hash; runs that lose workers must give
the same hashes.
"""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from film_restore.settings import CHUNKS_IN_FLIGHT_PER_WORKER
from tests.assets import REPO
from tests.small_case import make_case

SHOTS, FRAMES_PER_SHOT = 8, 5  # one chunk per shot at --chunk-frames FRAMES_PER_SHOT
WORKERS_BACK_S = 240


def frame_hashes(path: Path) -> list[str]:
    with av.open(str(path)) as container:
        return [hashlib.sha256(frame.to_ndarray(format="rgb24").tobytes()).hexdigest() for frame in container.decode(video=0)]


class Run:
    """One `python -m film_restore.run` of the case on the session's head, in a process group of its own."""

    def __init__(self, case: dict, head, name: str, *extra, driver: list | None = None, output: Path | None = None,
                 analysed: bool = False):
        self.head, self.folder = head, case["folder"]
        self.output = output or self.folder / f"{name}.mkv"
        self.work = self.folder / f"work-{name}"
        if analysed:  # the undisturbed run's scan and analysis, not its restored chunks: this run starts at the restore stage
            shutil.copytree(self.folder / "work-undisturbed", self.work, ignore=shutil.ignore_patterns("chunks"))
            extra = ("--resume", *extra)
        arguments = [str(case["film"]), "--cast", str(case["cast"]), "--checkpoint", str(case["checkpoint"]),
                     "--models", str(case["models"]), "-o", str(self.output), "--workdir", str(self.work),
                     "--codec", "ffv1", "--chunk-frames", str(FRAMES_PER_SHOT), "--address", head.gcs, *map(str, extra)]
        command = driver or [sys.executable, "-m", "film_restore.run"]
        environment = {**head.env, "FILM_RESTORE_DASHBOARD": "0", "FILM_RESTORE_GPUS": "0"}
        self.process = subprocess.Popen([*command, *arguments], cwd=REPO, env=environment, start_new_session=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def done(self, stage: str) -> int:
        """Chunks the stage has stored in the work folder so far."""
        return len(list(self.work.glob(f"*/{'analysis' if stage == 'analyse' else 'chunks'}/*.json")))

    def wait_for(self, condition, what: str, seconds: float = 240) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, f"the run ended before {what}: {self.process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {seconds} s"
            time.sleep(0.05)

    def actors(self, stage: str) -> list[dict]:
        """This run's live actors of a stage (film_restore.STAGE-N-DRIVERPID)."""
        return [actor for actor in self.head.state("actors")
                if actor["name"].startswith(f"film_restore.{stage}-") and actor["name"].endswith(f"-{self.process.pid}")]

    def finish(self, seconds: float = 600) -> tuple[int, str]:
        _, stderr = self.process.communicate(timeout=seconds)
        return self.process.returncode, stderr


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def case(ray_head, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    ray_head.folders.append(folder)
    return make_case(folder, shots=SHOTS, frames_per_shot=FRAMES_PER_SHOT)


@pytest.fixture(scope="module")
def undisturbed(case, ray_head) -> list[str]:
    run = Run(case, ray_head, "undisturbed")
    code, stderr = run.finish()
    assert code == 0, stderr[-3000:]
    assert f"{SHOTS * FRAMES_PER_SHOT} frames, {SHOTS} shots, {SHOTS} chunks" in stderr
    return frame_hashes(run.output)


def test_killed_workers_and_a_lost_node_are_survived_bit_identical(case, ray_head, undisturbed):
    """In one run: kill -9 of an analysis actor; then, restoring, the loss of a raylet (joined for this
    test) while it holds a compose task, and kill -9 of the restore actor and of a compose task's worker."""
    node = ray_head.add_node(cpus=1)
    run = Run(case, ray_head, "killed")
    killed = {}

    def alive(stage):
        return [actor for actor in run.actors(stage) if actor["state"] == "ALIVE" and actor["pid"]]

    in_flight = []  # this run's compose tasks sent and not ended, at each look

    def composing(on_node: bool):
        tasks = [task for task in ray_head.state("tasks") if task["name"].startswith("film_restore.compose-")
                 and task["job_id"] == killed["analyse"]["job_id"]]
        in_flight.append(sum(task["state"] not in ("FINISHED", "FAILED") for task in tasks))
        return [task for task in tasks if task["state"] == "RUNNING" and task.get("worker_pid")
                and (task.get("node_id") == node.node_id) == on_node]

    def left(stage: str) -> None:
        assert run.done(stage) < SHOTS, f"the {stage} stage ended before its worker could be killed"

    run.wait_for(lambda: run.done("analyse") >= 1 and alive("analyse"), "a chunk analysed")
    left("analyse")
    killed["analyse"] = alive("analyse")[0]
    kill(killed["analyse"]["pid"])

    run.wait_for(lambda: composing(on_node=True), "a compose task on the added node")
    left("compose")
    node.kill()
    run.wait_for(lambda: alive("restore"), "the restore actor", WORKERS_BACK_S)
    left("compose")
    killed["restore"] = alive("restore")[0]
    kill(killed["restore"]["pid"])
    run.wait_for(lambda: alive("restore") and composing(on_node=False), "a compose task, the restore actor back",
                 WORKERS_BACK_S)
    left("compose")
    killed["compose"] = composing(on_node=False)[0]
    kill(killed["compose"]["worker_pid"])

    code, stderr = run.finish()
    assert code == 0, stderr[-3000:]
    assert frame_hashes(run.output) == undisturbed
    restarts = {actor["name"]: int(actor["num_restarts"]) for actor in run.actors("analyse") + run.actors("restore")}
    assert restarts[killed["analyse"]["name"]] >= 1 and restarts[killed["restore"]["name"]] >= 1, restarts
    assert "stage compose: worker lost" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    # Back-pressure: never more chunks sent than CHUNKS_IN_FLIGHT_PER_WORKER per compose slot (3 CPUs).
    assert 0 < max(in_flight) <= 3 * CHUNKS_IN_FLIGHT_PER_WORKER < SHOTS, in_flight
    assert {n["node_id"]: n["state"] for n in ray_head.state("nodes")}[node.node_id] == "DEAD"


def test_a_worker_out_of_memory_every_time_ends_the_run_in_one_line(case, ray_head, undisturbed):
    # The restore actors of this run raise MemoryError (a setup hook its workers run, from tests/fault_hooks.py).
    driver = [sys.executable, "-c", "import sys; from tests.fault_hooks import run_with_hook; "
                                    "sys.exit(run_with_hook('tests.fault_hooks.restore_out_of_memory', sys.argv[1:]))"]
    run = Run(case, ray_head, "memory", driver=driver, analysed=True)
    code, stderr = run.finish()
    lines = stderr.strip().splitlines()
    assert code == 5, stderr[-3000:]
    assert lines[-1].startswith("error: film.mkv: chunk ") and lines[-1].endswith(
        f", stage restore: out of memory (MemoryError) 3 times; {SHOTS} of {SHOTS} chunks analysed, 0 restored: "
        "rerun with --resume"), lines[-1]
    assert "Traceback" not in stderr and "trying again in 1 s (attempt 2 of 3)" in stderr
    log = (run.work / "film.mkv.log").read_text()
    assert "MemoryError: restore_out_of_memory" in log and "exit status 5" in log
    assert not run.output.exists()


@pytest.fixture
def read_only(tmp_path):
    """Makes a folder read-only for this process (root too: the immutable attribute); undone at teardown."""
    made = []

    def make(folder: Path) -> None:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK) and os.geteuid() == 0:
            if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
                pytest.skip("running as root without chattr: a folder cannot be made read-only here")
        made.append(folder)

    def undo(folder: Path) -> None:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)

    make.undo = undo
    yield make
    for folder in made:
        undo(folder)


def test_ctrl_c_stops_cleanly_resume_redoes_a_truncated_chunk_and_an_output_folder_turned_read_only_is_one_line(
        case, ray_head, undisturbed, tmp_path, read_only):
    out = tmp_path / "out"
    out.mkdir()
    run = Run(case, ray_head, "interrupted", output=out / "film.mkv", analysed=True)
    run.wait_for(lambda: run.done("compose") >= 1, "a chunk restored")
    os.killpg(run.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    stopping = time.monotonic()
    code, stderr = run.finish(seconds=60)
    assert time.monotonic() - stopping < 30
    assert code == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: film.mkv: interrupted (SIGINT) during the restore; {SHOTS} of {SHOTS} chunks "
                           "analysed, ") and last.endswith(" restored: rerun with --resume"), last
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []

    finished = {path: path.stat().st_mtime_ns for path in run.work.glob("*/chunks/*.json")}
    assert 1 <= len(finished) <= SHOTS - 3, "too few chunks left to turn the output read-only while they are restored"
    truncated = sorted(finished)[0].with_suffix(".video")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    # Resumed: the truncated chunk is found and redone; then the output folder turns read-only.
    resumed = Run(case, ray_head, "interrupted", "--resume", output=out / "film.mkv")
    resumed.wait_for(lambda: resumed.done("compose") > len(finished), "a chunk restored")
    read_only(out)
    code, stderr = resumed.finish()
    last = stderr.strip().splitlines()[-1]
    assert code == 6, stderr[-3000:]
    assert f"note: chunk {int(truncated.name[:5])} is damaged: its video {truncated.name} is " in stderr, stderr[-3000:]
    assert last.startswith("error: film.mkv: writing the output film.mkv failed while ") and \
        last.endswith("the restored chunks are kept: rerun with --resume once it is writable"), last
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []

    read_only.undo(out)
    again = Run(case, ray_head, "interrupted", "--resume", output=out / "film.mkv")
    code, stderr = again.finish()
    assert code == 0, stderr[-3000:]
    untouched = {path: mtime for path, mtime in finished.items() if path.with_suffix(".video") != truncated}
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in untouched.items())
    assert frame_hashes(again.output) == undisturbed
