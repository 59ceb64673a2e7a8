"""archive.yaml: the films of a nightly run, validated with the line and field of every problem.

    defaults:                        # optional; a film's own fields win
      checkpoint: /mnt/archive/models/DMDNet.pth   # default: as the run's (environment, else the cache)
      models: /mnt/archive/models/buffalo_l        # default: as the run's (environment, else the cache)
      workdir: /mnt/archive/work      # one work folder for all films (each film has its own inside)
      codec: auto                     # auto | x264 | x265 | prores | ffv1
      engine: torch                   # what runs DMDNet: torch | onnxruntime | tensorrt | auto (GPU nodes: auto)
      precision: float32              # float32 | bfloat16 | float16 | auto
      chunk_frames: 250
      resume: true                    # reuse an interrupted run's finished chunks
      attempts: 3                     # nights in a row a failing film is tried (then: until it changes, or --force)
    films:
      - input: films/casablanca.mkv   # required
        cast: casts/casablanca.yaml   # required (here or in defaults)
        output: restored/casablanca.mkv   # default INPUT_STEM.restored.EXT beside the input
        codec: ffv1

Relative paths are relative to the archive file's folder and are made absolute, so that a job
on any node of the cluster reads and writes the same files (the storage must be mounted at
the same path on every node). Missing files are not errors here: they fail their own film
with the reason, the other films still run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from dmdnet.engines import ENGINES, PRECISIONS
from film_restore import settings
from film_restore.cast.castfile import NodeReader, compose_yaml
from film_restore.video import CODECS

SETTINGS = ("cast", "checkpoint", "models", "workdir", "codec", "chunk_frames", "resume", "engine", "precision",
            "attempts")
FILM_FIELDS = ("input", "output", *SETTINGS)


class ArchiveError(ValueError):
    """An archive file that cannot be used, with its file, line and field."""


@dataclass(frozen=True)
class Film:
    """One film of the archive with every setting resolved."""

    index: int
    line: int
    input: Path
    cast: Path
    output: Path
    checkpoint: Path | None = None
    models: Path | None = None
    workdir: Path | None = None
    codec: str = settings.CODEC
    chunk_frames: int = settings.CHUNK_FRAMES
    resume: bool = True
    attempts: int = settings.NIGHTLY_ATTEMPTS
    engine: str = settings.ENGINE
    precision: str = settings.PRECISION

    @property
    def name(self) -> str:
        return self.input.name

    def job(self):
        """The pipeline's Job for this film (film_restore.pipeline.Job)."""
        from film_restore.pipeline import Job

        return Job(input=self.input, cast=self.cast, output=self.output, checkpoint=self.checkpoint, models=self.models,
                   workdir=self.workdir, resume=self.resume, codec=self.codec, chunk_frames=self.chunk_frames,
                   engine=self.engine, precision=self.precision)

    @property
    def workroot(self) -> Path:
        """The work folder root the run uses (the pipeline's default when none is given)."""
        return self.job().workroot

    @property
    def report(self) -> Path:
        """The report the pipeline writes."""
        return self.job().report_path


@dataclass(frozen=True)
class Archive:
    path: Path
    films: tuple[Film, ...]


def load(path) -> Archive:
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"no archive file at {path}: write one listing films (input, cast, output)")
    return _ArchiveReader(path).archive(compose_yaml(path, ArchiveError))


class _ArchiveReader(NodeReader):
    error = ArchiveError

    def archive(self, root) -> Archive:
        if root is None:
            self.fail(None, "films", "the file is empty; list the films to restore")
        entries = self.mapping(root, "", {"defaults", "films"})
        defaults = {}
        if "defaults" in entries:
            defaults = self.settings(entries["defaults"][1], "defaults", set(SETTINGS))
        if "films" not in entries:
            self.fail(root, "films", "missing: list the films to restore")
        films_node = entries["films"][1]
        if not isinstance(films_node, yaml.SequenceNode) or not films_node.value:
            self.fail(films_node, "films", "expected a non-empty list of films")
        films, outputs = [], {}
        for index, node in enumerate(films_node.value):
            film = self.film(node, index, defaults)
            if film.output in outputs:
                self.fail(node, f"films[{index}].output", f"{film.output} is also the output of films[{outputs[film.output]}]")
            outputs[film.output] = index
            films.append(film)
        return Archive(self.path, tuple(films))

    def film(self, node, index: int, defaults: dict) -> Film:
        field = f"films[{index}]"
        values = {**defaults, **self.settings(node, field, set(FILM_FIELDS))}
        for required in ("input", "cast"):
            if required not in values:
                self.fail(node, f"{field}.{required}", "missing" + (" (give it here or in defaults)" if required == "cast" else ""))
        film_input = values["input"]
        if "output" not in values:
            values["output"] = settings.default_output(film_input)
        if values["output"] == film_input:
            self.fail(node, f"{field}.output", f"{film_input} would overwrite the input: choose another output")
        return Film(index=index, line=node.start_mark.line + 1, **values)

    def settings(self, node, field: str, allowed: set[str]) -> dict:
        values = {}
        for name, (key, value) in self.mapping(node, field, allowed).items():
            where = f"{field}.{name}"
            if name in ("input", "output", "cast", "checkpoint", "models", "workdir"):
                values[name] = self.path_value(value, where)
            elif name == "codec":
                values[name] = self.choice(value, where, CODECS)
            elif name == "engine":
                values[name] = self.choice(value, where, ENGINES)
            elif name == "precision":
                values[name] = self.choice(value, where, ("auto", *PRECISIONS))
            elif name in ("chunk_frames", "attempts"):
                values[name] = self.positive_int(value, where)
            elif name == "resume":
                values[name] = self.boolean(value, where)
        return values

    def path_value(self, node, field: str) -> Path:
        text = self.scalar(node, field, "a path")
        if "://" in text:
            self.fail(node, field, f"{text!r} is a URI: give a path on storage every node mounts at the same place")
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.folder / path

    def choice(self, node, field: str, choices) -> str:
        text = self.scalar(node, field, f"one of {', '.join(choices)}")
        if text not in choices:
            self.fail(node, field, f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    def positive_int(self, node, field: str) -> int:
        text = self.scalar(node, field, "a positive whole number")
        if not text.isdigit() or int(text) < 1:
            self.fail(node, field, f"expected a positive whole number, got {text!r}")
        return int(text)

    def boolean(self, node, field: str) -> bool:
        text = self.scalar(node, field, "true or false").lower()
        if text not in ("true", "false", "yes", "no"):
            self.fail(node, field, f"expected true or false, got {node.value!r}")
        return text in ("true", "yes")
