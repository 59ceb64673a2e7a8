"""The cast file: actors and their reference photos, validated with the line of every problem.

    actors:
      - name: Audrey Hepburn
        references: [refs/hepburn/*.jpg]   # globs relative to the cast file
        strength: 0.6                      # optional: 0..1 or auto, wins over the run's --strength
    match_threshold: 0.45                  # optional, cosine similarity

Relative references never leave the cast file's folder (symlinks included); absolute ones
are taken as written. Every pattern must match at least one file.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import yaml

from film_restore.settings import parse_strength

DEFAULT_MATCH_THRESHOLD = 0.45


class CastError(ValueError):
    """A cast file that cannot be used, with its file, line and field."""


@dataclass(frozen=True)
class Actor:
    name: str
    references: tuple[Path, ...]
    strength: float | str | None = None  # None: the run's --strength


@dataclass(frozen=True)
class Cast:
    path: Path
    actors: tuple[Actor, ...]
    match_threshold: float = DEFAULT_MATCH_THRESHOLD

    @property
    def strengths(self) -> dict[str, float | str]:
        """actor -> the strength the cast file gives them (actors without one are left out)."""
        return {actor.name: actor.strength for actor in self.actors if actor.strength is not None}

    @classmethod
    def load(cls, path) -> "Cast":
        path = Path(path)
        if not path.is_file():
            raise CastError(f"no cast file at {path}: write one listing actors and their reference photos")
        return _CastReader(path).cast(compose_yaml(path, CastError))


def compose_yaml(path: Path, error: type[Exception]) -> yaml.Node | None:
    """The file's composed YAML nodes (which know their lines); `error` with the reason if unreadable."""
    try:
        return yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not valid YAML ({' '.join(str(problem).split())})") from problem


class NodeReader:
    """Walks composed YAML nodes, so each error names its file, line and field: `FILE:LINE: FIELD: PROBLEM`."""

    error: type[Exception] = ValueError

    def __init__(self, path: Path):
        self.path = path
        # Relative paths in the file are relative to the file's own folder.
        self.folder = path.resolve().parent

    def fail(self, node, field: str, problem: str):
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        raise self.error(f"{self.path}{line}: {field}: {problem}")

    def scalar(self, node, field: str, expected: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or not node.value.strip():
            self.fail(node, field, f"expected {expected}")
        return node.value.strip()

    def mapping(self, node, field: str, allowed: set[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, field, f"expected a mapping with {', '.join(sorted(allowed))}")
        entries = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name not in allowed:
                self.fail(key, f"{field}.{name}" if field else str(name), f"unknown field (allowed: {', '.join(sorted(allowed))})")
            if name in entries:
                self.fail(key, f"{field}.{name}" if field else name, "given twice")
            entries[name] = (key, value)
        return entries


class _CastReader(NodeReader):
    error = CastError

    def cast(self, root) -> Cast:
        if root is None:
            self.fail(None, "actors", "the file is empty; list the actors and their reference photos")
        entries = self.mapping(root, "", {"actors", "match_threshold"})
        if "actors" not in entries:
            self.fail(root, "actors", "missing: list the actors and their reference photos")
        key, actors_node = entries["actors"]
        if not isinstance(actors_node, yaml.SequenceNode) or not actors_node.value:
            self.fail(actors_node, "actors", "expected a non-empty list of actors")
        actors = [self.actor(node, f"actors[{index}]") for index, node in enumerate(actors_node.value)]
        seen = {}
        for node, actor in zip(actors_node.value, actors):
            if actor.name in seen:
                self.fail(node, "actors", f"{actor.name!r} is listed twice")
            seen[actor.name] = node
        threshold = DEFAULT_MATCH_THRESHOLD
        if "match_threshold" in entries:
            threshold = self.threshold(entries["match_threshold"][1])
        return Cast(self.path, tuple(actors), threshold)

    def actor(self, node, field: str) -> Actor:
        entries = self.mapping(node, field, {"name", "references", "strength"})
        for required in ("name", "references"):
            if required not in entries:
                self.fail(node, f"{field}.{required}", "missing")
        name = self.scalar(entries["name"][1], f"{field}.name", "the actor's name")
        references_node = entries["references"][1]
        patterns = references_node.value if isinstance(references_node, yaml.SequenceNode) else [references_node]
        if not patterns or not all(isinstance(p, yaml.ScalarNode) and p.value.strip() for p in patterns):
            self.fail(references_node, f"{field}.references", "expected a glob or a list of globs of image files")
        files = []
        for pattern in patterns:
            files += self.references(pattern, f"{field}.references")
        strength = None
        if "strength" in entries:
            strength_node = entries["strength"][1]
            value = self.scalar(strength_node, f"{field}.strength", "a number from 0 to 1 or auto")
            try:
                strength = parse_strength(value)
            except ValueError as problem:
                self.fail(strength_node, f"{field}.strength", str(problem))
        return Actor(name, tuple(dict.fromkeys(files)), strength)

    def references(self, node, field: str) -> list[Path]:
        pattern = Path(node.value.strip()).expanduser()
        absolute = pattern.is_absolute()
        full = pattern if absolute else self.folder / pattern
        matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not matches:
            self.fail(node, field, f"{node.value!r} matches no file (relative to {self.folder})")
        if not absolute:
            for match in matches:
                if not match.resolve().is_relative_to(self.folder):
                    self.fail(node, field, f"{match} is outside the cast file's folder {self.folder}: give an absolute path")
        return matches

    def threshold(self, node) -> float:
        try:
            value = float(node.value) if isinstance(node, yaml.ScalarNode) else None
        except ValueError:
            value = None
        if value is None or not 0 < value <= 1:
            self.fail(node, "match_threshold", f"expected a cosine similarity in (0, 1], got {getattr(node, 'value', node)!r}")
        return value
