"""report.json (facts, shots, tracks, totals, timings) and report.html (before/after per actor)."""
from __future__ import annotations

import base64
import dataclasses
import html
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from dmdnet.files import atomic_path, write_json
from film_restore.interlace import restored_field_order
from film_restore.report_plot import track_plot
from film_restore.video.fields import is_interlaced


# Side of the before/after thumbnails of the aligned face.
SAMPLE_SIDE = 128
# Largest side of the before/after crops of the frame around the face, kept at 1:1 scale (the film's texture).
DETAIL_SIDE = 160
THUMBNAIL_QUALITY = 85
DETAIL_QUALITY = 90


def _jpeg(rgb: np.ndarray, quality: int) -> str:
    picture = np.clip(rgb, 0, 255).astype(np.uint8)
    return base64.b64encode(cv2.imencode(".jpg", picture[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1]).decode()


def _thumbnail(rgb: np.ndarray) -> str:
    return _jpeg(cv2.resize(np.clip(rgb, 0, 255).astype(np.uint8), (SAMPLE_SIDE, SAMPLE_SIDE),
                            interpolation=cv2.INTER_AREA), THUMBNAIL_QUALITY)


def _detail(before: np.ndarray, after: np.ndarray, landmarks: np.ndarray) -> tuple[str, str]:
    """The frame around a face at 1:1 scale, input and output: at most DETAIL_SIDE square, centred on the landmarks."""
    height, width = before.shape[:2]
    side_x, side_y = min(DETAIL_SIDE, width), min(DETAIL_SIDE, height)
    centre_x, centre_y = np.asarray(landmarks, np.float64).mean(axis=0)
    x = int(np.clip(round(centre_x - side_x / 2), 0, width - side_x))
    y = int(np.clip(round(centre_y - side_y / 2), 0, height - side_y))
    return tuple(_jpeg(rgb[y:y + side_y, x:x + side_x], DETAIL_QUALITY) for rgb in (before, after))


def face_sample(frame: int, actor: str | None, before_crop: np.ndarray, after_crop: np.ndarray, before: np.ndarray,
                after: np.ndarray, landmarks: np.ndarray, texture_ratio: float) -> dict:
    """A track's sample for the page: the aligned face before and after (thumbnails), the frame around it at 1:1
    before and after, and its texture ratio there (JPEG, base64: the work folder keeps it as JSON)."""
    return {"frame": frame, "actor": actor, "before": _thumbnail(before_crop), "after": _thumbnail(after_crop),
            "texture_ratio": round(texture_ratio, 3) if np.isfinite(texture_ratio) else None,
            **dict(zip(("before_1to1", "after_1to1"), _detail(before, after, landmarks)))}


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


def build(run, scan, tracks_by_chunk, results) -> dict:
    """The report of a FilmRun (film_restore.pipeline.film) from its stages' results."""
    job, info, cast = run.job, run.info, run.cast
    tracks = [track for index in sorted(tracks_by_chunk) for track in tracks_by_chunk[index]]
    guarded = _guard_measures(tracks_by_chunk, results)
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
             "similarity": round(t.similarity, 4), "faces": len(t.faces), **guarded.get(id(t), {})}
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
            # restored in part only: restored whole, they would change more from frame to frame than the input
            "faces_held_still": sum(r.faces_held_still for r in results),
            "faces_restored_by_actor": [{"actor": a, "faces": n} for a, n in faces_by_actor.items()],
        },
        "timings_s": {stage: round(seconds, 2) for stage, seconds in run.timings.items()},
        "restore_batching": run.batching,
        "interlace": _interlace(info, results),
        "restore_engines": run.restore_engines,  # engine, precision, device and why, per distinct restorer
        # Per track, on its middle frame: the face's fine texture kept, output over input (texture.texture_ratio).
        "texture_ratios": [{"frame": s["frame"], "actor": s["actor"], "ratio": s.get("texture_ratio")}
                           for result in results for s in result.samples],
        "samples": [sample for result in results for sample in result.samples],
    }
    return report


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


def _track_rows(tracks: list[dict]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(t['actor'] or 'unknown')}</td><td>{t['first_frame']}-{t['last_frame']}</td>"
        f"<td>{g['flicker_ratio']}</td><td>{g['identity_in']} &rarr; {g['identity_out']}</td>"
        f"<td>{g['strength_mean']} (min {g['strength_min']})</td>"
        f"<td>{g['held_back']}{': ' + html.escape('; '.join(f'{n} {why}' for why, n in g['held_back_why'].items())) if g['held_back'] else ''}</td>"
        f"<td>{_plot_cell(t.get('series'))}</td></tr>"
        for t in tracks if (g := t.get("guards"))
    )
    if not rows:
        return ""
    return ("<h2>Tracks</h2><table><tr><th>actor</th><th>frames</th><th>flicker (output / input)</th>"
            "<th>identity in &rarr; out</th><th>strength</th><th>faces held back</th><th>over time</th></tr>"
            + rows + "</table>")


def _plot_cell(series: dict | None) -> str:
    return f'<img class="plot" alt="identity and strength over time" src="{track_plot(series)}">' if series else ""


def write(report: dict, path: Path) -> None:
    """report.json, and report.html beside it with the before/after faces of each actor."""
    samples = report["samples"]
    write_json(path, {key: value for key, value in report.items() if key != "samples"})
    rows = []
    for actor in sorted({s["actor"] or "" for s in samples}):
        cells = "".join(
            f'<figure><img class="thumb" src="data:image/jpeg;base64,{s["before"]}">'
            f'<img class="thumb" src="data:image/jpeg;base64,{s["after"]}">{_detail_row(s)}'
            f"<figcaption>frame {s['frame']}, texture {s.get('texture_ratio')}</figcaption></figure>"
            for s in samples
            if (s["actor"] or "") == actor
        )
        rows.append(f"<h2>{html.escape(actor or 'unknown (generic dictionary)')}</h2><div>{cells}</div>")
    totals = report["totals"]
    page = (
        "<!doctype html><meta charset='utf-8'><title>film_restore report</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;vertical-align:top}"
        "img.thumb{width:128px}img.detail{image-rendering:pixelated}"
        "td,th{padding:2px 8px;text-align:left}</style>"
        f"<h1>{html.escape(report['input']['path'])}</h1>"
        f"<p>{totals['frames']} frames, {totals['shots']} shots, {totals['tracks']} tracks, "
        f"{totals['faces_restored']} faces restored, {totals['faces_too_small']['faces']} smaller than "
        f"{totals['faces_too_small']['min_face']} px left as they were, {totals['faces_held_still']} restored in "
        f"part only (restored whole, they would flicker more than the film). Each pair: before, after; the aligned face, "
        f"then the frame around it at 1:1 scale.</p>" + _interlace_line(report.get("interlace")) + "".join(rows)
        + _track_rows(report["tracks"])
    )
    with atomic_path(path.with_suffix(".html")) as temporary:
        temporary.write_text(page)


def _interlace_line(interlace: dict | None) -> str:
    if not interlace:
        return ""
    combing = interlace["combing"]
    return (f"<p>Interlaced ({interlace['field_order']}): faces restored on {interlace['restored_as']} (face numbers "
            f"count {interlace['track_frames_count']}); combing of the face regions, input {combing['input']}, "
            f"output {combing['output']} (over {combing['frames']} frames).</p>")


def _detail_row(sample: dict) -> str:
    """The frame around the face at 1:1 scale, before and after (samples from before they were kept have none)."""
    if "before_1to1" not in sample:
        return ""
    return "<br>" + "".join(f'<img class="detail" src="data:image/jpeg;base64,{sample[key]}">'
                            for key in ("before_1to1", "after_1to1"))
