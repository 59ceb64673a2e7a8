"""The Composer's steps, in order, over windows of frames (finish.window), like a filter graph: a
step is given a window, adds its part to its faces and gives on the windows it is done with
(`Chain` passes them along); the restorers and the guards hold windows back until what they wait
for has come, and give them on in order, the rest at once; `flush` gives what is held at the end.

Align        the faces aligned at the model's size, with the frame around them
WarpCrops    on a GPU node, their crops warped there, beside the restorer
Restore      each window's faces sent to the restorers, one request per actor; the next window is
             sent before the previous one is waited for, so the restorer works meanwhile
Follow       one optical flow per neighbouring pair of a track's faces (finish.flow)
Guard        the guards along each track (finish.guards)
GrainModels  each track's grain, estimated once (finish.grain_model)
Paste        the final faces warped into their frame regions, once (finish.paste)
HoldStill    under strength auto, each track keeps only the share of its restoration that changes
             no more from frame to frame than the film (finish.hold), moving smoothly along the track
AddGrain     fresh grain, as much as each track may take (finish.grain)
Blend        each frame's faces blended into its picture

A step's state (a track's guards, its grain, its share) lives in the step, for one chunk. The
steps from Follow to AddGrain work on numpy arrays or on torch tensors alike (finish.ops): on a
GPU node they run beside the restorer (finish.device), after WarpCrops, and only the face regions
come back.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from film_restore.faces.align import CropWarp, align_face, alignment_transform, place_face
from film_restore.finish import ops
from film_restore.finish.flow import PairFlow, flow_picture, flow_side, flows_in_frame
from film_restore.finish.grain import GrainTile, add_missing_grain, grain_allowed
from film_restore.finish.grain_model import GRAIN_FACES, estimate_track_grain, grain_window
from film_restore.finish.guards import GUARD_HORIZON, GuardedFaces, TrackGuard, embedder_of
from film_restore.finish.hold import steady_share, toward
from film_restore.finish.measures import change_samples
from film_restore.finish.paste import WARP, composite, face_regions
from film_restore.finish.window import FaceKey, Surround, Window, WindowFace, longest_run
from film_restore.records import ChunkResult, Track
from film_restore.settings import AUTO

# A track's change from frame to frame (what the hold-still and the grain's allowance balance)
# is sampled on every CHANGE_STRIDE-th pixel each way: means over a face's samples, as good from a quarter of them.
CHANGE_STRIDE = 2


@dataclass
class FacePlan:
    """Which faces of a chunk's tracks are restored, known before its frames are read: by frame
    (track number, Face, actor), each one's position among its track's restored faces, each
    track's count and strength (AUTO or 0..1: the guards' and the hold-still's); faces narrower
    or shorter than min_face are left as they are, and counted."""

    by_frame: dict = field(default_factory=lambda: defaultdict(list))
    positions: dict = field(default_factory=dict)
    lengths: dict = field(default_factory=dict)
    strengths: dict = field(default_factory=dict)
    too_small: int = 0

    @classmethod
    def of(cls, tracks: list[Track] | dict[int, Track], min_face: int, strengths: dict | None = None) -> "FacePlan":
        """tracks: numbered from 0, or by number (film_restore.edits: a track cut by an edit is several);
        strengths: track number -> its strength (the compose step gives every track's)."""
        plan = cls(strengths=dict(strengths or {}))
        for number, track in (tracks.items() if isinstance(tracks, dict) else enumerate(tracks)):
            plan.lengths[number] = 0
            for tracked in track.faces:
                x1, y1, x2, y2 = tracked.face.box
                if min(x2 - x1, y2 - y1) < min_face:
                    plan.too_small += 1
                    continue
                plan.by_frame[tracked.frame].append((number, tracked.face, track.actor))
                plan.positions[tracked.frame, number] = plan.lengths[number]
                plan.lengths[number] += 1
        return plan


class Step:
    """A step that gives each window on as soon as it is done with it (most do)."""

    def __call__(self, window: Window) -> list[Window]:
        self.work(window)
        return [window]

    def work(self, window: Window) -> None:
        raise NotImplementedError

    def flush(self) -> list[Window]:
        return []


class Chain:
    """Steps in order: each window given passes through them; gives the windows the last step is done with.
    cpu_seconds: each step's CPU time (this process, all threads) by its name, summed."""

    def __init__(self, steps: list):
        self.steps = steps
        self.cpu_seconds = {type(step).__name__: 0.0 for step in steps}

    def __call__(self, window: Window) -> list[Window]:
        windows = [window]
        for step in self.steps:
            windows = self._timed(step, lambda: [done for held in windows for done in step(held)])
        return windows

    def flush(self) -> list[Window]:
        """The windows still held, through the steps after the one holding them."""
        windows = []
        for step in self.steps:
            windows = self._timed(step, lambda: [done for held in windows for done in step(held)] + step.flush())
        return windows

    def _timed(self, step, work):
        started = time.process_time()
        done = work()
        self.cpu_seconds[type(step).__name__] += time.process_time() - started
        return done


class Align(Step):
    """warp: whether the crops are warped here (a GPU node warps them beside the restorer: WarpCrops)."""

    def __init__(self, plan: FacePlan, face_size: int, warp: bool = True):
        self.plan, self.face_size, self.warp = plan, face_size, warp

    def work(self, window: Window) -> None:
        for frame in window.frames:
            faces = self.plan.by_frame.get(frame.index)
            if not faces:
                continue
            picture = frame.picture
            shape = (picture.height, picture.width)
            transforms = [alignment_transform(face.keypoints, self.face_size) for _, face, _ in faces]
            # Only what the faces' surroundings hold (their crops' sources among it) is converted to RGB.
            rgb = picture.rgb_in([Surround.rectangle(shape, transform, face.landmarks)
                                  for transform, (_, face, _) in zip(transforms, faces)])
            for (number, face, actor), transform in zip(faces, transforms):
                if self.warp:
                    aligned = align_face(rgb, face, self.face_size, transform)
                else:
                    aligned = place_face(face, self.face_size, transform)
                key = (frame.index, number)
                window.faces[key] = WindowFace(key, self.plan.positions[key], aligned, actor, face.landmarks,
                                               Surround.around(rgb, aligned, face.landmarks))


class WarpCrops(Step):
    """Beside the restorer (a GPU node), the crops Align left to it: each warped on the device from its
    surround as Align warps it from the frame (faces.align.CropWarp, rounded as OpenCV rounds uint8), and
    brought back for what reads it on the CPU (the restorer's request, the flows, the identity embeddings)."""

    def __init__(self, on):
        self.on = on

    def work(self, window: Window) -> None:
        faces = [face for face in window.faces.values() if face.aligned.crop is None]
        if not faces:
            return
        crops = [_warped(self.on, face.surround, face.aligned.transform, window.shape) for face in faces]
        for face, crop in zip(faces, ops.to_numpy(ops.namespace(crops[0]).stack(crops)).astype(np.uint8)):  # brought back at once
            face.aligned = face.aligned._replace(crop=crop)


class Restore:
    """restore(crops, boxes, actor) -> float32 restored crops, or a request in flight whose result()
    gives them; a window is given on once the next one is sent (or at the end). on: an array whose
    kind and device the restored crops are put on (None: as they come)."""

    def __init__(self, restore: Callable, result: ChunkResult, on=None):
        self.restore, self.result, self.on = restore, result, on
        self.sent: Window | None = None

    def __call__(self, window: Window) -> list[Window]:
        self._send(window)
        previous, self.sent = self.sent, window
        return [] if previous is None else [self._collected(previous)]

    def flush(self) -> list[Window]:
        previous, self.sent = self.sent, None
        return [] if previous is None else [self._collected(previous)]

    def _send(self, window: Window) -> None:
        by_actor = defaultdict(list)
        for key, face in window.faces.items():
            by_actor[face.actor].append(key)
        for actor, keys in by_actor.items():
            crops = np.stack([window.faces[key].aligned.crop for key in keys])
            boxes = np.stack([window.faces[key].aligned.boxes for key in keys])
            window.requests.append((keys, self.restore(crops, boxes, actor)))
            self.result.faces_by_actor[actor or ""] = self.result.faces_by_actor.get(actor or "", 0) + len(keys)

    def _collected(self, window: Window) -> Window:
        for keys, request in window.requests:
            restored = request.result() if hasattr(request, "result") else request
            if self.on is not None:
                restored = ops.like(self.on, ops.to_numpy(restored))
            for key, crop in zip(keys, restored):
                window.faces[key].restored = ops.as_float(crop)
        window.requests = []
        return window


class Follow(Step):
    """on: as Restore takes it: each flow is computed on the CPU (OpenCV's DIS) and put there, where its
    forward-backward check runs and the steps that read it run."""

    def __init__(self, on=None):
        self.on = on
        self.last: dict[int, WindowFace] = {}  # track number -> its face last seen
        self.pictures: dict[tuple[FaceKey, int], np.ndarray] = {}  # (face, side) -> its flow picture, while it is needed

    def work(self, window: Window) -> None:
        for number, faces in window.tracks().items():
            for face in faces:
                before = self.last.get(number)
                if before is not None and before.position == face.position - 1:
                    size = face.aligned.transform.size
                    side = flow_side(size, face.aligned.transform.scale)
                    face.flow = PairFlow.between(self._picture(before, side), self._picture(face, side), size, like=self.on)
                if before is not None:
                    self.pictures = {key: picture for key, picture in self.pictures.items() if key[0] != before.key}
                self.last[number] = face

    def _picture(self, face: WindowFace, side: int) -> np.ndarray:
        if (face.key, side) not in self.pictures:
            self.pictures[face.key, side] = flow_picture(face.surround.rgb, face.surround.aligned(face.aligned.transform), side,
                                                         face.aligned.crop)
        return self.pictures[face.key, side]


class Guard:
    """embed: crops -> unit embeddings (None: no guards, the restorer's faces are final);
    references: actor -> unit centroid; each track's strength is the plan's; fusion: whether the
    guards fuse each face's input along its track (finish.guards). Each track's guarded parts
    (frames, GuardedFaces) are kept in `parts`."""

    def __init__(self, plan: FacePlan, embed, references: dict, fusion: bool = True):
        self.plan, self.embed, self.references, self.fusion = plan, embed, references, fusion
        self.tracks: dict[int, TrackGuard] = {}
        self.added: dict[int, int] = {}  # track number -> highest position added
        self.parts: dict[int, list[tuple[list[int], GuardedFaces]]] = defaultdict(list)
        self.held: list[Window] = []

    def __call__(self, window: Window) -> list[Window]:
        if self.embed is None:
            for face in window.faces.values():
                face.final = face.restored
            return [window]
        for face in sorted(window.faces.values(), key=lambda face: face.position):
            self._track(face).add(face.position, face.aligned.crop, face.restored, face.flow)
            self.added[face.track] = face.position
        self.held.append(window)
        done = []
        while self.held and self._ready(self.held[0]):
            done.append(self._guarded(self.held.pop(0)))
        return done

    def flush(self) -> list[Window]:
        done, self.held = [self._guarded(window) for window in self.held], []
        return done

    def _track(self, face: WindowFace) -> TrackGuard:
        if face.track not in self.tracks:
            self.tracks[face.track] = TrackGuard(self.plan.lengths[face.track], self.embed,
                                                 self.references.get(face.actor) if face.actor else None,
                                                 self.plan.strengths[face.track], fusion=self.fusion)
        return self.tracks[face.track]

    def _ready(self, window: Window) -> bool:
        """Whether every face GUARD_HORIZON positions beyond the window's is restored (or its track ends before)."""
        for number, faces in window.tracks().items():
            needed = min(faces[-1].position + GUARD_HORIZON, self.plan.lengths[number] - 1)
            if self.added[number] < needed:
                return False
        return True

    def _guarded(self, window: Window) -> Window:
        for number, faces in window.tracks().items():
            guard = self.tracks[number]
            guarded = guard.guard([face.position for face in faces])
            for face, crop in zip(faces, guarded.faces):
                face.final = crop
            self.parts[number].append(([face.frame for face in faces], replace(guarded, faces=None)))
            guard.forget(faces[0].position)
        return window


class GrainModels(Step):
    """Each track's grain tile (None where none was found), estimated from the first window in which
    the track shows on at least two consecutive frames (its grain's change must be seen)."""

    def __init__(self):
        self.tiles: dict[int, GrainTile | None] = {}

    def work(self, window: Window) -> None:
        for number, faces in window.tracks().items():
            if number in self.tiles:
                continue
            run = longest_run(faces)[:GRAIN_FACES]
            if len(run) < 2:
                continue
            region = _common(grain_window(window.shape, np.concatenate([face.landmarks for face in run])), run)
            # Where the restored crops are (a GPU node's device), the frame around the faces goes, and the work with it.
            on = run[0].restored
            flows = flows_in_frame([(face.flow, face.aligned.transform, before.aligned.transform)
                                    for before, face in zip(run, run[1:])], region, like=on)
            pictures = [face.surround.read(region, like=on) for face in run]
            model = estimate_track_grain(pictures, flows)
            self.tiles[number] = None if model is None else GrainTile(model, number, like=on)

    def model(self, number: int):
        tile = self.tiles.get(number)
        return None if tile is None else tile.model


class Paste(Step):
    def __init__(self, grain: GrainModels):
        self.grain = grain

    def work(self, window: Window) -> None:
        for index in sorted({face.frame for face in window.faces.values()}):
            faces = window.in_frame(index)
            models = [self.grain.model(face.track) for face in faces]
            regions = face_regions(window.shape, [(face.aligned, face.final) for face in faces],
                                   [face.surround for face in faces],
                                   [None if model is None else model.std_above for model in models])
            for region in regions:
                faces[region.number].region = region


class HoldStill(Step):
    """Measures each track's change from frame to frame over the window's faces (inside their mattes,
    along the track's flow), for the tracks held (strength auto) or taking grain: a held track keeps
    only the share of its restoration that changes no more than its input (1 for the others), and
    the change left is what AddGrain's allowance is measured on. A track seen on one frame keeps its
    last measures. The share each face uses moves toward its window's by at most hold.SHARE_SLOPE
    from the track's face before (`used`: by face, for the chunk): where a window needs less than the
    one before, its first faces change a little more than the film for a few frames."""

    def __init__(self, plan: FacePlan, grain: GrainModels, result: ChunkResult):
        self.plan, self.grain, self.result = plan, grain, result
        self.shares: dict[int, float] = {}
        self.allowed: dict[int, float] = {}
        self.used: dict[FaceKey, float] = {}
        self.last_used: dict[int, float] = {}  # track number -> the share its last face used

    def work(self, window: Window) -> None:
        for number, faces in window.tracks().items():
            held = self.plan.strengths[number] == AUTO
            model = self.grain.model(number)
            if held or model is not None:
                self._measure(number, faces, held, model)
            target = self.shares.get(number, 1.0)
            for face in faces:
                # A track's first faces start at their window's share: there is no face before them to step from.
                share = self.last_used[number] = toward(self.last_used.get(number, target), target)
                self.used[face.key] = share
                if share < 1:
                    self.result.faces_held_still += 1
                    if face.region is not None:
                        original = face.surround.read(face.region.region, like=face.region.face)
                        face.region = face.region.partial(original, share)

    def _measure(self, number: int, faces: list[WindowFace], held: bool, model) -> None:
        run = longest_run([face for face in faces if face.region is not None])
        if len(run) < 2:
            return
        area = _common(_union([face.region.region for face in run]), run)
        inputs = [face.surround.read(area, like=face.region.face) for face in run]
        outputs, masks = [], []
        for face, picture in zip(run, inputs):
            alpha = _placed(face.region.alpha, face.region.region, area)
            layer = _placed(face.region.face, face.region.region, area, picture)
            outputs.append(picture + alpha[..., None] * (layer - picture))
            masks.append(alpha >= 1)
        flows = flows_in_frame([(face.flow, face.aligned.transform, before.aligned.transform) for before, face in zip(run, run[1:])],
                               area, CHANGE_STRIDE, like=inputs[0])
        change = change_samples(inputs, outputs, masks, flows, CHANGE_STRIDE)
        if change is None:
            return
        self.shares[number] = steady_share(change) if held else 1.0
        if model is not None:
            self.allowed[number] = grain_allowed(change.kept(self.shares[number]), model)


class AddGrain(Step):
    def __init__(self, grain: GrainModels, hold: HoldStill):
        self.grain, self.hold = grain, hold

    def work(self, window: Window) -> None:
        for face in window.faces.values():
            tile = self.grain.tiles.get(face.track)
            if tile is None or face.region is None:
                continue
            original = face.surround.read(face.region.region, like=face.region.face)
            allowed = self.hold.allowed.get(face.track, 0.0)  # none before the track's change is measured
            grained = add_missing_grain(face.region.face, original, face.region.alpha, tile, face.key, allowed)
            face.region = replace(face.region, face=grained)


class Blend(Step):
    """Each frame's faces composited and blended into its picture (window.pictures)."""

    def __init__(self, result: ChunkResult):
        self.result = result

    def work(self, window: Window) -> None:
        for frame in window.frames:
            faces = window.in_frame(frame.index)
            picture = frame.picture
            for (rows, columns), layer, alpha in composite([face.region for face in faces if face.region is not None]):
                picture = picture.blended(ops.to_numpy(layer), ops.to_numpy(alpha), (rows.start, columns.start))
            window.pictures[frame.index] = picture
            self.result.faces += len(faces)


def finishing(restore: Callable, plan: FacePlan, settings, result: ChunkResult, on=None) -> tuple[list, Guard]:
    """The steps from Restore to AddGrain for one chunk, and its Guard (whose parts hold the guards'
    measures). settings: the chunk's compose.ComposeSettings; on: as Restore takes it."""
    grain = GrainModels()
    embed = None if settings.models_dir is None else embedder_of(settings.models_dir)
    guard = Guard(plan, embed, settings.references, settings.fusion == "on")
    hold = HoldStill(plan, grain, result)
    chain = [Restore(restore, result, on), Follow(on), guard, grain, Paste(grain), hold]
    if on is not None:
        chain.insert(0, WarpCrops(on))
    if settings.grain == AUTO:
        chain.append(AddGrain(grain, hold))
    return chain, guard


def _warped(on, surround: Surround, transform, frame_shape: tuple):
    """A face's crop (float32 size x size x 3 of whole code values) warped from its surround, on `on`'s kind and device."""
    warp = CropWarp.of(transform, frame_shape)
    source = surround.read(warp.source, like=on)[None]
    xp = ops.namespace(source)
    if warp.shrunk is not None:
        halved = source.shape[1:3] == tuple(2 * side for side in warp.shrunk)
        source = ops.resize(source, warp.shrunk, ops.AREA)
        # OpenCV rounds a uint8 shrink to half its sides half up, any other to the nearest even.
        source = xp.floor(source + 0.5) if halved else xp.round(source)
    crop = ops.affine(source, warp.matrix, (transform.size, transform.size), WARP, ops.CONSTANT)
    return xp.clip(xp.round(crop[0]), 0, 255)


def _union(regions: list[tuple[slice, slice]]) -> tuple[slice, slice]:
    return np.s_[min(r[0].start for r in regions):max(r[0].stop for r in regions),
                 min(r[1].start for r in regions):max(r[1].stop for r in regions)]


def _common(region: tuple[slice, slice], faces: list[WindowFace]) -> tuple[slice, slice]:
    """The rectangle cut to what every face's surround holds."""
    rows, columns = region
    y0, x0, y1, x1 = rows.start, columns.start, rows.stop, columns.stop
    for face in faces:
        top, left = face.surround.origin
        height, width = face.surround.rgb.shape[:2]
        y0, x0, y1, x1 = max(y0, top), max(x0, left), min(y1, top + height), min(x1, left + width)
    return np.s_[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]


def _placed(values, region: tuple[slice, slice], area: tuple[slice, slice], background=None):
    """A region's values placed in a larger area (zeros, or the background, where the region does not reach)."""
    height, width = area[0].stop - area[0].start, area[1].stop - area[1].start
    if background is None:
        out = ops.like(values, np.zeros((height, width, *values.shape[2:]), np.float32))
    else:
        out = ops.copy(ops.like(values, background))
    y0, x0 = max(region[0].start, area[0].start), max(region[1].start, area[1].start)
    y1, x1 = min(region[0].stop, area[0].stop), min(region[1].stop, area[1].stop)
    out[y0 - area[0].start:y1 - area[0].start, x0 - area[1].start:x1 - area[1].start] = \
        values[y0 - region[0].start:y1 - region[0].start, x0 - region[1].start:x1 - region[1].start]
    return out
