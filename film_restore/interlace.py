"""Field-aware restoration of interlaced films, and the combing measure of its result.

An interlaced frame holds two pictures taken 1/50 s (or 1/60 s) apart, one in its even rows
and one in its odd rows. Found, tracked and restored as one picture, a moving face would be a
mixture of two instants. So each field is a picture of its own, in the order the fields are
shown: frame n becomes pictures 2n and 2n + 1 (face tracks, their smoothing and the guards
along a track see two pictures per frame, in time order). For face work a field is brought
to square pixels by putting its rows back on the frame rows they are shown on, the rows
between interpolated (FieldPicture.rgb); restored faces are taken on the field's own rows and
blended into the field in its own pixel format; FieldWeaver weaves the two fields back into
the frame the encoder gets. A sample outside the face mattes keeps its exact value: a
field's row is touched only where the matte on that frame row is not 0.

combing measures what a field-unaware restoration leaves in a woven frame: energy that
alternates line to line (between the fields) beyond what each field's own vertical detail explains.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import cv2
import numpy as np

from film_restore.records import Frame, Shot
from film_restore.video import VideoInfo
from film_restore.video.fields import change_alike_on_both_fields, field_rows, fields_fit, is_interlaced, split_fields, weave
from film_restore.video.picture import Picture

FIELDS_PER_FRAME = 2


def restored_field_order(info: VideoInfo) -> str | None:
    """The film's field order when its fields are restored as pictures of their own; None when whole frames are
    (a progressive film, or field heights that do not split into whole chroma rows)."""
    return info.field_order if fields_fit(info.field_order, info.pix_fmt, info.height) else None


def whole_frames_note(info: VideoInfo) -> str | None:
    """The one line to say when an interlaced film's frames cannot be split into fields (they are restored whole)."""
    if is_interlaced(info.field_order) and restored_field_order(info) is None:
        return (f"the film is interlaced ({info.field_order}) but its {info.height} lines do not split into two {info.pix_fmt} "
                "fields: faces are restored on whole frames and may comb where they move")
    return None


class FieldPicture:
    """One field of an interlaced frame as a picture for face work: rgb() and blended() at the frame's size, square
    pixels, each field row on the frame row it is shown on (the rows between interpolated), so that the two fields of a
    still face line up. field: the field (a Picture) as it is now; row: its first row in the frame (0 top, 1 bottom);
    source: the field as decoded; touched: (x0, y0, x1, y1) in frame pixels around every blended face, None before any."""

    __slots__ = ("field", "row", "source", "touched")

    def __init__(self, field: Picture, row: int, source: Picture | None = None, touched: tuple | None = None):
        self.field = field
        self.row = row
        self.source = field if source is None else source
        self.touched = touched

    @property
    def height(self) -> int:
        return self.field.height * FIELDS_PER_FRAME

    @property
    def width(self) -> int:
        return self.field.width

    def rgb(self) -> np.ndarray:
        # Frame row y shows field row (y - row) / 2.
        to_field = np.array([[1, 0, 0], [0, 1 / FIELDS_PER_FRAME, -self.row / FIELDS_PER_FRAME]], np.float64)
        return cv2.warpAffine(self.field.rgb(), to_field, (self.width, self.height),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def rgb_in(self, rectangles: list) -> np.ndarray:
        """As Picture.rgb_in: here the whole of rgb() (the field is stretched to the frame in one warp)."""
        return self.rgb()

    def blended(self, rgb_float: np.ndarray, alpha: np.ndarray, origin: tuple[int, int] | None = None) -> "FieldPicture":
        """rgb_float and alpha over the frame (as Picture.blended: the full frame, or a rectangle of it at origin),
        taken on the field's rows and blended into it."""
        origin_y, origin_x = origin or (0, 0)
        first = (self.row - origin_y) % FIELDS_PER_FRAME  # the first of the rectangle's rows on this field
        layer = np.ascontiguousarray(np.asarray(rgb_float, np.float32)[first::FIELDS_PER_FRAME])
        field_alpha = np.ascontiguousarray(np.asarray(alpha, np.float32)[first::FIELDS_PER_FRAME])
        field_origin = None if origin is None else ((origin_y + first - self.row) // FIELDS_PER_FRAME, origin_x)
        rows, columns = np.nonzero(alpha > 0)
        box = (int(columns.min()) + origin_x, int(rows.min()) + origin_y, int(columns.max()) + 1 + origin_x,
               int(rows.max()) + 1 + origin_y) if rows.size else None
        return FieldPicture(self.field.blended(layer, field_alpha, field_origin), self.row, self.source, _union(self.touched, box))


def _union(*boxes) -> tuple | None:
    """The smallest (x0, y0, x1, y1) holding every box given (None ones left out); None if there is none."""
    boxes = [box for box in boxes if box is not None]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def field_frames(frames: Iterable[Frame], order: str) -> Iterator[Frame]:
    """Each frame's two fields as Frames of FieldPictures, in the order they are shown: frame n gives pictures 2n, 2n + 1
    (both with the frame's pts)."""
    for frame in frames:
        for number, (field, row) in enumerate(zip(split_fields(frame.picture, order), field_rows(order))):
            yield Frame(frame.index * FIELDS_PER_FRAME + number, frame.pts, FieldPicture(field, row))


def field_shot(shot: Shot) -> Shot:
    """The shot's frames counted in fields."""
    return Shot(shot.index, shot.first_frame * FIELDS_PER_FRAME, shot.last_frame * FIELDS_PER_FRAME + FIELDS_PER_FRAME - 1)


def combing(luma: np.ndarray, bit_depth: int = 8) -> float:
    """Line-alternating energy of a luma region, on the 8-bit scale: the mean of |2 y[i] - y[i-1] - y[i+1]| (its
    neighbours from the other field) less the mean of |2 y[i] - y[i-2] - y[i+2]| / 2 (from its own field, twice as
    far). Alternating rows (fields of two instants) count fully; smooth vertical detail is discounted; 0 or below is
    no combing. NaN for a region under 5 rows."""
    y = np.asarray(luma, np.float64) / (1 << (bit_depth - 8))
    if y.shape[0] < 5:
        return float("nan")
    across = np.abs(2 * y[2:-2] - y[1:-3] - y[3:-1]).mean()
    within = np.abs(2 * y[2:-2] - y[:-4] - y[4:]).mean()
    return float(across - within / 2)


class FieldWeaver:
    """Takes a chunk's FieldPictures in time order, weaves each frame's two fields and writes the frame to `writer`
    (a ChunkWriter); the restoration's change is made alike on both fields (fields.change_alike_on_both_fields), so
    fields restored apart do not comb; measures the combing of each frame's face region, input and output."""

    def __init__(self, writer, order: str):
        self.writer = writer
        self.order = order
        self._first = None
        self.combing = {"input": 0.0, "output": 0.0, "frames": 0}  # sums over frames with faces

    def write(self, picture: FieldPicture, pts: int) -> None:
        if self._first is None:
            self._first = picture
            return
        first, self._first = self._first, None
        woven = weave(first.field, picture.field, self.order)
        box = _union(first.touched, picture.touched)
        if box is not None:
            x0, y0, x1, y1 = box
            source = weave(first.source, picture.source, self.order)
            woven = change_alike_on_both_fields(woven, source)
            before = combing(source.planes[0][y0:y1, x0:x1], source.bit_depth)
            after = combing(woven.planes[0][y0:y1, x0:x1], woven.bit_depth)
            if np.isfinite(before) and np.isfinite(after):
                self.combing["input"] += before
                self.combing["output"] += after
                self.combing["frames"] += 1
        self.writer.write(woven, pts)

    def close(self) -> None:
        if self._first is not None:
            raise RuntimeError("a frame's second field never came: write both fields of every frame")
