"""The review page of a run (report.html and its pictures): where to look first, and what to look at.

flags.py says where to look first (every threshold), media.py makes the pictures of a track from
the input and the output, page.py writes the page (page.js and page.css inlined; it works from
file:// with no network). film_restore.report calls review_tracks when it builds the report and
write_page when it writes it.
"""
from __future__ import annotations

import time
from typing import Callable

import av

from film_restore.records import Track
from film_restore.review.flags import FLAGS, track_flags
from film_restore.review.media import Pictures, frame_timestamps, gather, plan_track
from film_restore.review.page import page_folder, write_page
from film_restore.video import VideoError

__all__ = ["FLAGS", "MEDIA_TRACKS", "Pictures", "frame_seconds", "frame_timestamps", "numbered_tracks", "page_folder",
           "review_tracks", "track_id", "write_page"]

# Tracks that get stills and a loop, flagged tracks first (then the longest): bounds the page's cost on a long film.
MEDIA_TRACKS = 40
# Pictures a second where the film's timestamps do not say.
FALLBACK_RATE = 25.0


def track_id(shot: int, number_in_shot: int) -> str:
    """A track's id on the page and in edits files: s<shot>t<number of the track in its shot>, both from 0
    (the same for any --chunk-frames; never a number, so YAML keeps it a string)."""
    return f"s{shot}t{number_in_shot}"


def numbered_tracks(tracks_by_chunk: dict[int, list]) -> list[tuple[str, int, int, object]]:
    """(id, chunk, number in the chunk, track) of every track (Track or TrackOutline) of the film, chunk by chunk."""
    numbered, in_shot = [], {}
    for chunk in sorted(tracks_by_chunk):
        for number, track in enumerate(tracks_by_chunk[chunk]):
            numbered.append((track_id(track.shot, in_shot.get(track.shot, 0)), chunk, number, track))
            in_shot[track.shot] = in_shot.get(track.shot, 0) + 1
    return numbered


def frame_seconds(frame_pts, time_base, average_rate) -> list[float]:
    """Each frame's time from the first, in seconds (from its pts; frames without pts at the average rate)."""
    if all(pts is not None for pts in frame_pts):
        return [round(float((pts - frame_pts[0]) * time_base), 4) for pts in frame_pts]
    rate = float(average_rate) if average_rate else FALLBACK_RATE
    return [round(index / rate, 4) for index in range(len(frame_pts))]


def review_tracks(chunk_tracks: Callable[[int], list[Track]], entries: list[dict], pictures: Pictures,
                  media_tracks: int = MEDIA_TRACKS, say=print) -> tuple[dict, dict]:
    """Adds to each track's report entry (with its "id", "chunk", "number", "faces", "guards" and "series" where
    restored) its flags, measures, worst frames and, for up to media_tracks of them, its media, loop measures and
    texture ratio. chunk_tracks(chunk index) gives a chunk's tracks (from the work folder): they are read a chunk
    at a time, and only the tracks that may get pictures are kept, so a long film's faces are never all in memory.

    Returns (files: name -> bytes for the page's folder, cost: what making them took). A film that cannot be read
    back for the pictures gives a page without them, and say() tells why: the run's output is done by then."""
    started = time.perf_counter()
    flags, kept = {}, {}
    rank = lambda i: (-len(flags[i].raised), -entries[i]["faces"], i)  # noqa: E731 (flagged first, then the longest)
    for chunk in sorted({entry["chunk"] for entry in entries}):
        tracks = chunk_tracks(chunk)
        for index, entry in enumerate(entries):
            if entry["chunk"] == chunk:
                track = tracks[entry["number"]]
                flags[index] = track_flags(track, entry.get("guards"), entry.get("series"), None)
                kept[index] = track
        kept = {index: kept[index] for index in sorted(kept, key=rank)[:media_tracks]}
    chosen = sorted(kept, key=rank)
    seconds = pictures.frame_seconds
    span = (seconds[-1] - seconds[0]) if len(seconds) > 1 else 0.0
    rate = pictures.per_frame * ((len(seconds) - 1) / span if span > 0 else FALLBACK_RATE)
    plans = {i: plan_track(entries[i]["id"], kept[i], flags[i].worst, rate) for i in chosen}
    error = None
    try:
        decoded = gather(list(plans.values()), pictures)
    except (VideoError, av.FFmpegError, OSError) as failure:
        error = " ".join(str(failure).split())
        say(f"note: the review page has no pictures: {error}")
        plans, decoded = {}, 0
    files = {}
    for index, entry in enumerate(entries):
        plan = plans.get(index)
        if plan is None:
            entry.update(flags[index].to_json())
            continue
        entry.update(track_flags(kept[index], entry.get("guards"), entry.get("series"), plan.changes).to_json())
        entry.update({"media": plan.media, "loop_measures": plan.loop_measures, "texture_ratio": plan.texture,
                      "texture_frame": plan.middle})
        files.update(plan.files)
    cost = {"tracks_with_media": len(plans), "media_tracks_limit": media_tracks, "pictures_decoded": decoded,
            "files": len(files), "bytes": sum(len(data) for data in files.values()),
            "seconds": round(time.perf_counter() - started, 2), **({"error": error} if error else {})}
    return files, cost
