"""The keys a run's results are stored under, built in one place.

A key hashes everything a result depends on: `--resume` reuses exactly the results the same
run would compute again, and the archive jobs (jobs/nightly.py) recognise an output restored
from the same input with the same settings and models by its compose key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from dmdnet.files import file_sha256
from film_restore.settings import DETECT_EVERY
from film_restore.workdir import content_hash

# Bumped when a stage's results would change for the same inputs and settings.
# analysis 2: an interlaced film is tracked field by field; 3: faces followed between detections.
# compose 5: the face's last steps rebuilt (film_restore.finish); 6: track fusion, strengths smooth along a track.
SCAN_VERSION, ANALYSIS_VERSION, COMPOSE_VERSION = 1, 3, 6


def digest(*parts) -> str:
    """Short stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cast_parts(cast) -> dict:
    """What identities and dictionaries depend on in a cast: its threshold and each actor's reference files."""
    return {
        "match_threshold": cast.match_threshold,
        "actors": [[actor.name, [file_sha256(path) for path in actor.references]] for actor in cast.actors],
    }


@dataclass(frozen=True)
class RunKeys:
    """The keys of one run's stages; `parts` names everything they hash (to say what changed)."""

    parts: dict

    @property
    def scan(self) -> str:
        return digest(self.parts["versions"][0], self.parts["input_sha256"], self.parts["chunk_frames"])

    @property
    def analysis(self) -> str:
        return digest(self.scan, self.parts["versions"][1], self.parts["detector_size"], self.parts["detect_every"],
                      self.parts["face_models"], self.parts["cast"])

    @property
    def compose(self) -> str:
        """The key of the restored chunks, and so of the output, without edits."""
        return digest(self.analysis, self.parts["versions"][2], self.parts["checkpoint_sha256"],
                      self.parts["compose_settings"])

    def chunk_compose(self, edits=None) -> str:
        """A restored chunk's key: the run's, and the edits of its tracks where it has any (edits.ChunkEdits), so that
        an edits file changes the keys of the chunks it touches only."""
        return self.compose if not edits else digest(self.compose, edits.key_parts())

    def output(self, chunk_edits: dict) -> str:
        """The output's key: the run's, and every chunk's edits (chunk index -> edits.ChunkEdits) where there are any."""
        return self.compose if not chunk_edits else digest(self.compose, [[index, chunk_edits[index].key_parts()]
                                                                         for index in sorted(chunk_edits)])


def job_keys(job, face_models: str, cast) -> RunKeys:
    """The keys of a job's results (a film_restore.pipeline.Job whose checkpoint is resolved; None in a
    dry run), with the face models' pack_id and the loaded Cast: the pipeline's and the archive jobs'."""
    return RunKeys({
        "input_sha256": content_hash(job.input, job.workroot),
        "chunk_frames": job.chunk_frames,
        "detector_size": job.detector_size,
        "detect_every": DETECT_EVERY,
        "face_models": face_models,
        "cast": cast_parts(cast),
        "checkpoint_sha256": job.checkpoint and content_hash(job.checkpoint, job.workroot),
        # The engine and precision change the restored pixels (within their tolerance of float32 torch).
        "compose_settings": {"codec": job.codec, "min_face": job.min_face, "grain": job.grain, "fusion": job.fusion, "strength": job.strength,
                             "actor_strengths": cast.strengths, "engine": job.engine, "precision": job.precision},
        "versions": [SCAN_VERSION, ANALYSIS_VERSION, COMPOSE_VERSION],
    })
