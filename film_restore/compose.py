"""The compose stage: a chunk's faces restored, guarded along their tracks, pasted back into the
frames in their native pixel format with the film's texture, and the chunk encoded. The work on
the faces is a chain of named steps over windows of frames (film_restore.finish.steps)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from film_restore.edits import ChunkEdits, edited_tracks
from film_restore.finish import steps
from film_restore.finish.device import Finish
from film_restore.finish.guards import summarise
from film_restore.finish.window import Window
from film_restore.interlace import FieldWeaver, field_frames, restored_field_order
from film_restore.records import Chunk, ChunkResult, Frame, Track
from film_restore.settings import FUSION, GRAIN, MIN_FACE, STRENGTH, parse_fusion, parse_grain, parse_strength
from film_restore.video import ChunkWriter, VideoInfo, read_frames

# Frames whose faces are sent to the restorers together: faces batch across frames.
COMPOSE_WINDOW = 8
# Per-face series kept for the report's plots are rounded to this many decimals.
SERIES_DECIMALS = 3


@dataclass(frozen=True)
class ComposeSettings:
    """How a film's chunks are composed. face_size: the side of the aligned faces the model
    restores (its image_size: 512 for the authors' model). Faces whose box is narrower or
    shorter than min_face pixels are left as they are, and counted. grain: "auto" re-creates
    the film's grain on restored faces (finish.grain), "off" does not (the grain is estimated
    either way: the frame's detail kept above the crop's resolution leaves it out). fusion: "on"
    fuses each face's input with its neighbours' along its track (finish.guards). strength:
    the run's, actor_strengths: the cast file's per actor (auto also holds each face to the
    film's own change from frame to frame: finish.hold); references: actor -> identity
    centroid and models_dir: the face models whose recogniser the identity guard uses (None:
    no guards, the restorer's faces are pasted as they are)."""

    codec: str
    face_size: int
    min_face: int = MIN_FACE
    grain: str = GRAIN
    fusion: str = FUSION
    strength: float | str = STRENGTH
    actor_strengths: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)
    models_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "grain", parse_grain(self.grain))
        object.__setattr__(self, "fusion", parse_fusion(self.fusion))
        object.__setattr__(self, "strength", parse_strength(self.strength))
        object.__setattr__(self, "actor_strengths", {actor: parse_strength(value) for actor, value in self.actor_strengths.items()})

    def strength_of(self, actor: str | None) -> float | str:
        """The strength a face of this actor (None: nobody) gets: the cast file's own for the actor, else the run's
        (an edits file's for a track wins over both: film_restore.edits)."""
        return self.actor_strengths.get(actor, self.strength) if actor is not None else self.strength


class Composer:
    """Restores one chunk's faces and encodes the chunk (an interlaced film's field by field: film_restore.interlace).

    restore(crops, boxes, actor) -> float32 restored crops, or a request in flight whose
    result() gives them (on Ray, pipeline.cluster.RemoteRestore): the next window is decoded,
    aligned and sent before the previous window's faces are waited for, so decoding, blending
    and encoding overlap the restorer's work (the output is the same either way). A restorer
    with open_session(plan, settings) finishes the faces beside it, on its device
    (finish.device): this task then only aligns, blends and encodes.

    Faces are restored COMPOSE_WINDOW frames at a time; with guards, a window is written only once
    the faces the guards look ahead to are restored (finish.guards.GUARD_HORIZON faces: up to three
    windows later), and each face is guarded once, as if its whole track were.

    A chunk's edits (film_restore.edits.ChunkEdits) are applied to its tracks first: another actor
    (dictionary, reference, strength), another strength, or faces left as they are (counted).
    """

    def __init__(self, info: VideoInfo, settings: ComposeSettings, restore: Callable):
        self.info = info
        self.settings = settings
        self.restore = restore
        self.cpu_seconds: dict[str, float] = {}  # each step's CPU time in the last chunk (bench.pool_size)

    def __call__(self, chunk: Chunk, tracks: list[Track], frame_pts, output: Path, edits: ChunkEdits | None = None) -> ChunkResult:
        result = ChunkResult(chunk.index, 0, 0)
        order = restored_field_order(self.info)  # interlaced: each field restored as a picture of its own
        with ChunkWriter(output, self.info, self.settings.codec) as encoder:
            writer = encoder if order is None else FieldWeaver(encoder, order)
            frames = read_frames(self.info.path, chunk.first_frame, chunk.last_frame, frame_pts)
            for window in self.windows(frames if order is None else field_frames(frames, order), tracks, result, edits):
                for frame in window.frames:
                    writer.write(window.pictures[frame.index], frame.pts)
            if order is not None:
                writer.close()
                result.combing = writer.combing
        result.frames = encoder.frames_written
        if result.frames != len(chunk.frames):
            raise RuntimeError(f"chunk {chunk.index}: decoded {result.frames} frames, expected {len(chunk.frames)}")
        return result

    def windows(self, frames: Iterable[Frame], tracks: list[Track], result: ChunkResult,
                edits: ChunkEdits | None = None) -> Iterator[Window]:
        """The frames (decoded, or RGBPicture frames held in memory) in windows, each with its pictures
        as restored (window.pictures), in order; the tracks' guard measures go into result.tracks at the end
        (by the number of the chunk's track, the parts of a track an edit cut together)."""
        settings = self.settings
        edited = edited_tracks(tracks, edits, settings.strength_of)
        plan = steps.FacePlan.of(edited.tracks, settings.min_face, edited.strengths)
        result.faces_too_small = plan.too_small
        result.faces_left_by_edits = edited.faces_left
        on_device = hasattr(self.restore, "open_session")  # the faces are finished beside the restorer, on its device
        if on_device:
            finish = Finish(*self.restore.open_session(plan, settings), result)
            finishing, parts = [finish], lambda: finish.parts
        else:
            finishing, guard = steps.finishing(self.restore, plan, settings, result)
            parts = lambda: guard.parts  # noqa: E731
        chain = [steps.Align(plan, settings.face_size, warp=not on_device), *finishing, steps.Blend(result)]
        chain = steps.Chain(chain)
        self.cpu_seconds = chain.cpu_seconds
        for window in _windows(frames):
            yield from chain(window)
        yield from chain.flush()
        by_track = defaultdict(list)  # the chunk's track number -> its guarded parts (an edited track's parts together)
        for number, track_parts in parts().items():
            by_track[edited.sources[number]] += track_parts
        result.tracks = []
        for number, track_parts in sorted(by_track.items()):
            track_parts.sort(key=lambda part: part[0][0])  # by their first frames
            result.tracks.append({"track": number, **summarise([part for _, part in track_parts]), "series": _series(track_parts)})


def _windows(frames) -> Iterator[Window]:
    window = []
    for frame in frames:
        window.append(frame)
        if len(window) == COMPOSE_WINDOW:
            yield Window(window, _shape(window))
            window = []
    if window:
        yield Window(window, _shape(window))


def _shape(frames: list[Frame]) -> tuple[int, int]:
    return frames[0].picture.height, frames[0].picture.width


def _series(parts) -> dict:
    """A track's per-face measures in frame order, small enough for the report: frame, identity in/out, strength."""
    rounded = lambda name: [round(float(value), SERIES_DECIMALS) for _, part in parts for value in getattr(part, name)]  # noqa: E731
    return {"frame": [frame for frames, _ in parts for frame in frames], "identity_in": rounded("identity_in"),
            "identity_out": rounded("identity_out"), "strength": rounded("strength")}
