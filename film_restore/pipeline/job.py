"""One film to restore, as the command line (or an archive job) gives it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from film_restore import settings


@dataclass(frozen=True)
class Job:
    input: Path
    cast: Path
    output: Path
    checkpoint: Path | None
    models: Path | None = None
    workdir: Path | None = None
    resume: bool = False
    codec: str = settings.CODEC
    report: Path | None = None
    dry_run: bool = False
    chunk_frames: int = settings.CHUNK_FRAMES
    detector_size: int = settings.DETECTOR_SIZE
    restore_batch: int = settings.RESTORE_BATCH
    min_face: int = settings.MIN_FACE
    grain: str = settings.GRAIN
    fusion: str = settings.FUSION
    strength: float | str = settings.STRENGTH
    engine: str = settings.ENGINE  # what runs DMDNet (dmdnet.engines): torch, onnxruntime, tensorrt or auto
    precision: str = settings.PRECISION
    address: str | None = None  # a Ray cluster to join (host:port, ray://host:port, auto); else RAY_ADDRESS, else local
    edits: Path | None = None  # an edits file: corrections per track (film_restore.edits)
    drop_chunks: bool = False  # drop the restored chunks after the join, rather than keep them for an edits file's rerun

    @property
    def workroot(self) -> Path:
        return self.workdir or settings.default_workroot(self.output)

    @property
    def report_path(self) -> Path:
        return self.report or settings.default_report(self.output)

    def absolute(self) -> "Job":
        """Every path absolute: tasks on other nodes (and other working directories) get the same file.

        On a cluster the input, cast (and its .store), checkpoint, models, work folder and output
        must be on storage mounted at the same path on every node (see RUNBOOK.md).
        """
        fields = ("input", "cast", "output", "checkpoint", "workdir", "report", "edits")  # models may name a pack: resolved later
        return dataclasses.replace(self, **{f: Path(getattr(self, f)).expanduser().absolute()
                                            for f in fields if getattr(self, f) is not None})
