"""report.html: the review page, written from the report (report.json's content) and the pictures made for it.

The page is one HTML file with its script and style inlined and the run's data as JSON in it;
its pictures (JPEG stills, WebM loops) are in a folder beside it (page_folder). It needs no
network and no server: open it from disk. The folder appears whole (written beside, then
renamed) before the page that names it.
"""
from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

from dmdnet.files import atomic_path
from film_restore.review.flags import FLAGS
from film_restore.review.flags import __doc__ as FLAG_NOTES

NOT_SHOWN = "No pictures for this track: the page shows those of the {limit} tracks to look at first (flagged, then longest)."


def page_folder(html: Path) -> Path:
    """The folder of the page's pictures, beside it."""
    return html.with_name(html.stem + ".files")


def _flag_rules() -> dict[str, str]:
    """flag -> its rule, from the notes of film_restore.review.flags (one paragraph per flag)."""
    rules, current = {}, None
    for line in FLAG_NOTES.splitlines():
        name = line.split(" ", 1)[0]
        if name in FLAGS:
            current = name
            rules[name] = line[len(name):].strip()
        elif current and line.startswith(" ") and line.strip():
            rules[current] += " " + line.strip()
        else:
            current = None
    return rules


def _seconds(value) -> str:
    return f"{value:.1f} s"


def facts(report: dict) -> list[tuple[str, str]]:
    """The run's facts as (name, value) rows: film, output, cast, models, engine, settings, versions, times."""
    film, output = report["input"], report.get("output")
    rows = [("film", film["path"]),
            ("picture", f"{film['codec']} {film['width']}x{film['height']} {film['pix_fmt']} ({film['bit_depth']}-bit), "
                        f"{film['frames']} frames, {film.get('field_order', 'progressive')}"),
            ("film sha256", film.get("sha256", ""))]
    if output:
        rows.append(("output", f"{output['path']} ({output['codec']}, {output['size_bytes']:,} bytes)"))
    elif report.get("dry_run"):
        rows.append(("output", "none: a dry run (tracks and identities only)"))
    cast = report["cast"]
    rows.append(("cast", f"{cast['path']}: {', '.join(cast['actors']) or 'no actors'} (match threshold {cast['match_threshold']})"))
    checkpoint = report.get("checkpoint")
    if checkpoint:
        rows.append(("model", f"{checkpoint['path']} ({checkpoint['source']})"))
        if checkpoint.get("sha256"):
            rows.append(("model file sha256", checkpoint["sha256"]))
        if checkpoint.get("note"):
            rows.append(("model note", checkpoint["note"]))
    if report.get("model_fingerprint"):
        rows.append(("model fingerprint (weights as used)", report["model_fingerprint"]))
    if report.get("face_models"):
        rows.append(("face models", f"{report['face_models']['path']} (id {report['face_models']['id'][:16]})"))
    for engine in report.get("restore_engines") or []:
        rows.append(("engine", f"{engine['engine']} {engine['precision']} on {engine['device']} ({engine['reason']})"))
    if report.get("settings"):
        rows.append(("settings", ", ".join(f"{name} {value}" for name, value in report["settings"].items())))
    if report.get("versions"):
        rows.append(("versions", ", ".join(f"{name} {value}" for name, value in report["versions"].items())))
    rows.append(("stage times", ", ".join(f"{stage} {_seconds(seconds)}" for stage, seconds in report["timings_s"].items())))
    totals = report["totals"]
    rows.append(("faces", f"{totals['faces_detected']} found in {totals['tracks']} tracks, {totals['faces_restored']} restored, "
                          f"{totals['faces_too_small']['faces']} smaller than {totals['faces_too_small']['min_face']} px left as "
                          f"they were, {totals['faces_held_still']} restored in part only (restored whole, they would flicker "
                          f"more than the film)" + (f", {totals['faces_left_by_edits']} left as they were by the edits file"
                                                    if totals.get("faces_left_by_edits") else "")))
    edits = report.get("edits")
    if edits:
        rows.append(("edits", f"{edits['path']}: {edits['entries']} entries changed {edits['tracks_edited']} tracks in "
                              f"{edits['chunks_edited']} chunks (sha256 {edits['sha256'][:16]})"))
    interlace = report.get("interlace")
    if interlace:
        combing = interlace["combing"]
        rows.append(("interlaced", f"{interlace['field_order']}: faces restored on {interlace['restored_as']} (track frame "
                                   f"numbers count {interlace['track_frames_count']}); combing of the face regions, input "
                                   f"{combing['input']}, output {combing['output']} (over {combing['frames']} frames)"))
    review = report.get("review")
    if review:
        rows.append(("this page", f"pictures of {review['tracks_with_media']} tracks (at most {review['media_tracks_limit']}), "
                                  f"{review['pictures_decoded']} pictures decoded, {review['bytes']:,} bytes, "
                                  f"{_seconds(review['seconds'])}"))
    return rows


def summary(report: dict) -> str:
    """One line: what the run did, with what."""
    totals, checkpoint = report["totals"], report.get("checkpoint") or {}
    model = {"shipped": "the demonstration model shipped in the repository"}.get(checkpoint.get("source"), checkpoint.get("path"))
    restored = "a dry run: nothing restored" if report.get("dry_run") else f"{totals['faces_restored']} faces restored with {model}"
    return (f"{totals['frames']} frames, {totals['shots']} shots, {totals['tracks']} face tracks; {restored}; "
            f"{report['timings_s'].get('total', 0):.0f} s in all. Tracks are listed where to look first; open one to see it "
            f"before and after at 1:1 and moving.")


def page_data(report: dict, folder_name: str) -> dict:
    """What page.js reads."""
    tracks = report["tracks"]
    per_frame = 2 if (report.get("interlace") or {}).get("track_frames_count") == "fields" else 1
    actors = list(report["cast"]["actors"])
    if any(track["actor"] is None for track in tracks):
        actors.append(None)
    limit = (report.get("review") or {}).get("media_tracks_limit")
    return {
        "title": report["input"]["path"],
        "facts": facts(report),
        "files": folder_name,
        "frame_seconds": report.get("frame_seconds") or list(range(report["totals"]["frames"])),
        "pictures_per_frame": per_frame,
        "pictures": report["totals"]["frames"] * per_frame,
        "shots": report["shots"],
        "actors": actors,
        "flags": FLAGS,
        "flag_rules": _flag_rules(),
        "tracks": tracks,
        "media_note": NOT_SHOWN.format(limit=limit) if limit is not None else "No pictures for this track.",
    }


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def html(report: dict, folder_name: str) -> str:
    data = json.dumps(page_data(report, folder_name), separators=(",", ":")).replace("</", "<\\/")
    title = os.path.basename(report["input"]["path"])
    escape = lambda text: text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}: review</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_asset("page.css")}</style></head>
<body>
<h1>{escape(report["input"]["path"])}</h1>
<p class="summary-line">{escape(summary(report))}</p>
<details><summary>Run facts</summary><table class="facts" id="facts"></table></details>
<h2>Timeline</h2>
<svg id="timeline" role="img" aria-label="shots and face tracks along the film"></svg>
<div class="legend" id="legend"></div>
<div class="controls">
<fieldset><legend>Show tracks with any of (none ticked: all)</legend><div id="flag-filters"></div></fieldset>
<fieldset><legend>Actors</legend><div id="actor-filters"></div></fieldset>
<fieldset><legend>Order</legend><select id="sort">
<option value="first">where to look first</option><option value="film">film order</option><option value="actor">actor</option>
<option value="length">longest</option><option value="identity">identity lost most</option></select>
<button id="open-all">open all shown</button> <button id="close-all">close all</button></fieldset>
</div>
<p id="shown-count" class="muted"></p>
<div id="tracks"></div>
<script type="application/json" id="review-data">{data}</script>
<script>{_asset("page.js")}</script>
</body></html>
"""


def write_page(report: dict, path: Path, files: dict[str, bytes]) -> None:
    """report.html at path with its pictures (name -> bytes) in page_folder(path); an earlier run's are replaced."""
    folder = page_folder(path)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, data in files.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    with atomic_path(path) as temporary:
        temporary.write_text(html(report, folder.name))
