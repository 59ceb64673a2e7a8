"""The example film (examples/) through the exact command README.md opens with, and its review page in a browser.

The command runs as a new user would type it, in a copy of examples/ (it writes beside the
film), with the face models of the shared assets and no network (FILM_RESTORE_MODELS,
FILM_RESTORE_OFFLINE): the repository's demonstration model restores. This is also the
pipeline's test of that model (256 px faces) on real footage.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest

from film_restore.workdir import read_tracks
from tests.assets import REPO, asset
from tests.browser import CHROMIUM, NO_CHROMIUM, Browser, artifact_folder, open_review_page

EXAMPLE_FILES = ("old_print.mkv", "cast.yaml", "refs")


def readme_example_command() -> list[str]:
    """The run command of README.md's first line (after `./install.sh &&`)."""
    text = (REPO / "README.md").read_text()
    first_line = text.split("```bash\n", 1)[1].splitlines()[0]
    install, command = first_line.split("&&")
    assert install.strip() == "./install.sh"
    return shlex.split(command, comments=True)


def decoded(path):
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        audio = [bytes(packet) for packet in container.demux(audio=0) if packet.size] if container.streams.audio else []
    return [f.pts for f in frames], [f.to_ndarray(format="rgb24") for f in frames], audio


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("example")
    (folder / "examples").mkdir()
    for name in EXAMPLE_FILES:
        source = REPO / "examples" / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / "examples" / name)
    command = readme_example_command()
    assert command[:3] == ["python", "-m", "film_restore.run"], command
    environment = {**os.environ, "FILM_RESTORE_MODELS": str(asset("models")), "FILM_RESTORE_OFFLINE": "1",
                   "FILM_RESTORE_HOME": str(folder / "home"), "FILM_RESTORE_DASHBOARD": "0",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, *command[1:]], cwd=folder, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    examples = folder / "examples"
    return {"film": examples / "old_print.mkv", "output": examples / "old_print.restored.mkv",
            "report": examples / "old_print.restored.report.json", "html": examples / "old_print.restored.report.html",
            "stderr": result.stderr}


def test_the_readme_command_restores_the_example_and_writes_its_page(example_run):
    assert "demonstration model" in example_run["stderr"]  # offline: the shipped model, and it says so
    input_pts, input_frames, input_audio = decoded(example_run["film"])
    output_pts, output_frames, output_audio = decoded(example_run["output"])
    assert output_pts == input_pts and output_audio == input_audio
    report = json.loads(example_run["report"].read_text())
    assert report["checkpoint"]["source"] == "shipped" and len(report["checkpoint"]["sha256"]) == 64
    # Two shots of one actor (a cut from a wide to a closer framing): one track each, named, every face restored.
    assert [shot["first_frame"] for shot in report["shots"]] == [0, 24]
    assert [(t["id"], t["actor"], t["faces"]) for t in report["tracks"]] == [("s0t0", "Speaker", 24), ("s1t0", "Speaker", 24)]
    assert report["totals"]["faces_restored"] == 48
    for track in report["tracks"]:
        assert 0.6 <= track["texture_ratio"] <= 1.25, track  # the face keeps most of the film's fine texture
        assert track["guards"]["identity_out"] >= track["guards"]["identity_in"] - 0.005
    # Only the faces: elsewhere the output differs by what re-encoding (x264 CRF 14) leaves, and no more.
    boxes = {tracked.frame: tracked.face.box for path in sorted(example_run["output"].parent.glob(".*.work/*/analysis/*.json"))
             for track in read_tracks(path) for tracked in track.faces}
    for index, (before, after) in enumerate(zip(input_frames, output_frames)):
        difference = np.abs(before.astype(int) - after).mean(axis=2)
        face = np.zeros(difference.shape, bool)
        x1, y1, x2, y2 = (int(round(value)) for value in boxes[index])
        face[y1:y2, x1:x2] = True
        assert difference[~face].mean() < 2.0 and (difference[~face] > 12).mean() < 1e-3, index
        assert difference[face].mean() > 1.2 * difference[~face].mean(), index
    # The page and its pictures, beside the report.
    folder = example_run["html"].with_name("old_print.restored.report.files")
    for track in report["tracks"]:
        media = track["media"]
        labels = {label for still in media["stills"] for label in still["labels"]}
        assert labels == {"first", "middle", "last"} | {f"worst: {flag}" for flag in track["worst_frames"]}, track
        for still in media["stills"]:
            assert (folder / still["before"]).stat().st_size > 1000 and (folder / still["after"]).stat().st_size > 1000
        assert (folder / media["loop"]["file"]).stat().st_size > 10000
    assert report["review"]["tracks_with_media"] == 2 and report["review"]["pictures_decoded"] == 48


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_example_page_plays_in_a_browser(example_run, tmp_path):
    with Browser(tmp_path / "profile") as browser:
        shown = open_review_page(browser, example_run["html"], 2)
        screenshot = browser.screenshot(artifact_folder(tmp_path) / "example_review_page.png")
    print(f"screenshot of the example's review page: {screenshot}")
    assert browser.errors == []
    assert shown["bars"] == ["s0t0", "s1t0"]
    stills = sum(len(track["media"]["stills"]) for track in json.loads(example_run["report"].read_text())["tracks"])
    assert len(shown["images"]) == 2 * stills and all(width > 0 for _, width in shown["images"]), shown["images"]
    assert len(shown["videos"]) == 2 and all(video["frames"] > 1 and not video["paused"] for video in shown["videos"])
