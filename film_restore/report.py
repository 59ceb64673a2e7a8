"""report.json (facts, settings, versions, shots, tracks with their flags, totals, timings) and report.html, the
review page (film_restore.review), written with every run."""
from __future__ import annotations

import dataclasses
import platform
import subprocess
from collections import Counter
from importlib import metadata
from pathlib import Path

import av

from dmdnet.files import file_sha256, write_json
from film_restore.interlace import restored_field_order
from film_restore.review import MEDIA_TRACKS, Pictures, frame_seconds, frame_timestamps, numbered_tracks, review_tracks, write_page
from film_restore.video import probe
from film_restore.video.fields import is_interlaced

# The report's entry (not in report.json) that carries the page's pictures and frame times from build to write.
PAGE = "page"
# The OpenCV distribution this project installs (pyproject.toml).
OPENCV = "opencv-python-headless"


def _video_facts(info) -> dict:
    return {
        "path": str(info.path),
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "pix_fmt": info.pix_fmt,
        "bit_depth": info.bit_depth,
        "time_base": str(info.time_base),
        "field_order": info.field_order,
    }


def _interlace(info, results) -> dict | None:
    """An interlaced film: how it was restored and its face regions' mean combing per frame, input and output."""
    if not is_interlaced(info.field_order):
        return None
    frames = sum(r.combing.get("frames", 0) for r in results)
    mean = lambda side: round(sum(r.combing.get(side, 0.0) for r in results) / frames, 3) if frames else None
    fields = restored_field_order(info) is not None
    return {"field_order": info.field_order, "restored_as": "fields" if fields else "frames",
            "track_frames_count": "fields" if fields else "frames",
            "combing": {"input": mean("input"), "output": mean("output"), "frames": frames}}


def build(run, scan, tracks_by_chunk, results, media_tracks: int = MEDIA_TRACKS) -> dict:
    """The report of a FilmRun (film_restore.pipeline.film) from its stages' results (tracks_by_chunk: each chunk's
    tracks or their outlines), with the review page's pictures of up to media_tracks tracks, decoded from the input
    and the output (film_restore.review); the tracks' faces are read from the work folder a chunk at a time."""
    job, info, cast, edited = run.job, run.info, run.cast, run.edited
    numbered = numbered_tracks(tracks_by_chunk)
    tracks = [track for _, _, _, track in numbered]
    guarded = _guard_measures(tracks_by_chunk, results)
    faces_by_actor = Counter()
    for result in results:
        for actor, count in result.faces_by_actor.items():
            faces_by_actor[actor or None] += count
    entries = []
    for track_id, index, number, t in numbered:
        # An edited track: the edits that changed it; the actor an edit gave its whole length (identified_as: the analysis's).
        edits = edited.report_fields.get((index, number), {}) if edited else {}
        entries.append({"id": track_id, "chunk": index, "number": number, "shot": t.shot,
                        "first_frame": t.first_frame, "last_frame": t.last_frame, "actor": t.actor,
                        "similarity": round(t.similarity, 4), "faces": len(t.faces), **edits, **guarded.get(id(t), {})})
    seconds = frame_seconds(scan.frame_pts, info.time_base, info.average_rate)
    output = None if job.dry_run else job.output
    # The output keeps the input's timestamps, on its own container's clock (video.check_output says when that differs).
    output_pts = None if output is None or probe(output).time_base == info.time_base else frame_timestamps(output)
    pictures = Pictures(info.path, output, scan.frame_pts, seconds, restored_field_order(info), output_pts)
    chunk_tracks = lambda chunk: _as_restored(run, chunk, run.work.load_tracks(scan.chunks[chunk], run.keys.analysis))  # noqa: E731
    files, cost = review_tracks(chunk_tracks, entries, pictures, media_tracks, run.progress.say)
    report = {
        "input": {**_video_facts(info), "sha256": run.keys.parts["input_sha256"], "frames": len(scan.frame_pts)},
        "output": None if job.dry_run else {"path": str(job.output), "codec": job.codec,
                                              "size_bytes": job.output.stat().st_size},
        "dry_run": job.dry_run,
        "model_fingerprint": run.fingerprint,
        "checkpoint": run.checkpoint and {**run.checkpoint.to_json(), "sha256": run.keys.parts["checkpoint_sha256"]},
        "face_models": {"path": str(run.pack.directory), "id": run.keys.parts["face_models"]},
        "output_key": None if job.dry_run else run.keys.output(edited.by_chunk if edited else {}),
        "cast": {"path": str(cast.path), "match_threshold": cast.match_threshold,
                 "actors": [actor.name for actor in cast.actors]},
        "settings": _settings(job, cast),
        "versions": versions(),
        "shots": [dataclasses.asdict(shot) for shot in scan.shots],
        "tracks": entries,
        "totals": {
            "frames": len(scan.frame_pts),
            "shots": len(scan.shots),
            "chunks": len(scan.chunks),
            "tracks": len(tracks),
            "faces_detected": sum(len(t.faces) for t in tracks),
            "faces_restored": sum(r.faces for r in results),
            "faces_too_small": {"min_face": job.min_face, "faces": sum(r.faces_too_small for r in results)},
            # restored in part only: restored whole, they would change more from frame to frame than the input
            "faces_held_still": sum(r.faces_held_still for r in results),
            "faces_left_by_edits": sum(r.faces_left_by_edits for r in results),
            "faces_restored_by_actor": [{"actor": a, "faces": n} for a, n in faces_by_actor.items()],
        },
        "timings_s": {stage: round(seconds, 2) for stage, seconds in run.timings.items()},
        "restore_batching": run.batching,
        "interlace": _interlace(info, results),
        "restore_engines": run.restore_engines,  # engine, precision, device and why, per distinct restorer
        # Per track with pictures, on its middle frame: the face's fine texture kept, output over input (texture.texture_ratio).
        "texture_ratios": [{"track": e["id"], "frame": e["texture_frame"], "actor": e["actor"], "ratio": e["texture_ratio"]}
                           for e in entries if "texture_ratio" in e],
        "review": cost,  # what the page's pictures cost
        "edits": edited and {"path": str(edited.path), "sha256": file_sha256(edited.path), "entries": len(run.edits.entries),
                             "tracks_edited": len(edited.report_fields), "chunks_edited": len(edited.by_chunk)},
        PAGE: {"files": files, "frame_seconds": seconds},
    }
    return report


def _as_restored(run, chunk: int, tracks: list) -> list:
    """A chunk's tracks with the actor an edit gave a track's whole length (the page's flags judge them as restored)."""
    if run.edited is None:
        return tracks
    return [dataclasses.replace(track, actor=run.edited.actor_of(chunk, number, track.actor)) for number, track in enumerate(tracks)]


def _guard_measures(tracks_by_chunk, results) -> dict[int, dict]:
    """id(track) -> what the guards measured and decided for it (flicker, identity in/out, strength, held back and
    why) and, where the Composer recorded them, its per-face series (frame, identity in/out, strength)."""
    by_chunk = {result.index: {entry["track"]: entry for entry in result.tracks} for result in results}
    measures = {}
    for index, tracks in tracks_by_chunk.items():
        for number, track in enumerate(tracks):
            entry = by_chunk.get(index, {}).get(number)
            if entry is not None:
                measures[id(track)] = {
                    "guards": {key: value for key, value in entry.items() if key not in ("track", "faces", "series")},
                    **({"series": entry["series"]} if "series" in entry else {}),
                }
    return measures


def _settings(job, cast) -> dict:
    """The run's options that shape its result."""
    return {"strength": job.strength, **({"actor strengths": cast.strengths} if cast.strengths else {}), "grain": job.grain,
            "fusion": job.fusion,
            "min face": job.min_face, "codec": job.codec, "chunk frames": job.chunk_frames,
            "detector size": job.detector_size, "engine": job.engine, "precision": job.precision,
            "restore batch": job.restore_batch, "resume": job.resume, **({"edits": str(job.edits)} if job.edits else {})}


def versions() -> dict:
    """The versions of what computed the result: this code (and its git commit where it is a checkout), Python and
    the libraries whose numbers reach the pixels."""
    found = {"film_restore": _package_version("film-restore")}
    commit = _git_commit()
    if commit:
        found["film_restore"] += f" ({commit})"
    found["python"] = platform.python_version()
    for name, package in (("torch", "torch"), ("av", "av"), ("onnxruntime", "onnxruntime"), ("numpy", "numpy"),
                          ("opencv", OPENCV), ("ray", "ray")):
        found[name] = _package_version(package)
    found["ffmpeg (libavcodec)"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return found


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    """The short commit of the checkout this code runs from, "+changes" if it differs from it; None elsewhere."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")


def write(report: dict, path: Path) -> None:
    """report.json at path, and beside it report.html (the review page) with its folder of pictures."""
    page = report.get(PAGE, {})
    write_json(path, {key: value for key, value in report.items() if key != PAGE})
    write_page({**report, "frame_seconds": page.get("frame_seconds")}, path.with_suffix(".html"), page.get("files", {}))
