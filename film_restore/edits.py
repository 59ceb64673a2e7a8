"""Corrections by file: an edits file read and checked, resolved against the film's tracks, and applied to a
chunk's tracks when it is composed.

    # edits.yaml: entries apply in order; a later one wins for what it sets
    - track: s12t0              # one track, by its id on the review page
      actor: Audrey Hepburn     # restore it as this cast member (dictionary, reference, strength)
    - track: s40t1
      frames: [1200, 1260]      # only its faces on these frames (first and last included)
      actor: none               # leave them as they are (the track is nobody of the cast)
    - tracks_of: Cary Grant     # every track identified as this actor (tracks_of: none: every stranger)
      strength: 0.5             # 0..1 or auto, as --strength
    - track: s7t2
      skip: true                # leave its faces as they are, keeping its identity

`python -m film_restore.run ... --edits edits.yaml --resume` composes again only the chunks whose tracks an
edit changes: each chunk's compose key holds the edits of its tracks (keys.RunKeys.chunk_compose), so the
others keep their keys and their stored videos. Edits apply to the analysis's results (the tracks found
and identified are those of the run; tracks_of selects by the identity the analysis gave): nothing is
analysed again.

A frame range cuts a track: each run of its consecutive faces under the same settings is composed as a
track of its own (the guards, the hold-still and the grain run along each part alone), and faces left as
they are sit in no part. At a boundary the face goes from one treatment to the other from one frame to the
next: put boundaries where the change shows least (a turn of the head, a cut-away).

Mistakes are found before any work: the file's own (unknown key, an actor not in the cast, a strength out
of range, a malformed range or track id) when it is read, before Ray starts; those that need the film (a
track it does not have, a range outside the film or outside the track) once its tracks are known, before
any chunk is composed. Each is one line naming the file, line and key.
"""
from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from film_restore.cast import Cast
from film_restore.cast.castfile import NodeReader, compose_yaml
from film_restore.records import Track
from film_restore.review import numbered_tracks
from film_restore.settings import parse_strength

SELECTORS = ("track", "tracks_of")
SETTINGS = ("actor", "strength", "skip")
KEYS = (*SELECTORS, "frames", *SETTINGS)
# How a track's id is written (review.track_id): s<shot>t<track in the shot>.
TRACK_ID = re.compile(r"s(\d+)t(\d+)")
# A plain (unquoted) scalar that means nobody of the cast.
NOBODY = ("none", "null", "~", "")


class EditsError(ValueError):
    """An edits file that cannot be applied, with its file, line and key."""


@dataclass(frozen=True)
class Entry:
    """One entry: the tracks it selects (by id, or by the actor the analysis gave them: None for strangers), the
    frames it is limited to (None: all), what it sets (actor: a cast member or None; strength; skip), and the
    line of each of its keys (for errors)."""

    track: str | None
    tracks_of: str | None
    frames: tuple[int, int] | None
    changes: dict
    lines: dict

    def selects(self, track_id: str, actor: str | None) -> bool:
        return self.track == track_id if self.track is not None else self.tracks_of == actor

    def touches(self, first: int, last: int) -> bool:
        return self.frames is None or (self.frames[0] <= last and self.frames[1] >= first)

    def covers(self, frame: int) -> bool:
        return self.frames is None or self.frames[0] <= frame <= self.frames[1]

    def to_json(self) -> dict:
        """As the report gives it for an edited track."""
        changes = {name: "none" if name == "actor" and value is None else value for name, value in self.changes.items()}
        return {"line": self.lines["entry"], **({"frames": list(self.frames)} if self.frames else {}), **changes}


@dataclass(frozen=True)
class Segment:
    """What applies to a track's faces on frames first..last: changes, the subset of actor (None: nobody, left as
    it is), strength and skip (true) that differs from the run's own."""

    first: int
    last: int
    changes: dict


@dataclass(frozen=True)
class ChunkEdits:
    """The edits of one chunk's tracks: track number in the chunk -> its segments, in frame order."""

    tracks: dict

    def key_parts(self) -> list:
        """What the chunk's compose key hashes of them (keys.RunKeys.chunk_compose)."""
        return [[number, [[s.first, s.last, s.changes] for s in self.tracks[number]]] for number in sorted(self.tracks)]


@dataclass
class ResolvedEdits:
    """An edits file resolved against a film's tracks: the chunks they change (chunk index -> ChunkEdits) and, per
    edited track ((chunk, number in the chunk)), the report's fields."""

    path: Path
    by_chunk: dict = field(default_factory=dict)
    report_fields: dict = field(default_factory=dict)

    def actor_of(self, chunk: int, number: int, identified: str | None) -> str | None:
        """The actor a track is restored as over its whole length (the report's and the page's), else the one found."""
        return self.report_fields.get((chunk, number), {}).get("actor", identified)


@dataclass
class Edits:
    """An edits file: its entries, in the order they apply."""

    path: Path
    entries: tuple[Entry, ...]

    @classmethod
    def load(cls, path, cast: Cast) -> "Edits":
        """The edits file at path, checked against the cast; EditsError naming the line of the first mistake."""
        path = Path(path)
        if not path.is_file():
            raise EditsError(f"no edits file at {path}: write one (README.md, 'Corrections by file') or leave out --edits")
        return cls(path, _EditsReader(path, cast).entries(compose_yaml(path, EditsError)))

    def resolve(self, tracks_by_chunk: dict[int, list], pictures: int, shots: int, unit: str = "frame") -> ResolvedEdits:
        """The edits against the film's tracks (chunk index -> its tracks or their outlines, in the analysis's order):
        EditsError for a track the film does not have, or a range outside the film or outside its track.
        pictures: the film's frames (fields where tracks count fields: unit "field"); shots: its number of shots."""
        numbered = numbered_tracks(tracks_by_chunk)
        by_id = {track_id: (chunk, number, track) for track_id, chunk, number, track in numbered}
        for entry in self.entries:
            if entry.frames is not None and entry.frames[1] >= pictures:
                _fail(self.path, entry, "frames", f"{list(entry.frames)} is outside the film ({unit}s 0-{pictures - 1})")
            if entry.track is None:
                continue
            if entry.track not in by_id:
                _fail(self.path, entry, "track", f"no track {entry.track} in this film ({_known(entry.track, numbered, shots)})")
            _, _, track = by_id[entry.track]
            if not entry.touches(track.first_frame, track.last_frame):
                _fail(self.path, entry, "frames", f"{list(entry.frames)} is outside track {entry.track} "
                                                  f"({unit}s {track.first_frame}-{track.last_frame})")
        resolved = ResolvedEdits(self.path)
        for track_id, chunk, number, track in numbered:
            entries = [e for e in self.entries if e.selects(track_id, track.actor) and e.touches(track.first_frame, track.last_frame)]
            segments = _segments(entries, track.first_frame, track.last_frame, track.actor)
            if not segments:
                continue
            resolved.by_chunk.setdefault(chunk, ChunkEdits({})).tracks[number] = segments
            fields = {"edits": [entry.to_json() for entry in entries]}
            actor = _whole_track_actor(segments, track.first_frame, track.last_frame)
            if actor is not _NO_ACTOR:
                fields.update(actor=actor, identified_as=track.actor)
            resolved.report_fields[chunk, number] = fields
        return resolved

    def unused(self, tracks_by_chunk: dict[int, list]) -> list[Entry]:
        """The entries that select no track (tracks_of an actor the analysis found nowhere)."""
        numbered = numbered_tracks(tracks_by_chunk)
        return [entry for entry in self.entries
                if not any(entry.selects(track_id, track.actor) and entry.touches(track.first_frame, track.last_frame)
                           for track_id, _, _, track in numbered)]


def _fail(path: Path, entry: Entry, key: str, problem: str):
    raise EditsError(f"{path}:{entry.lines.get(key, entry.lines['entry'])}: {key}: {problem}")


def _known(track_id: str, numbered: list, shots: int) -> str:
    """What the film has instead of a track id it does not have, for the error."""
    shot = int(TRACK_ID.fullmatch(track_id).group(1))
    if shot >= shots:
        return f"its shots are 0-{shots - 1}; the review page gives each track's id"
    ids = [other for other, _, _, track in numbered if track.shot == shot]
    return f"shot {shot} has {', '.join(ids)}" if ids else f"shot {shot} has no face track"


def _segments(entries: list[Entry], first: int, last: int, identified: str | None) -> tuple[Segment, ...]:
    """The frame ranges of a track (first..last) over which the entries, applied in order, change something."""
    cuts = {first, last + 1}
    for entry in entries:
        if entry.frames is not None:
            cuts |= {max(first, entry.frames[0]), min(last, entry.frames[1]) + 1}
    segments: list[Segment] = []
    for start, stop in itertools.pairwise(sorted(cuts)):
        changes = {}
        for entry in entries:
            if entry.covers(start):
                changes.update(entry.changes)
        changes = _effective(changes, identified)
        if not changes:
            continue
        if segments and segments[-1].changes == changes and segments[-1].last == start - 1:
            segments[-1] = Segment(segments[-1].first, stop - 1, changes)
        else:
            segments.append(Segment(start, stop - 1, changes))
    return tuple(segments)


_NO_ACTOR = object()


def _whole_track_actor(segments: tuple[Segment, ...], first: int, last: int):
    """The actor (None: nobody) the segments give the whole track first..last, else _NO_ACTOR."""
    whole = segments[0].first == first and segments[-1].last == last and \
        all(before.last + 1 == after.first for before, after in itertools.pairwise(segments))
    actors = [segment.changes.get("actor", _NO_ACTOR) for segment in segments]
    return actors[0] if whole and all(actor == actors[0] for actor in actors) else _NO_ACTOR


def _effective(changes: dict, identified: str | None) -> dict:
    """The changes that differ from the run's own, in one form for one effect (so the same effect, the same key)."""
    changes = dict(changes)
    if changes.get("skip") is False:
        del changes["skip"]
    if changes.get("actor") is not None and changes["actor"] == identified:
        del changes["actor"]
    if changes.get("skip") or ("actor" in changes and changes["actor"] is None):
        changes.pop("strength", None)  # the faces are left as they are
    return changes


@dataclass
class EditedTracks:
    """A chunk's tracks as composed: plan track number -> its faces (actor as edited), its strength, and the number
    of the chunk's track it is part of; faces_left: faces the edits leave as they are."""

    tracks: dict = field(default_factory=dict)
    strengths: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    faces_left: int = 0


def edited_tracks(tracks: list[Track], edits: ChunkEdits | None, strength_of: Callable) -> EditedTracks:
    """The chunk's tracks with its edits applied. strength_of(actor): the run's strength for an actor's faces. A track
    the edits do not touch keeps its number and its faces whole; one cut by a range gives a part per run of faces
    under the same settings (the first keeps its number, the others are numbered after the chunk's tracks)."""
    edited = EditedTracks()
    extra = itertools.count(len(tracks))
    for number, track in enumerate(tracks):
        segments = edits.tracks.get(number, ()) if edits else ()
        starts = [segment.first for segment in segments]
        runs: list[tuple[tuple | None, list]] = []
        for tracked in track.faces:
            at = bisect.bisect_right(starts, tracked.frame) - 1
            changes = segments[at].changes if at >= 0 and tracked.frame <= segments[at].last else {}
            actor = changes.get("actor", track.actor)
            left = changes.get("skip", False) or ("actor" in changes and actor is None)
            setting = None if left else (actor, changes.get("strength", strength_of(actor)))
            if runs and runs[-1][0] == setting:
                runs[-1][1].append(tracked)
            else:
                runs.append((setting, [tracked]))
        parts = itertools.chain([number], extra)
        for setting, faces in runs:
            if setting is None:
                edited.faces_left += len(faces)
                continue
            part, (actor, strength) = next(parts), setting
            edited.tracks[part] = Track(track.shot, tuple(faces), actor, track.similarity)
            edited.strengths[part], edited.sources[part] = strength, number
    return edited


class _EditsReader(NodeReader):
    error = EditsError

    def __init__(self, path: Path, cast: Cast):
        super().__init__(path)
        self.cast = cast
        self.actors = [actor.name for actor in cast.actors]

    def entries(self, root) -> tuple[Entry, ...]:
        if root is None:
            return ()
        if not isinstance(root, yaml.SequenceNode):
            self.fail(root, "edits", "expected a list of entries (- track: s12t0 ..., as the review page gives them)")
        return tuple(self.entry(node) for node in root.value)

    def entry(self, node) -> Entry:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, "entry", "expected track: ID (or tracks_of: NAME), optionally frames: [first, last], "
                                     "and actor, strength or skip")
        given = self.mapping(node, "", set(KEYS))
        lines = {"entry": node.start_mark.line + 1, **{name: key.start_mark.line + 1 for name, (key, _) in given.items()}}
        selectors = [name for name in SELECTORS if name in given]
        if len(selectors) != 1:
            self.fail(given[selectors[1]][0] if selectors else node, selectors[1] if selectors else "track",
                      "name one track (track: s12t0, its id on the review page) or one actor's tracks (tracks_of: NAME)")
        track = tracks_of = None
        if "track" in given:
            track = self.scalar(given["track"][1], "track", "a track id such as s12t0 (the review page gives each track's)")
            if not TRACK_ID.fullmatch(track):
                self.fail(given["track"][1], "track", f"{track!r} is not a track id such as s12t0 (the review page gives each track's)")
        else:
            tracks_of = self.actor(given["tracks_of"][1], "tracks_of")
        changes = {}
        if "actor" in given:
            changes["actor"] = self.actor(given["actor"][1], "actor")
        if "strength" in given:
            value = self.scalar(given["strength"][1], "strength", "a number from 0 to 1 or auto")
            try:
                changes["strength"] = parse_strength(value)
            except ValueError:
                self.fail(given["strength"][1], "strength", f"expected a number from 0 to 1 or auto, got {value!r}")
        if "skip" in given:
            value = given["skip"][1]
            if not isinstance(value, yaml.ScalarNode) or value.tag != "tag:yaml.org,2002:bool":
                self.fail(value, "skip", f"expected true or false, got {getattr(value, 'value', value)!r}")
            changes["skip"] = value.value.lower() in ("true", "yes", "on", "y")
        if not changes:
            self.fail(node, "entry", "sets nothing: give actor (a cast member, or none), strength (0..1) or skip: true")
        leaves = changes.get("skip") or ("actor" in changes and changes["actor"] is None)
        if leaves and "strength" in changes:
            self.fail(given["strength"][0], "strength", "has no effect: the entry leaves the faces as they are "
                                                        "(actor: none or skip: true)")
        frames = self.frames(given["frames"][1]) if "frames" in given else None
        return Entry(track, tracks_of, frames, changes, lines)

    def actor(self, node, key: str) -> str | None:
        """A cast member's name, or None for nobody (plain none or null; a quoted "none" is a name)."""
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, key, "expected an actor of the cast, or none")
        if node.style is None and node.value.strip().lower() in NOBODY:
            return None
        name = node.value.strip()
        if name not in self.actors:
            self.fail(node, key, f"{name!r} is not in the cast {self.cast.path.name} (its actors: {', '.join(self.actors)}); "
                                 "none leaves the faces as they are")
        return name

    def frames(self, node) -> tuple[int, int]:
        expected = "expected [first, last]: two frame numbers from 0 (as the review page gives them), first <= last"
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 2 or \
                not all(isinstance(n, yaml.ScalarNode) and n.value.strip().isdigit() for n in node.value):
            self.fail(node, "frames", expected)
        first, last = (int(n.value) for n in node.value)
        if first > last:
            self.fail(node, "frames", f"{expected}, got [{first}, {last}]")
        return first, last
