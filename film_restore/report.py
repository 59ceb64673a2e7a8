"""report.json (facts, shots, tracks, totals, timings) and report.html (before/after per actor)."""
from __future__ import annotations

import dataclasses
import html
from collections import Counter
from pathlib import Path

from dmdnet.files import atomic_path, write_json


def _video_facts(info) -> dict:
    return {
        "path": str(info.path),
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "pix_fmt": info.pix_fmt,
        "bit_depth": info.bit_depth,
        "time_base": str(info.time_base),
    }


def build(run, scan, tracks_by_chunk, results) -> dict:
    """The report of a FilmRun (film_restore.pipeline.film) from its stages' results."""
    job, info, cast = run.job, run.info, run.cast
    tracks = [track for index in sorted(tracks_by_chunk) for track in tracks_by_chunk[index]]
    faces_by_actor = Counter()
    for result in results:
        for actor, count in result.faces_by_actor.items():
            faces_by_actor[actor or None] += count
    report = {
        "input": {**_video_facts(info), "sha256": run.keys.parts["input_sha256"], "frames": len(scan.frame_pts)},
        "output": None if job.dry_run else {"path": str(job.output), "codec": job.codec,
                                              "size_bytes": job.output.stat().st_size},
        "dry_run": job.dry_run,
        "model_fingerprint": run.fingerprint,
        "checkpoint": run.checkpoint and run.checkpoint.to_json(),
        "output_key": None if job.dry_run else run.keys.compose,
        "cast": {"path": str(cast.path), "match_threshold": cast.match_threshold,
                 "actors": [actor.name for actor in cast.actors]},
        "shots": [dataclasses.asdict(shot) for shot in scan.shots],
        "tracks": [
            {"shot": t.shot, "first_frame": t.first_frame, "last_frame": t.last_frame, "actor": t.actor,
             "similarity": round(t.similarity, 4), "faces": len(t.faces)}
            for t in tracks
        ],
        "totals": {
            "frames": len(scan.frame_pts),
            "shots": len(scan.shots),
            "chunks": len(scan.chunks),
            "tracks": len(tracks),
            "faces_detected": sum(len(t.faces) for t in tracks),
            "faces_restored": sum(r.faces for r in results),
            "faces_too_small": {"min_face": job.min_face, "faces": sum(r.faces_too_small for r in results)},
            "faces_restored_by_actor": [{"actor": a, "faces": n} for a, n in faces_by_actor.items()],
        },
        "timings_s": {stage: round(seconds, 2) for stage, seconds in run.timings.items()},
        # Per track, on its middle frame: the face's fine texture kept, output over input (texture.texture_ratio).
        "texture_ratios": [{"frame": s["frame"], "actor": s["actor"], "ratio": s.get("texture_ratio")}
                           for result in results for s in result.samples],
        "samples": [sample for result in results for sample in result.samples],
    }
    return report


def write(report: dict, path: Path) -> None:
    """report.json, and report.html beside it with the before/after faces of each actor."""
    samples = report["samples"]
    write_json(path, {key: value for key, value in report.items() if key != "samples"})
    rows = []
    for actor in sorted({s["actor"] or "" for s in samples}):
        cells = "".join(
            f'<figure><img src="data:image/jpeg;base64,{s["before"]}"><img src="data:image/jpeg;base64,{s["after"]}">'
            f"<figcaption>frame {s['frame']}, texture {s.get('texture_ratio')}</figcaption></figure>"
            for s in samples
            if (s["actor"] or "") == actor
        )
        rows.append(f"<h2>{html.escape(actor or 'unknown (generic dictionary)')}</h2><div>{cells}</div>")
    totals = report["totals"]
    page = (
        "<!doctype html><meta charset='utf-8'><title>film_restore report</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px}img{width:128px}</style>"
        f"<h1>{html.escape(report['input']['path'])}</h1>"
        f"<p>{totals['frames']} frames, {totals['shots']} shots, {totals['tracks']} tracks, "
        f"{totals['faces_restored']} faces restored, {totals['faces_too_small']['faces']} smaller than "
        f"{totals['faces_too_small']['min_face']} px left as they were. Each pair: before, after.</p>" + "".join(rows)
    )
    with atomic_path(path.with_suffix(".html")) as temporary:
        temporary.write_text(page)
