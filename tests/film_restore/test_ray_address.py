"""Which Ray a run (and a test) uses: its own local Ray unless a cluster is asked for, even with one running on the
machine; a dead cluster is one line, soon."""
import os
import re
import subprocess
import sys
import time

from tests.assets import REPO, asset

DEAD = "127.0.0.1:9"  # the discard port: nothing listens there


def _environment(**extra) -> dict:
    environment = {**os.environ, "FILM_RESTORE_DASHBOARD": "0", **extra}
    environment.pop("RAY_ADDRESS", None)
    return environment


def test_a_cluster_that_does_not_answer_fails_in_one_line(tmp_path):
    # A good film and cast: the checks of input, output and cast come first, and pass.
    (tmp_path / "cast.yaml").write_text(f"actors:\n  - name: Speaker\n    references: [{REPO / 'examples/refs/speaker'}/*.jpg]\n")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "film_restore.run", str(asset("media/clips/retalk_2.mp4")), "--cast",
         str(tmp_path / "cast.yaml"), "-o", str(tmp_path / "out.mkv"), "--dry-run", "--address", DEAD],
        cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=120,
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 7
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith(f"error: no Ray cluster answers at {DEAD}"), result.stderr[-2000:]
    assert lines[0] == f"retalk_2.mp4: details in {tmp_path / '.out.mkv.work' / 'retalk_2.mp4.log'}"


def test_runs_and_tests_start_their_own_ray_with_a_cluster_running(ray_head):
    # RAY_TMPDIR makes the session head's address file the one a plain ray.init() follows, as a
    # `ray start` on the machine (or an earlier one, long gone) would: a plain ray.init(num_cpus=2)
    # joins it and fails; the tests' Ray (tests/own_ray.py) and the pipeline's (init_ray) start their own.
    code = """
import ray
from film_restore.pipeline import init_ray
from tests.own_ray import own_ray
try:
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    print("plain joined", ray.get_runtime_context().gcs_address)
except Exception as error:
    print("plain failed:", " ".join(str(error).split()))
with own_ray(num_cpus=2):
    print("own", ray.get_runtime_context().gcs_address, ray.cluster_resources()["CPU"])
init_ray()
print("pipeline", ray.get_runtime_context().gcs_address)
ray.shutdown()
"""
    environment = {**_environment(RAY_TMPDIR=str(ray_head.temp)), **{k: v for k, v in ray_head.env.items() if k.startswith("RAY_AUTH")}}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert "When connecting to an existing cluster, num_cpus and num_gpus must not be provided" in lines["plain"], lines
    own_address, cpus = lines["own"].split()
    assert own_address != ray_head.gcs and float(cpus) == 2
    assert lines["pipeline"] not in (ray_head.gcs, own_address)


def test_every_ray_init_in_the_tests_names_its_address():
    calls = [(path, line) for path in (REPO / "tests").rglob("*.py") for line in path.read_text().splitlines()
             if re.match(r"\s*ray\.init\(", line) and "address=" not in line and "ray.init(num_cpus=2, include" not in line]
    assert calls == [], "use tests/own_ray.py (its own local Ray) or the session's conftest.ray_head"
