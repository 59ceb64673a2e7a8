"""The cluster side: ray_cluster.yaml against Ray's schema, and a film restored by `ray job submit`.

The job tests use the session's own Ray head on loopback (conftest.ray_head, tests/ray_head.py:
its own ports and temp folder, so a `ray.init()` elsewhere on the machine never joins it).
"""
import copy
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

from tests.assets import REPO
from tests.small_case import decoded_frames, make_case

CONFIG = REPO / "ray_cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def test_cluster_config_validates_against_rays_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CONFIG.read_text())
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks before any cloud call
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject what it does not know
        jsonschema.validate({**config, "runtime_env": {}}, schema)

    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["resources"].get("GPU") == 1]
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types)
    setup = "\n".join(config["setup_commands"])
    assert "./install.sh" in setup and "/mnt/archive" in setup
    assert setup.index("python -m film_restore.models fetch dmdnet buffalo_l") > setup.index("./install.sh")
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "FILM_RESTORE_GPUS" in "\n".join(commands)


def wait_for_job(head, job_id: str, seconds: float = 240) -> str:
    deadline = time.monotonic() + seconds
    while True:
        status = head.client.get_job_status(job_id)
        if status.is_terminal():
            return status.value
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {seconds} s"
        time.sleep(1)


@pytest.fixture(scope="module")
def head(ray_head):
    return ray_head


@pytest.fixture(scope="module")
def case(head, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    head.folders.append(folder)
    return make_case(folder)


def test_job_submit_restores_a_film(head, case):
    tmp_path = case["folder"]
    output = tmp_path / "restored.mkv"
    job_id = "film-restore-test"
    head.ray("job", "submit", "--address", head.address, "--no-wait", "--submission-id", job_id,
             "--runtime-env-json", json.dumps({"env_vars": {"FILM_RESTORE_GPUS": "0"}}), "--",
             sys.executable, "-m", "film_restore.run", str(case["film"]), "--cast", str(case["cast"]),
             "--checkpoint", str(case["checkpoint"]), "--models", str(case["models"]), "-o", str(output),
             "--codec", "ffv1")
    status = wait_for_job(head, job_id)
    logs = head.client.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-3000:]

    assert decoded_frames(output) == case["frames"]
    report = json.loads((tmp_path / "restored.report.json").read_text())
    assert report["input"]["sha256"] == hashlib.sha256(case["film"].read_bytes()).hexdigest()
    assert report["output"]["path"] == str(output) and report["output"]["size_bytes"] == output.stat().st_size
    assert report["model_fingerprint"] and report["totals"]["faces_restored"] > 0

    # The job's log tells progress in plain lines, one per step.
    lines = logs.splitlines()
    for step in ("film.mkv: 20 frames", "film.mkv: analysed 20/20 frames", "film.mkv: restored 20/20 frames",
                 f"film.mkv: done -> {output}"):
        assert any(line.startswith(step) for line in lines), (step, logs[-3000:])
    assert "\r" not in logs and "\x1b[K" not in logs

    # The dashboard shows the actors and tasks by stage name.
    actors = head.state("actors")
    names = {actor.get("name", "").split("-")[0] for actor in actors}
    assert {"film_restore.analyse", "film_restore.restore"} <= names, names


def test_nightly_submits_films_as_jobs_and_skips_them_after(head, case):
    folder = case["folder"]
    archive = folder / "archive.yaml"
    archive.write_text(f"defaults:\n  checkpoint: {case['checkpoint']}\n  models: {case['models']}\n  codec: ffv1\n"
                       f"films:\n  - input: film.mkv\n    cast: cast.yaml\n    output: nightly/film.mkv\n"
                       f"  - input: missing.mkv\n    cast: cast.yaml\n")
    command = [sys.executable, "-m", "jobs.nightly", str(archive), "--address", head.address, "--poll-seconds", "1",
               "--env", "FILM_RESTORE_GPUS=0"]
    # The runner's client finds the cluster's token as users' do: RAY_AUTH_MODE=token and the token.
    result = subprocess.run(command, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((folder / "archive.summary.json").read_text())
    assert summary["mode"] == "job" and summary["address"] == head.address
    film, missing = summary["films"]
    assert film["status"] == "done" and film["job_id"], film
    assert head.client.get_job_status(film["job_id"]).value == "SUCCEEDED"
    assert head.client.get_job_info(film["job_id"]).metadata["submitted_by"] == "jobs.nightly"
    assert decoded_frames(folder / "nightly" / "film.mkv") == case["frames"]
    assert missing["status"] == "failed" and missing["reason"] == f"no input file at {folder / 'missing.mkv'}"

    again = subprocess.run(command, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1
    film_again = json.loads((folder / "archive.summary.json").read_text())["films"][0]
    assert film_again["status"] == "skipped", film_again
    assert len([job for job in head.client.list_jobs() if job.submission_id == film["job_id"]]) == 1


def test_job_submit_trains_a_tiny_model(head, heldout_faces, tmp_path):
    """`ray job submit -- python -m dmdnet.train config.yaml`: Ray Train on the cluster's workers."""
    head.folders.append(tmp_path)
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {heldout_faces}\noutput: run\nwidth: 4\ndictionary_size: 8\nbatch_size: 1\n"
                      "initialize_faces: 8\nforward_steps: 2\nbackward_steps: 1\nspecific_steps: 1\nheldout_fraction: 0\n")
    job_id = "dmdnet-train-test"
    head.ray("job", "submit", "--address", head.address, "--no-wait", "--submission-id", job_id, "--",
             sys.executable, "-m", "dmdnet.train", str(config))
    status = wait_for_job(head, job_id)
    logs = head.client.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "dmdnet.train: 4 steps done" in logs
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    import dmdnet

    assert dmdnet.load(tmp_path / "run" / "model.safetensors").image_size == 256
