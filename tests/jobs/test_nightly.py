"""The nightly archive runner: archive.yaml validation, skip / run / fail per film, the summary.

Films run on a local Ray (no cluster address), each as `python -m film_restore.run` joined
to the runner's Ray, with the narrow seeded checkpoint and 20-frame films.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assets import REPO, asset
from tests.media import make_film
from tests.small_case import CLIPS, FRAMES_PER_CLIP, SIZE, decoded_frames, make_case


def nightly(archive: Path, *arguments) -> subprocess.CompletedProcess:
    environment = {**os.environ, "FILM_RESTORE_DASHBOARD": "0"}
    environment.pop("RAY_ADDRESS", None)
    environment.pop("RAY_API_SERVER_ADDRESS", None)
    environment.pop("FILM_RESTORE_CHECKPOINT", None)
    return subprocess.run([sys.executable, "-m", "jobs.nightly", str(archive), *map(str, arguments)],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)


def write_archive(path: Path, case: dict, films: list[tuple[str, str]]) -> Path:
    lines = ["defaults:", f"  cast: {case['cast'].name}", f"  checkpoint: {case['checkpoint']}",
             f"  models: {case['models']}", "  workdir: work", "  codec: ffv1", "films:"]
    for film, output in films:
        lines += [f"  - input: {film}", f"    output: {output}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    case = make_case(tmp_path_factory.mktemp("nightly"))
    folder = case["folder"]
    make_film(folder / "second.mkv", [asset(c) for c in reversed(CLIPS)], FRAMES_PER_CLIP, size=SIZE)
    data = case["film"].read_bytes()
    (folder / "broken.mkv").write_bytes(data[: len(data) // 3])
    return case


def test_nightly_skips_done_films_runs_new_ones_and_reports_failures(case):
    folder = case["folder"]
    first = nightly(write_archive(folder / "first.yaml", case, [("film.mkv", "out/film.mkv")]))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    done = folder / "out" / "film.mkv"
    assert (folder / "out" / "film.nightly.json").is_file()
    done_mtime = done.stat().st_mtime_ns

    archive = write_archive(folder / "archive.yaml", case, [("film.mkv", "out/film.mkv"), ("second.mkv", "out/second.mkv"),
                                                            ("broken.mkv", "out/broken.mkv")])
    result = nightly(archive, "-j", "2")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]

    summary = json.loads((folder / "archive.summary.json").read_text())
    assert summary["mode"] == "local"
    assert summary["counts"] == {"done": 1, "skipped": 1, "failed": 1}
    skipped, new, broken = summary["films"]
    assert (skipped["status"], new["status"], broken["status"]) == ("skipped", "done", "failed")
    assert "same settings and model" in skipped["reason"]
    assert done.stat().st_mtime_ns == done_mtime
    assert decoded_frames(folder / "out" / "second.mkv") == case["frames"]
    assert json.loads((folder / "out" / "second.nightly.json").read_text())["key"] == new["key"]
    assert broken["reason"] and "\n" not in broken["reason"] and "broken.mkv" in broken["reason"], broken
    assert Path(broken["log"]).is_file() and not (folder / "out" / "broken.mkv").exists()

    assert broken["failed_nights"] == 1 and broken["exit_status"] == 3  # bad input (film_restore.pipeline.failures)
    state = json.loads((folder / "archive.state.json").read_text())["films"]
    assert list(state) == [broken["output"]]  # the films done or skipped have no count
    assert state[broken["output"]]["failed_nights"] == 1 and state[broken["output"]]["last_cause"] == broken["reason"]

    text = (folder / "archive.summary.txt").read_text()
    assert text.splitlines()[0].endswith("1 done, 1 skipped, 1 failed (3 films, %s s)" % text.split("(3 films, ")[1].split(" s)")[0])
    assert any(line.startswith("failed") and broken["reason"] in line and "(night 1 of 3; log " in line
               for line in text.splitlines())
    assert text in result.stdout

    # The next night the failed film is tried again (the count goes on), up to its attempts; then it is
    # not tried, and still counts as failed, until it changes or --force.
    from jobs.archive import load
    from jobs.nightly import Outcome, Plan, completion_keys, film_arguments, load_state, plan, why_not_complete

    broken_film = load(archive).films[2]
    again = plan(broken_film, False, load_state(folder / "archive.state.json"))
    assert isinstance(again, Plan) and again.failed_before == 1
    (folder / "archive.yaml").write_text(archive.read_text().replace("  codec: ffv1\n", "  codec: ffv1\n  attempts: 1\n"))
    given_up = nightly(archive)
    assert given_up.returncode == 1, given_up.stdout[-2000:] + given_up.stderr[-3000:]
    summary = json.loads((folder / "archive.summary.json").read_text())
    assert summary["counts"] == {"done": 0, "skipped": 2, "failed": 1}
    assert summary["films"][2]["reason"].startswith(f"not tried: it failed 1 night in a row (last: {broken['reason']}); ")
    assert summary["films"][2]["log"] is None
    assert isinstance(plan(load(archive).films[2], True, load_state(folder / "archive.state.json")), Plan)

    # Another codec for the done film: no longer complete for the same settings.
    (folder / "x264.yaml").write_text(archive.read_text().replace("codec: ffv1", "codec: x264"))
    film = load(folder / "x264.yaml").films[0]
    keys = completion_keys(film)
    assert why_not_complete(film, keys.compose, keys.parts) == "settings or model changed (compose_settings)"
    # Another engine too: its pixels may differ, and the runner passes it on to the run.
    (folder / "onnx.yaml").write_text(archive.read_text().replace("  codec: ffv1\n", "  codec: ffv1\n  engine: onnxruntime\n"))
    film = load(folder / "onnx.yaml").films[0]
    arguments = film_arguments(film, False)
    assert arguments[arguments.index("--engine"):][:4] == ["--engine", "onnxruntime", "--precision", "float32"]
    keys = completion_keys(film)
    assert why_not_complete(film, keys.compose, keys.parts) == "settings or model changed (compose_settings)"
    film = load(archive).films[0]
    keys = completion_keys(film)
    assert why_not_complete(film, keys.compose, keys.parts) is None

    # Forced again, the film resumes: its work folder keeps the finished stages' results.
    planned = plan(film, force=True)
    assert isinstance(planned, Plan) and planned.resumed and planned.why == "forced"
    assert "--resume" in film_arguments(planned.film, planned.film.resume)
    assert isinstance(plan(film, force=False), Outcome)


@pytest.mark.parametrize("text, where", [
    ("films:\n  - input: a.mkv\n    cast: c.yaml\n    codex: ffv1\n", ":4: films[0].codex: unknown field"),
    ("films:\n  - input: a.mkv\n    cast: c.yaml\n    codec: mpeg2\n", ":4: films[0].codec: expected one of auto"),
    ("defaults:\n  cast: c.yaml\nfilms:\n  - output: b.mkv\n", ":4: films[0].input: missing"),
    ("films:\n  - input: a.mkv\n    cast: c.yaml\n  - input: b.mkv\n    cast: c.yaml\n    output: a.restored.mkv\n",
     ":4: films[1].output: "),
    ("defaults:\n  chunk_frames: -3\nfilms:\n  - {input: a.mkv, cast: c.yaml}\n", ":2: defaults.chunk_frames: expected a positive"),
    ("films:\n  - input: s3://bucket/a.mkv\n    cast: c.yaml\n", ":2: films[0].input: 's3://bucket/a.mkv' is a URI"),
    ("films:\n  - input: a.mkv\n    resume: maybe\n", ":3: films[0].resume: expected true or false"),
    ("defaults:\n  engine: openvino\nfilms:\n  - {input: a.mkv, cast: c.yaml}\n", ":2: defaults.engine: expected one of auto"),
    ("films: [\n", ": not valid YAML"),
    ("films: []\n", ":1: films: expected a non-empty list"),
])
def test_archive_errors_name_the_line_and_field(tmp_path, monkeypatch, text, where):
    from jobs.archive import ArchiveError, load

    monkeypatch.setenv("FILM_RESTORE_CHECKPOINT", str(tmp_path / "DMDNet.pth"))
    archive = tmp_path / "archive.yaml"
    archive.write_text(text)
    with pytest.raises(ArchiveError) as error:
        load(archive)
    message = str(error.value)
    assert message.startswith(str(archive)) and where in message and "\n" not in message, message


def test_invalid_archive_is_one_line_error_and_exit_status_2(tmp_path):
    archive = tmp_path / "archive.yaml"
    archive.write_text("films:\n  - input: a.mkv\n")
    result = nightly(archive)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {archive}:2: films[0].cast: missing (give it here or in defaults)"
