"""Interlaced video: a film's field order (detected from its decoded frames and its container's
tag), its pictures split into their two fields and woven back, and frames flagged for the encoder.

Field orders are named as ffprobe names them: "progressive", "tt", "bb", "tb", "bt" (the first
letter: the field coded first; the second: the field shown first). A field is every other row
of every plane (in interlaced 4:2:0 the chroma rows alternate between the fields too), so a
field of a Picture is itself a Picture of half the height, and weaving the two back is exact.
"""
from __future__ import annotations

from fractions import Fraction

import av
import av.filter
import numpy as np

from film_restore.video.formats import PIX_FMTS
from film_restore.video.picture import Picture

PROGRESSIVE = "progressive"
# AVFieldOrder values (codec_context.field_order) by ffprobe's names; 0 is "unknown".
FIELD_ORDER_CODES = {PROGRESSIVE: 1, "tt": 2, "bb": 3, "tb": 4, "bt": 5}
_NAMES = {code: name for name, code in FIELD_ORDER_CODES.items()}
# The field shown first, by field order.
_TOP_FIRST = {"tt": True, "bt": True, "bb": False, "tb": False}


def field_order(frame: "av.VideoFrame", tag: int) -> str:
    """The field order of a film from its first decoded frame and its container's tag (AVFieldOrder).

    The frame decides whether the film is interlaced and which field is shown first (decoders
    flag each frame; container tags are often missing, and H.264's parser guesses TT for any
    interlaced stream); the tag, where it agrees on the field shown first, adds which field
    is coded first.
    """
    if not frame.interlaced_frame:
        return PROGRESSIVE
    top_first = _shows_top_first(frame)
    tagged = _NAMES.get(int(tag))
    if tagged in _TOP_FIRST and _TOP_FIRST[tagged] == top_first:
        return tagged
    return "tt" if top_first else "bb"


def _shows_top_first(frame: "av.VideoFrame") -> bool:
    """Whether an interlaced frame is flagged top field first (PyAV does not expose the flag; FFmpeg's select filter reads it)."""
    graph = av.filter.Graph()
    source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=Fraction(1, 25))
    select = graph.add("select", r"eq(interlace_type\,TOPFIRST)")
    sink = graph.add("buffersink")
    source.link_to(select)
    select.link_to(sink)
    graph.configure()
    graph.push(frame)
    graph.push(None)
    try:
        graph.pull()
        return True
    except (av.error.EOFError, av.error.BlockingIOError):
        return False


def is_interlaced(order: str) -> bool:
    return order in _TOP_FIRST


def fields_fit(order: str, pix_fmt: str, height: int) -> bool:
    """Whether pictures of this height split into two fields of the same layout (each field a whole number of chroma rows)."""
    _, _, sy = PIX_FMTS[pix_fmt]
    return is_interlaced(order) and height % (2 << (sy or 0)) == 0


def field_rows(order: str) -> tuple[int, int]:
    """The first row of the field shown first, then of the one shown second."""
    return (0, 1) if _TOP_FIRST[order] else (1, 0)


def split_fields(picture: Picture, order: str) -> tuple[Picture, Picture]:
    """The picture's two fields in the order they are shown (each a Picture of half the height)."""
    return tuple(_with_planes(picture, [plane[row::2] for plane in picture.planes]) for row in field_rows(order))


def weave(first: Picture, second: Picture, order: str) -> Picture:
    """The frame whose fields, in the order they are shown, are first and second (the inverse of split_fields)."""
    planes = []
    for index, plane in enumerate(first.planes):
        woven = np.empty((plane.shape[0] * 2, plane.shape[1]), plane.dtype)
        for row, field in zip(field_rows(order), (first, second)):
            woven[row::2] = field.planes[index]
        planes.append(woven)
    return _with_planes(first, planes)


def change_alike_on_both_fields(woven: Picture, source: Picture) -> Picture:
    """The woven frame with its change from the source (a restoration's) averaged across
    neighbouring rows ([1, 2, 1] / 4, vertically) wherever the source was changed: a change
    that alternates from one field's row to the other's (two fields restored apart) would
    comb, the same change on both fields does not. Unchanged samples keep their values."""
    planes = []
    for restored, original in zip(woven.planes, source.planes):
        change = restored.astype(np.float32) - original
        changed = change != 0
        if changed.any():
            padded = np.pad(change, ((1, 1), (0, 0)), mode="edge")
            alike = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
            restored = np.where(changed, np.clip(np.rint(original + alike), 0, woven.max_code), original).astype(restored.dtype)
        planes.append(restored)
    return _with_planes(woven, planes)


def _with_planes(picture: Picture, planes) -> Picture:
    return Picture(planes, picture.pix_fmt, picture.colorspace, picture.color_range, picture.color_primaries,
                   picture.color_trc)


class FieldFlagger:
    """Flags encoder frames as interlaced with the film's field shown first (PyAV cannot set the
    flags itself; FFmpeg's setfield filter does), which ProRes, FFV1 and x264 code from."""

    def __init__(self, order: str, width: int, height: int, pix_fmt: str):
        self._graph = graph = av.filter.Graph()
        source = graph.add_buffer(width=width, height=height, format=pix_fmt, time_base=Fraction(1, 25))
        setfield = graph.add("setfield", "tff" if _TOP_FIRST[order] else "bff")
        sink = graph.add("buffersink")
        source.link_to(setfield)
        setfield.link_to(sink)
        graph.configure()

    def __call__(self, frame: "av.VideoFrame") -> "av.VideoFrame":
        pts, time_base = frame.pts, frame.time_base
        self._graph.push(frame)
        flagged = self._graph.pull()
        flagged.pts = pts
        if time_base is not None:
            flagged.time_base = time_base
        return flagged
