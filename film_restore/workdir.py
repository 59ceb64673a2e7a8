"""The work folder: every stage's result stored under its key (film_restore.keys), as JSON.

    WORKDIR/<film name>.log                  failed attempts and failed runs, with their tracebacks
    WORKDIR/<film stem>-<input hash>/
        scan-<key>.json                      frame timestamps, shots, chunks
        analysis/<chunk>-<key>.json          the chunk's tracks and identities
        chunks/<chunk>-<key>.video (+ .json) the chunk's restored video (NUT or QuickTime) and totals; the output's
                                             chunks stay after the join (a rerun with edits joins the untouched ones
                                             again), unless --drop-chunks

This is the only place records become JSON; between stages they travel as they are. Each chunk's
result is keyed by the chunk and everything it depends on, so writing it again gives the same
bytes; files appear only when complete (written beside, then renamed), so a killed run leaves
nothing half-written in use. A result damaged afterwards (a chunk video cut short, a file that
no longer parses: storage that lost writes in a crash) is found when loaded, removed and redone.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Iterable

from dmdnet.files import file_sha256, write_json
from film_restore.records import Chunk, ChunkResult, Face, Scan, Shot, Track, TrackedFace


class DamagedResult(Exception):
    """A stored result that can no longer be used (its files are removed, so the chunk is done again)."""


def failure_log(workroot: Path, film: Path) -> Path:
    """The log of a film's failures, in the work folder (kept across runs; the film's own folder needs its hash)."""
    return workroot / f"{film.name}.log"


def content_hash(path: Path, cache_folder: Path) -> str:
    """sha256 of a file's content, remembered by (path, size, mtime) so a film is read once."""
    stat = path.stat()
    cache_file = cache_folder / "input-hashes.json"
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = {}
    if cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except ValueError:
            cache = {}
    if identity not in cache:
        cache[identity] = file_sha256(path)
        cache_folder.mkdir(parents=True, exist_ok=True)
        write_json(cache_file, cache)
    return cache[identity]


class WorkFolder:
    """The folder of one film's results."""

    def __init__(self, root: Path, film: Path, input_sha256: str):
        self.folder = root / f"{film.stem}-{input_sha256[:16]}"

    def start(self, resume: bool) -> None:
        """A fresh folder, or (resume) the existing one without leftovers of a killed run."""
        if not resume and self.folder.exists():
            shutil.rmtree(self.folder)
        for folder in (self.folder / "analysis", self.folder / "chunks"):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.rglob("*.tmp"):
            leftover.unlink()

    def has_results(self) -> bool:
        return self.folder.is_dir() and any(self.folder.rglob("*.json"))

    def load_scan(self, key: str) -> Scan | None:
        path = self._scan(key)
        if not path.is_file():
            return None
        stored = json.loads(path.read_text())
        shots = tuple(Shot(**item) for item in stored["shots"])
        chunks = tuple(Chunk(item["index"], tuple(shots[i] for i in item["shots"])) for item in stored["chunks"])
        return Scan(tuple(stored["frame_pts"]), shots, chunks)

    def save_scan(self, key: str, scan: Scan) -> None:
        write_json(self._scan(key), {
            "frame_pts": list(scan.frame_pts),
            "shots": [dataclasses.asdict(shot) for shot in scan.shots],
            "chunks": [{"index": c.index, "shots": [s.index for s in c.shots]} for c in scan.chunks],
        })

    def load_tracks(self, chunk: Chunk, key: str) -> list[Track] | None:
        """The chunk's stored tracks, None if not stored; DamagedResult if they no longer read."""
        path = self._analysis(chunk, key)
        if not path.is_file():
            return None
        try:
            return read_tracks(path)
        except (ValueError, KeyError, TypeError) as error:  # JSON cut short or altered
            path.unlink(missing_ok=True)
            raise DamagedResult(f"the analysis of chunk {chunk.index} ({path.name}) is damaged "
                                f"({' '.join(str(error).split())[:120]})") from None

    def save_tracks(self, chunk: Chunk, key: str, tracks: list[Track]) -> None:
        write_json(self._analysis(chunk, key), [
            {"shot": t.shot, "actor": t.actor, "similarity": t.similarity, "faces": [_tracked_face_json(f) for f in t.faces]}
            for t in tracks
        ])

    def chunk_video(self, chunk: Chunk, key: str) -> Path:
        return self.folder / "chunks" / f"{chunk.index:05d}-{key}.video"

    def load_chunk_result(self, chunk: Chunk, key: str) -> ChunkResult | None:
        """The totals of a restored chunk, None if it is not done; DamagedResult if its video is not the
        size it was written at (cut short, or gone) or its totals no longer read."""
        video = self.chunk_video(chunk, key)
        totals = video.with_suffix(".json")
        if not totals.is_file():
            return None
        try:
            stored = json.loads(totals.read_text())
            result, size = ChunkResult(**stored["result"]), stored["video_bytes"]
        except (ValueError, KeyError, TypeError) as error:
            problem = f"its totals ({totals.name}) are damaged ({' '.join(str(error).split())[:120]})"
        else:
            actual = video.stat().st_size if video.is_file() else None
            if actual == size:
                return result
            problem = f"its video {video.name} is {'missing' if actual is None else f'{actual} bytes, not {size}'}"
        totals.unlink(missing_ok=True)
        video.unlink(missing_ok=True)
        raise DamagedResult(f"chunk {chunk.index} is damaged: {problem}")

    def save_chunk_result(self, chunk: Chunk, key: str, result: ChunkResult) -> None:
        """The chunk's totals, with the size of its video (written before): the pair marks the chunk done."""
        video = self.chunk_video(chunk, key)
        write_json(video.with_suffix(".json"), {"result": dataclasses.asdict(result), "video_bytes": video.stat().st_size})

    def remove_chunks(self, keep: Iterable[Path] = ()) -> None:
        """Drops the restored chunks (videos and totals) but those whose videos are kept: once the output holds them,
        the chunks of the output are kept for an edits file's rerun (film_restore.edits), the others dropped."""
        kept = {Path(video) for video in keep}
        for done in (self.folder / "chunks").glob("*.json"):
            if done.with_suffix(".video") not in kept:
                done.unlink()  # first: a totals file without its video would be a damaged chunk
                done.with_suffix(".video").unlink(missing_ok=True)

    def _scan(self, key: str) -> Path:
        return self.folder / f"scan-{key}.json"

    def _analysis(self, chunk: Chunk, key: str) -> Path:
        return self.folder / "analysis" / f"{chunk.index:05d}-{key}.json"


def read_tracks(path: Path) -> list[Track]:
    """The tracks of a chunk's analysis file."""
    return [
        Track(item["shot"], tuple(_tracked_face(f) for f in item["faces"]), item["actor"], item["similarity"])
        for item in json.loads(path.read_text())
    ]


def _tracked_face_json(tracked: TrackedFace) -> dict:
    face = tracked.face
    return {
        "frame": tracked.frame,
        "interpolated": tracked.interpolated,
        "box": list(face.box),
        "score": face.score,
        "keypoints": face.keypoints.tolist(),
        # Exact (float32 -> JSON -> float32 is lossless): a resumed run composes what a fresh one does.
        "landmarks": face.landmarks.tolist(),
        "embedding": face.embedding.tolist(),
    }


def _tracked_face(item: dict) -> TrackedFace:
    face = Face(item["box"], item["score"], item["keypoints"], item["landmarks"], item["embedding"])
    return TrackedFace(item["frame"], face, item["interpolated"])
