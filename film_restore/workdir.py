"""The work folder: every stage's result stored under a key of everything it depends on.

    WORKDIR/<film stem>-<input hash>/
        scan-<key>.json                      frame timestamps, shots, chunks
        analysis/<chunk>-<key>.json          the chunk's tracks and identities
        chunks/<chunk>-<key>.video (+ .json) the chunk's restored video (NUT or QuickTime) and totals

A key hashes the input's content, the settings, the face models, the cast and (for
restored chunks) the DMDNet fingerprint and dictionaries, so `--resume` reuses exactly
the results that the same run would compute again. Files appear only when complete
(written beside, then renamed), so a killed run leaves nothing half-written in use.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from dmdnet.files import file_sha256, write_json
from film_restore.records import Chunk, Face, Shot, Track, TrackedFace


def digest(*parts) -> str:
    """Short stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_hash(path: Path, cache_folder: Path) -> str:
    """sha256 of the input's content, remembered by (path, size, mtime) so a film is read once."""
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

    def __init__(self, root: Path, film: Path, content_hash: str):
        self.folder = root / f"{film.stem}-{content_hash[:16]}"

    def start(self, resume: bool) -> None:
        """A fresh folder, or (resume) the existing one without leftovers of a killed run."""
        if not resume and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.rglob("*.tmp"):
            leftover.unlink()

    def scan(self, key: str) -> Path:
        return self.folder / f"scan-{key}.json"

    def analysis(self, chunk: Chunk, key: str) -> Path:
        return self.folder / "analysis" / f"{chunk.index:05d}-{key}.json"

    def chunk_video(self, chunk: Chunk, key: str) -> Path:
        return self.folder / "chunks" / f"{chunk.index:05d}-{key}.video"

    def remove_videos(self) -> None:
        """Drops the restored chunk videos once the output holds them (they are as large as the film)."""
        for video in (self.folder / "chunks").glob("*.video"):
            video.unlink()


def shots_to_json(shots) -> list[dict]:
    return [{"index": s.index, "first_frame": s.first_frame, "last_frame": s.last_frame} for s in shots]


def shots_from_json(items) -> list[Shot]:
    return [Shot(item["index"], item["first_frame"], item["last_frame"]) for item in items]


def chunks_to_json(chunks) -> list[dict]:
    return [{"index": c.index, "shots": [s.index for s in c.shots]} for c in chunks]


def chunks_from_json(items, shots: list[Shot]) -> list[Chunk]:
    return [Chunk(item["index"], tuple(shots[i] for i in item["shots"])) for item in items]


def _face_to_json(tracked: TrackedFace) -> dict:
    face = tracked.face
    return {
        "frame": tracked.frame,
        "interpolated": tracked.interpolated,
        "box": list(face.box),
        "score": face.score,
        "keypoints": face.keypoints.tolist(),
        "landmarks": np.round(face.landmarks, 3).tolist(),
        "embedding": face.embedding.tolist(),
    }


def _face_from_json(item: dict) -> TrackedFace:
    face = Face(item["box"], item["score"], item["keypoints"], item["landmarks"], item["embedding"])
    return TrackedFace(item["frame"], face, item["interpolated"])


def tracks_to_json(tracks: list[Track]) -> list[dict]:
    return [
        {"shot": t.shot, "actor": t.actor, "similarity": t.similarity, "faces": [_face_to_json(f) for f in t.faces]}
        for t in tracks
    ]


def tracks_from_json(items) -> list[Track]:
    return [
        Track(item["shot"], tuple(_face_from_json(f) for f in item["faces"]), item["actor"], item["similarity"])
        for item in items
    ]
