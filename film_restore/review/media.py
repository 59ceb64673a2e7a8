"""The review page's pictures of a track, from the input and the restored output after the run.

Per track: 1:1 before/after stills (JPEG) of chosen frames, and a moving before|after loop
(VP9 WebM, LOOP_SECONDS around one frame), with what is measured on them: the face's change
(flags.LARGE_CHANGE), its frame-to-frame change in the input and the output along the loop
(the flicker one sees), and the texture ratio of its middle frame (finish.measures.texture_ratio).

Only the frames needed are decoded: the needed frames of every track are merged, and each
run of them (closer than DECODE_GAP) is read once from both films with a seek to its start
(video.read_frames); only the part of a picture the tracks need is turned into RGB, and a
track's face is cropped as its frames go by, so memory holds crops, not frames. A film
restored field by field (interlace.py) counts its tracks in fields: both fields of a decoded
frame are pictures here.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import cv2
import numpy as np

from film_restore.interlace import FIELDS_PER_FRAME, field_frames
from film_restore.finish.colour import luma
from film_restore.finish.flow import image_flow
from film_restore.finish.measures import temporal_changes, texture_ratio
from film_restore.records import Track
from film_restore.review.flags import CHANGE_BLUR
from film_restore.video import Picture, read_frames

# A still: the face box grown by STILL_MARGIN of its larger side on each side, within
# STILL_SIDES pixels, at 1:1 (cropped from the frame, never scaled).
STILL_MARGIN = 0.3
STILL_SIDES = (96, 512)
STILL_QUALITY = 95
# The loop: LOOP_SECONDS of the track, its faces' boxes together grown by STILL_MARGIN, at 1:1 up to
# LOOP_MAX_SIDE pixels a side (larger faces are shrunk to it, and the page says by how much).
LOOP_SECONDS = 1.5
LOOP_MAX_SIDE = 384
LOOP_GAP = 4  # pixels between before and after
LOOP_CRF = 16  # VP9, nearly transparent: compression must not add flicker of its own
# The loop's frame-to-frame change is measured along optical flow computed at this side (finish.flow.image_flow): the
# face's motion, not its pores, is what the flow must follow.
LOOP_FLOW_SIDE = 128
# The texture measure's ring reaches about half a face beyond the face's box (texture.RING_DISTANCE, RING_FOREHEAD_LIFT):
# on the middle picture, this many box sides around the box are converted.
TEXTURE_REACH = 1.0
# Needed frames closer than this are decoded through, farther ones are sought.
DECODE_GAP = 48


@dataclass
class TrackPlan:
    """The pictures one track's media need: stills (picture -> what each shows) and the loop's pictures."""

    key: str
    track: Track
    stills: dict[int, list[str]]
    loop: list[int]
    middle: int
    faces: dict = field(init=False)  # picture -> Face
    crops: dict = field(default_factory=dict)  # picture -> (still before, still after or None)
    loop_region: tuple | None = None  # ((x, y, width, height), scale) of the loop's crops
    loop_crops: dict = field(default_factory=dict)  # picture -> (before, after), at the loop's region and scale
    changes: dict = field(default_factory=dict)  # picture -> the face's change (levels)
    texture: float | None = None
    files: dict = field(default_factory=dict)  # file name -> bytes, once finished
    media: dict | None = None  # what the page shows (file names), once finished
    loop_measures: dict | None = None

    def __post_init__(self):
        self.faces = {tracked.frame: tracked.face for tracked in self.track.faces}

    @property
    def pictures(self) -> set[int]:
        return set(self.stills) | set(self.loop)


def plan_track(key: str, track: Track, worst: dict[str, int], rate: float) -> TrackPlan:
    """Stills of the first, middle and last face and of the worst frame of each raised flag; the loop around the worst
    frame of the first raised flag (else the middle), LOOP_SECONDS long at `rate` pictures a second."""
    frames = [tracked.frame for tracked in track.faces]
    middle = frames[len(frames) // 2]
    stills: dict[int, list[str]] = {}
    for label, frame in (("first", frames[0]), ("middle", middle), ("last", frames[-1]),
                         *((f"worst: {flag}", frame) for flag, frame in worst.items())):
        stills.setdefault(frame, []).append(label)
    centre = frames.index(next(iter(worst.values()), middle))
    length = max(2, round(LOOP_SECONDS * rate))
    start = max(0, min(centre - length // 2, len(frames) - length))
    return TrackPlan(key, track, stills, frames[start:start + length], middle)


def _region(box, frame_shape: tuple, sides: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, width, height) of a square around a box, grown by STILL_MARGIN, its side within sides, inside the frame."""
    x1, y1, x2, y2 = box
    side = int(np.clip(max(x2 - x1, y2 - y1) * (1 + 2 * STILL_MARGIN), *sides))
    height, width = frame_shape[:2]
    side_x, side_y = min(side, width) // 2 * 2, min(side, height) // 2 * 2
    x = int(np.clip(round((x1 + x2) / 2 - side_x / 2), 0, width - side_x))
    y = int(np.clip(round((y1 + y2) / 2 - side_y / 2), 0, height - side_y))
    return x, y, side_x, side_y


def _crop(rgb: np.ndarray, region) -> np.ndarray:
    x, y, width, height = region
    return rgb[y:y + height, x:x + width]


def _grown(box, reach: float, frame_shape: tuple) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the box grown by reach times its larger side on each side, inside the frame."""
    x1, y1, x2, y2 = box
    margin = reach * max(x2 - x1, y2 - y1)
    height, width = frame_shape[:2]
    x0, y0 = max(int(np.floor(x1 - margin)), 0), max(int(np.floor(y1 - margin)), 0)
    return x0, y0, min(int(np.ceil(x2 + margin)), width) - x0, min(int(np.ceil(y2 + margin)), height) - y0


class _View(NamedTuple):
    """The part of a picture (input, output or None) that the plans wanting it need: where it lies in the frame, and
    the frame's shape."""

    before: np.ndarray
    after: np.ndarray | None
    x: int
    y: int
    shape: tuple

    def crop(self, rgb: np.ndarray, region) -> np.ndarray:
        """A region (x, y, width, height) of the frame, from this view's rgb."""
        x, y, width, height = region
        return _crop(rgb, (x - self.x, y - self.y, width, height))

    def box(self, box) -> tuple:
        x1, y1, x2, y2 = box
        return x1 - self.x, y1 - self.y, x2 - self.x, y2 - self.y


def face_change(before: np.ndarray, after: np.ndarray, box) -> float:
    """Mean |output - input| (levels) of the luma inside the face box, both blurred by CHANGE_BLUR px (grain left out)."""
    x, y, width, height = _region(box, before.shape, (1, 1 << 16))
    a, b = (cv2.GaussianBlur(luma(_crop(rgb, (x, y, width, height))), (0, 0), CHANGE_BLUR) for rgb in (before, after))
    x1, y1, x2, y2 = (int(round(value)) for value in box)
    inside = (slice(max(y1 - y, 0), max(y2 - y, 0)), slice(max(x1 - x, 0), max(x2 - x, 0)))
    return float(np.abs(b[inside] - a[inside]).mean())


class Pictures:
    """The pictures of the input and the output by number (frames, or fields of a film restored field by field).

    frame_pts: the input's frame timestamps (the scan's); output_pts: the output's, where its container keeps
    them on another clock (default: the same); frame_seconds: each frame's time from the first."""

    def __init__(self, input_path: Path, output_path: Path | None, frame_pts, frame_seconds: list[float],
                 field_order: str | None, output_pts=None):
        self.input_path, self.output_path = input_path, output_path
        self.frame_pts, self.frame_seconds = frame_pts, frame_seconds
        self.output_pts = frame_pts if output_pts is None else output_pts
        self.field_order = field_order
        self.per_frame = 1 if field_order is None else FIELDS_PER_FRAME

    def runs(self, pictures: set[int]) -> list[tuple[int, int]]:
        """The frames to decode, as (first, last) runs."""
        frames = sorted({picture // self.per_frame for picture in pictures})
        runs = []
        for frame in frames:
            if runs and frame - runs[-1][1] <= DECODE_GAP:
                runs[-1][1] = frame
            else:
                runs.append([frame, frame])
        return [tuple(run) for run in runs]

    def read(self, first: int, last: int):
        """(picture number, input picture, output picture or None) for the frames first..last: decoded pictures
        (video.Picture, or interlace.FieldPicture) whose rgb() is taken only where it is needed."""
        inputs = read_frames(self.input_path, first, last, self.frame_pts)
        outputs = read_frames(self.output_path, first, last, self.output_pts) if self.output_path else None
        for frame in inputs:
            after = next(outputs) if outputs is not None else None
            if self.field_order is None:
                yield frame.index, frame.picture, after and after.picture
                continue
            afters = field_frames([after], self.field_order) if after else None
            for before_field in field_frames([frame], self.field_order):
                after_field = next(afters) if afters is not None else None
                yield before_field.index, before_field.picture, after_field and after_field.picture

    def seconds(self, picture: int) -> float:
        """The picture's time in the film (a second field half a frame after its frame)."""
        frame, field_number = divmod(picture, self.per_frame)
        start = self.frame_seconds[frame]
        if not field_number:
            return start
        following = self.frame_seconds[frame + 1] if frame + 1 < len(self.frame_seconds) else None
        duration = following - start if following is not None else 0.04
        return start + duration * field_number / self.per_frame


def frame_timestamps(path: Path) -> list[int]:
    """A film's video frame timestamps in presentation order, from its packets (nothing decoded)."""
    with av.open(str(path)) as container:
        return sorted(packet.pts for packet in container.demux(video=0) if packet.pts is not None and packet.size)


def gather(plans: list[TrackPlan], pictures: Pictures) -> int:
    """Decodes what the plans need, measures it and finishes each plan (files, media, measures) once its pictures are
    all seen, dropping its crops. Returns the number of pictures decoded."""
    wanted: dict[int, list[TrackPlan]] = {}
    remaining = {plan.key: len(plan.pictures) for plan in plans}
    for plan in plans:
        for picture in plan.pictures:
            wanted.setdefault(picture, []).append(plan)
    decoded = 0
    for first, last in pictures.runs(set(wanted)):
        for number, before, after in pictures.read(first, last):
            decoded += 1
            if number not in wanted:
                continue
            shape = (before.height, before.width)
            x0, y0, x1, y1 = _union([_needed(plan, number, shape) for plan in wanted[number]])
            view = _View(_rgb(before, (x0, y0, x1, y1)), after and _rgb(after, (x0, y0, x1, y1)), x0, y0, shape)
            for plan in wanted[number]:
                _take(plan, number, view)
                remaining[plan.key] -= 1
                if not remaining[plan.key]:
                    _finish(plan, pictures)
    return decoded


def _needed(plan: TrackPlan, number: int, shape: tuple) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of what the plan takes from the picture: its still, the loop's region, the face with the
    margin of the change's blur, and on the middle picture the ring of the texture measure."""
    box = plan.faces[number].box
    regions = [_region(box, shape, (1, 1 << 16))]
    if number in plan.stills:
        regions.append(_region(box, shape, STILL_SIDES))
    if number == plan.middle:
        regions.append(_grown(box, TEXTURE_REACH, shape))
    if number in plan.loop:
        if plan.loop_region is None:
            plan.loop_region = _loop_region(plan, shape)
        regions.append(plan.loop_region[0])
    return _union([(x, y, x + width, y + height) for x, y, width, height in regions])


def _union(rectangles) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = zip(*rectangles)
    return min(x0), min(y0), max(x1), max(y1)


def _rgb(picture, rectangle) -> np.ndarray:
    """The picture's RGB inside (x0, y0, x1, y1); only those pixels are converted where the picture can."""
    if isinstance(picture, Picture):
        return picture.rgb(rectangle)
    x0, y0, x1, y1 = rectangle
    return picture.rgb()[y0:y1, x0:x1]


def _take(plan: TrackPlan, number: int, view: _View) -> None:
    face = plan.faces[number]
    if number in plan.stills:
        region = _region(face.box, view.shape, STILL_SIDES)
        plan.crops[number] = (view.crop(view.before, region), None if view.after is None else view.crop(view.after, region))
    if view.after is None:
        return
    plan.changes[number] = face_change(view.before, view.after, view.box(face.box))
    if number == plan.middle:
        ratio = texture_ratio(view.before, view.after, face.landmarks - np.float32([view.x, view.y]))
        plan.texture = round(ratio, 3) if np.isfinite(ratio) else None
    if number in plan.loop:
        region, scale = plan.loop_region
        plan.loop_crops[number] = tuple(_scaled(view.crop(rgb, region), scale) for rgb in (view.before, view.after))


def _finish(plan: TrackPlan, pictures: Pictures) -> None:
    """The plan's files (JPEG stills, the WebM loop), what the page shows of them, and the loop's measures."""
    stills = []
    for number in sorted(plan.crops):
        before, after = plan.crops[number]
        names = {side: f"{plan.key}/{number}-{side}.jpg" for side in ("before", "after")}
        plan.files[names["before"]] = jpeg(before)
        if after is not None:
            plan.files[names["after"]] = jpeg(after)
        stills.append({"frame": number, "labels": plan.stills[number], "before": names["before"],
                       "after": names["after"] if after is not None else None})
    plan.media = {"stills": stills, "loop": None}
    pairs = [plan.loop_crops[number] for number in plan.loop if number in plan.loop_crops]
    if len(pairs) >= 2:
        name = f"{plan.key}/loop.webm"
        times = [pictures.seconds(number) for number in plan.loop if number in plan.loop_crops]
        plan.files[name] = loop_video(pairs, times)
        height, width = pairs[0][0].shape[:2]
        plan.media["loop"] = {"file": name, "first_frame": plan.loop[0], "last_frame": plan.loop[-1],
                              "seconds": round(times[-1] - times[0], 4), "scale": round(plan.loop_region[1], 3),
                              "width": 2 * width + LOOP_GAP, "height": height}
        plan.loop_measures = loop_measures(plan)
    plan.crops, plan.loop_crops = {}, {}


def _loop_region(plan: TrackPlan, frame_shape: tuple) -> tuple[tuple, float]:
    boxes = np.array([plan.faces[picture].box for picture in plan.loop])
    union = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    region = _region(union, frame_shape, (STILL_SIDES[0], 1 << 16))
    return region, min(1.0, LOOP_MAX_SIDE / max(region[2], region[3]))


def _scaled(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return rgb
    size = (max(2, round(rgb.shape[1] * scale / 2) * 2), max(2, round(rgb.shape[0] * scale / 2) * 2))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def jpeg(rgb: np.ndarray) -> bytes:
    """JPEG with full-resolution colour (4:4:4): the page compares fine detail."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, STILL_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:
        raise RuntimeError(f"could not encode a still of {rgb.shape}")
    return data.tobytes()


def loop_video(pairs: list[tuple[np.ndarray, np.ndarray]], seconds: list[float]) -> bytes:
    """A WebM (VP9) of before | after side by side, at the pictures' own times."""
    height, width = pairs[0][0].shape[:2]
    time_base = Fraction(1, 1000)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=max(1, round(len(seconds) / max(seconds[-1] - seconds[0], 1e-3))))
        stream.width, stream.height, stream.pix_fmt = 2 * width + LOOP_GAP, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.options = {"crf": str(LOOP_CRF), "b": "0", "deadline": "realtime", "cpu-used": "8",
                                        "row-mt": "1", "lag-in-frames": "0"}
        canvas = np.full((height, 2 * width + LOOP_GAP, 3), 255, np.uint8)
        for (before, after), second in zip(pairs, seconds):
            canvas[:, :width], canvas[:, width + LOOP_GAP:] = before, after
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = round((second - seconds[0]) / time_base), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def loop_measures(plan: TrackPlan) -> dict | None:
    """Along the loop: each picture's change (levels) and the face's mean change from the picture before, input and
    output, along the input's flow (finish.measures.temporal_changes over the face box): levels."""
    pictures = [picture for picture in plan.loop if picture in plan.loop_crops]
    if len(pictures) < 2:
        return None
    befores = np.stack([plan.loop_crops[p][0] for p in pictures])
    afters = np.stack([plan.loop_crops[p][1] for p in pictures])
    flows = [image_flow(befores[t - 1], befores[t], LOOP_FLOW_SIDE) for t in range(1, len(befores))]
    sums_in, sums_out, weights = temporal_changes(befores, afters, _face_masks(plan, pictures, befores.shape[1:3]), flows)
    mean = lambda sums: [None] + [round(float(s / w), 3) if w > 0 else None for s, w in zip(sums, weights)]  # noqa: E731
    return {"frame": pictures, "change": [round(plan.changes[p], 3) for p in pictures],
            "frame_change_in": mean(sums_in), "frame_change_out": mean(sums_out)}


def _face_masks(plan: TrackPlan, pictures: list[int], shape: tuple) -> np.ndarray:
    """1 inside each picture's face box, in the loop crop's coordinates."""
    region, scale = plan.loop_region
    masks = np.zeros((len(pictures), *shape), np.float32)
    for mask, picture in zip(masks, pictures):
        x1, y1, x2, y2 = ((np.array(plan.faces[picture].box) - [region[0], region[1]] * 2) * scale).round().astype(int)
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
    return masks
