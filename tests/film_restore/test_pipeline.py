"""The whole film pipeline through its command line, on a film made of three real clips.

Three clips of different people joined with hard cuts, with an audio track; a cast of the
first two built from frames of the other half of their clips; a narrow seeded DMDNet.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.assets import REPO, asset, save_small_checkpoint
from tests.browser import CHROMIUM, NO_CHROMIUM, Browser, artifact_folder, click_filter, open_review_page, shown_cards
from film_restore.finish.paste import frame_matte
from film_restore.faces import align_face
from film_restore.workdir import read_tracks
from tests.media import make_film, write_references

CLIPS = ("media/clips/retalk_2.mp4", "media/clips/liveportrait_d10.mp4", "media/clips/retalk_3.mp4")
FRAMES_PER_CLIP = 24
CHUNK_FRAMES = 20  # below a shot's length: each shot is a chunk of its own
CHUNKS = len(CLIPS)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decoded(path: Path) -> tuple[list[int], list[np.ndarray]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.pts for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


def audio_packets(path: Path) -> list[tuple[int, bytes]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(p.pts, bytes(p)) for p in container.demux(stream) if p.size]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    film = folder / "film.mkv"
    cuts = make_film(film, [asset(c) for c in CLIPS], FRAMES_PER_CLIP, size=(512, 512), with_audio=True)
    for number, clip in enumerate(CLIPS[:2]):
        write_references(asset(clip), folder / "refs" / f"actor{number}", 4)
    cast = folder / "cast.yaml"
    cast.write_text("actors:\n" + "".join(f"  - name: Actor {n}\n    references: refs/actor{n}/*.png\n" for n in range(2)))
    checkpoint = save_small_checkpoint(folder / "DMDNet.pth")
    return {"folder": folder, "film": film, "cuts": cuts, "cast": cast, "checkpoint": checkpoint}


def restore(setup, *extra, output=None, expect_ok=True):
    output = output or setup["folder"] / "out.mkv"
    command = [sys.executable, "-m", "film_restore.run", str(setup["film"]), "--cast", str(setup["cast"]),
               "--checkpoint", str(setup["checkpoint"]), "--models", str(asset("models")), "-o", str(output),
               "--chunk-frames", str(CHUNK_FRAMES), *map(str, extra)]
    environment = {**os.environ, "FILM_RESTORE_DASHBOARD": "0"}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    assert (result.returncode == 0) == expect_ok, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def full_run(setup):
    output = setup["folder"] / "restored.mkv"
    restore(setup, "--codec", "ffv1", "--workdir", setup["folder"] / "work", output=output)
    return output


def test_dry_run_finds_the_cuts_and_the_actors(setup):
    report_path = setup["folder"] / "dry.json"
    restore(setup, "--dry-run", "--report", report_path, "--workdir", setup["folder"] / "dry-work",
            output=setup["folder"] / "never.mkv")
    assert not (setup["folder"] / "never.mkv").exists()
    report = json.loads(report_path.read_text())
    starts = [shot["first_frame"] for shot in report["shots"]]
    assert starts == [0, *setup["cuts"]]
    assert report["shots"][-1]["last_frame"] == 3 * FRAMES_PER_CLIP - 1
    expected = {0: "Actor 0", 1: "Actor 1", 2: None}
    assert report["tracks"], "no face tracks found"
    for track in report["tracks"]:
        assert track["actor"] == expected[track["shot"]], track
    covered = {shot: sum(t["faces"] for t in report["tracks"] if t["shot"] == shot) for shot in expected}
    assert all(count >= FRAMES_PER_CLIP - 2 for count in covered.values()), covered


def test_output_keeps_frames_timestamps_audio_and_every_pixel_outside_faces(setup, full_run):
    input_pts, input_frames = decoded(setup["film"])
    output_pts, output_frames = decoded(full_run)
    assert output_pts == input_pts
    assert audio_packets(full_run) == audio_packets(setup["film"])

    analysis = sorted((setup["folder"] / "work").rglob("analysis/*.json"))
    tracks = [track for path in analysis for track in read_tracks(path)]
    faces_in_frame = {}
    for track in tracks:
        for tracked in track.faces:
            faces_in_frame.setdefault(tracked.frame, []).append(tracked.face)
    changed_frames = 0
    for index, (before, after) in enumerate(zip(input_frames, output_frames)):
        matte = np.zeros(before.shape[:2], np.float32)
        for face in faces_in_frame.get(index, []):
            matte = np.maximum(matte, frame_matte(before.shape, align_face(before, face)))
        # A chroma sample covers 2 x 2 pixels: a pixel beside the matte may share one.
        footprint = cv2.dilate((matte > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert np.array_equal(before[~footprint], after[~footprint]), f"frame {index} changed outside the faces"
        changed_frames += bool(np.any(before[footprint] != after[footprint]))
    assert changed_frames >= 0.9 * len(input_frames)
    report = json.loads(full_run.with_name("restored.report.json").read_text())
    assert report["totals"]["faces_restored"] >= 3 * (FRAMES_PER_CLIP - 2)
    batching = report["restore_batching"]
    assert batching["faces"] == report["totals"]["faces_restored"] and batching["mean_batch"] >= batching["mean_request"]
    # Strength auto: the guards measured every track, and a seeded (untrained) network is held back
    # wherever it would make a face less like the actor, or unlike itself.
    for track in report["tracks"]:
        guarded = track["guards"]
        assert guarded["identity_out"] >= guarded["identity_in"] - 0.01, track
        assert guarded["held_back"] == sum(guarded["held_back_why"].values())


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_review_page_in_a_browser(full_run, tmp_path):
    """The run's review page in headless Chromium: no console errors, one timeline entry per track, every before/after
    picture loaded, every loop playing, and the filters hiding tracks (by flag and by actor)."""
    report = json.loads(full_run.with_name("restored.report.json").read_text())
    ids = [track["id"] for track in report["tracks"]]
    stranger = [track["id"] for track in report["tracks"] if track["actor"] is None]
    actor0 = [track["id"] for track in report["tracks"] if track["actor"] == "Actor 0"]
    assert stranger and actor0 and len(ids) == len(set(ids))
    with Browser(tmp_path / "profile") as browser:
        shown = open_review_page(browser, full_run.with_name("restored.report.html"), len(ids))
        assert sorted(shown["bars"]) == sorted(ids) and sorted(shown["cards"]) == sorted(ids)
        stills = sum(len(track["media"]["stills"]) for track in report["tracks"])
        assert len(shown["images"]) == 2 * stills and all(width > 0 for _, width in shown["images"]), shown["images"]
        assert len(shown["videos"]) == len(ids)
        assert all(video["frames"] > 1 and video["time"] > 0.2 and not video["paused"] for video in shown["videos"])
        click_filter(browser, "flag-filters", "stranger")
        assert shown_cards(browser) == stranger
        click_filter(browser, "flag-filters", "stranger")
        click_filter(browser, "actor-filters", "Actor 0")
        assert sorted(shown_cards(browser)) == sorted(set(ids) - set(actor0))
        browser.screenshot(artifact_folder(tmp_path) / "pipeline_review_page.png")
    assert browser.errors == []


def test_an_edits_file_redoes_only_the_chunks_whose_tracks_it_changes(setup, full_run, tmp_path):
    """The archivist's loop after a finished run: one track set to actor: none. A mistake in the edits file first: one
    line, and nothing rewritten. Then only that track's chunk is composed again (the run's line and the work folder say
    so), every frame of the other chunks is the first output's, bit for bit, and the track's faces are the input's."""
    report = json.loads(full_run.with_name("restored.report.json").read_text())
    stranger = next(track for track in report["tracks"] if track["actor"] is None)
    work, output, edits = tmp_path / "work", tmp_path / "restored.mkv", tmp_path / "edits.yaml"
    shutil.copytree(setup["folder"] / "work", work)
    shutil.copy(full_run, output)  # the previous output, where the rerun writes
    chunk_files = lambda: {path.name: path.stat().st_mtime_ns for path in work.glob("*/chunks/*")}  # noqa: E731
    before = chunk_files()
    assert len(before) == 2 * CHUNKS  # the finished run kept its chunks (video and totals)
    edits.write_text(f"- track: {stranger['id']}\n  actor: none\n- track: s9t0\n  skip: true\n")
    rerun = ("--codec", "ffv1", "--workdir", work, "--edits", edits, "--resume")
    bad = restore(setup, *rerun, output=output, expect_ok=False)
    assert bad.returncode == 3 and bad.stderr.strip().splitlines()[-1] == (
        f"error: {edits}:3: track: no track s9t0 in this film (its shots are 0-2; the review page gives each track's id)")
    assert sha256(output) == sha256(full_run) and chunk_files() == before

    edits.write_text(f"- track: {stranger['id']}\n  actor: none    # a copied entry from the review page\n")
    result = restore(setup, *rerun, output=output)
    assert f"redid 1 of {CHUNKS} chunks (1 with edited tracks); {CHUNKS - 1} kept as they were" in result.stderr
    after = chunk_files()
    redone = {name for name in after if before.get(name) != after[name]}
    assert {name[:5] for name in redone} == {f"{stranger['chunk']:05d}"} and len(redone) == 2 and len(after) == 2 * CHUNKS
    shot = report["shots"][stranger["shot"]]  # one chunk per shot
    input_frames, first_frames, edited_frames = (decoded(path)[1] for path in (setup["film"], full_run, output))
    for index, (source, first, edited) in enumerate(zip(input_frames, first_frames, edited_frames, strict=True)):
        if shot["first_frame"] <= index <= shot["last_frame"]:  # the stranger's shot: nothing restored there now
            assert np.array_equal(edited, source) and not np.array_equal(first, source), index
        else:
            assert np.array_equal(edited, first), index
    edited_report = json.loads(output.with_name("restored.report.json").read_text())
    [track] = [track for track in edited_report["tracks"] if track["id"] == stranger["id"]]
    assert track["edits"] == [{"line": 1, "actor": "none"}] and "guards" not in track
    assert edited_report["totals"]["faces_left_by_edits"] == stranger["faces"]
    assert [t["id"] for t in edited_report["tracks"] if "edits" in t] == [stranger["id"]]


@pytest.mark.parametrize("problem, exit_status", [("truncated input", 3), ("missing cast image", 3),
                                                  ("cast image without a face", 3), ("missing checkpoint", 4)])
def test_bad_input_is_one_line_error_with_no_output(setup, problem, exit_status, tmp_path):
    broken = dict(setup)
    if problem == "truncated input":
        data = setup["film"].read_bytes()
        broken["film"] = tmp_path / "truncated.mkv"
        broken["film"].write_bytes(data[: len(data) // 2])
    elif problem == "missing cast image":
        broken["cast"] = tmp_path / "cast.yaml"
        broken["cast"].write_text("actors:\n  - name: Ghost\n    references: [refs/ghost.png]\n")
    elif problem == "cast image without a face":
        (tmp_path / "refs").mkdir()
        cv2.imwrite(str(tmp_path / "refs" / "wall.png"), np.full((400, 400, 3), 120, np.uint8))
        broken["cast"] = tmp_path / "cast.yaml"
        broken["cast"].write_text("actors:\n  - name: Wall\n    references: [refs/wall.png]\n")
    else:
        broken["checkpoint"] = tmp_path / "absent.pth"
    before = sha256(broken["film"])
    output = tmp_path / "out.mkv"
    result = restore(broken, "--workdir", tmp_path / "work", output=output, expect_ok=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == exit_status and lines[-1].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Traceback" in (tmp_path / "work" / f"{broken['film'].name}.log").read_text()
    assert not output.exists()
    assert sha256(broken["film"]) == before


@pytest.mark.slow
def test_full_size_network_restores_a_short_film(setup, tmp_path):
    """The authors' full-size architecture (seeded weights) through the whole pipeline."""
    from tests.assets import reference_module, save_state

    manifest = json.loads(asset("dmdnet_reference/state_dict_manifest.json").read_text())
    checkpoint = save_state(reference_module().make_state(manifest, 1234, 1.5), tmp_path / "DMDNet.pth")
    film = tmp_path / "short.mkv"
    make_film(film, [asset(CLIPS[0])], 6, size=(512, 512), with_audio=True)
    full = {**setup, "film": film, "checkpoint": checkpoint}
    output = tmp_path / "restored.mkv"
    restore(full, "--codec", "ffv1", "--workdir", tmp_path / "work", "--strength", 1, output=output)

    input_pts, input_frames = decoded(film)
    output_pts, output_frames = decoded(output)
    assert output_pts == input_pts
    assert audio_packets(output) == audio_packets(film)
    report = json.loads(output.with_name("restored.report.json").read_text())
    assert [t["actor"] for t in report["tracks"]] == ["Actor 0"]
    assert report["totals"]["faces_restored"] == 6
    # Seeded random weights restore nothing real: the fidelity guard keeps their output to the band the
    # input cannot vouch for, so each face changes by a few levels (9-13 measured), and only the face.
    for before, after in zip(input_frames, output_frames):
        changed = np.abs(before.astype(int) - after).max(axis=2)
        assert changed.max() > 3 and (changed > 3).mean() < 0.05
