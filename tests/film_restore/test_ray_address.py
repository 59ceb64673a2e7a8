"""Which Ray a run uses: its own local Ray unless a cluster is asked for, and a dead cluster is one line, soon."""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.assets import REPO, asset

DEAD = "127.0.0.1:9"  # the discard port: nothing listens there


def _environment(**extra) -> dict:
    environment = {**os.environ, "FILM_RESTORE_DASHBOARD": "0", **extra}
    environment.pop("RAY_ADDRESS", None)
    return environment


def test_a_stale_cluster_address_file_is_not_joined():
    # Ray remembers the last `ray start` in TEMP/ray/ray_current_cluster; that cluster is dead here.
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text(DEAD)
    code = ("import ray; from film_restore.pipeline import init_ray; init_ray(); "
            "print('started', ray.get_runtime_context().gcs_address != '" + DEAD + "'); ray.shutdown()")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_environment(RAY_TMPDIR=str(temp)),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "started True" in result.stdout, result.stderr[-2000:]


def test_a_cluster_that_does_not_answer_fails_in_one_line(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "film_restore.run", str(asset("media/clips/retalk_2.mp4")), "--cast",
         str(tmp_path / "cast.yaml"), "-o", str(tmp_path / "out.mkv"), "--dry-run", "--address", DEAD],
        cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=120,
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no Ray cluster answers at {DEAD}"), result.stderr[-2000:]
