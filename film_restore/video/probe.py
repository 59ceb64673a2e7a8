"""probe: what a film's headers say about it (size, pixel format, time base, colour tags, other streams), without decoding."""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from film_restore.video.display import DisplayMetadata, display_metadata
from film_restore.video.fields import PROGRESSIVE, field_order
from film_restore.video.formats import PIX_FMTS, VideoError, open_input, positive_fraction, unsupported_format, video_stream



@dataclass(frozen=True)
class StreamSummary:
    """A stream of the input other than the film's video (copied to the output as it is)."""

    index: int
    type: str            # "audio", "subtitle", "data", "attachment" or "video" (a second video / cover art)
    codec: str | None
    language: str | None
    title: str | None


@dataclass(frozen=True)
class VideoInfo:
    """What the headers and the first frame say about a film (fast to get: one frame is decoded).

    time_base: the video stream's time base; every pts here is an integer in it.
    average_rate: frames per second (the container's average; None if unknown); a
    variable-frame-rate film keeps its own timestamps regardless.
    frame_count: the header's frame count, else an estimate from duration x average rate,
    0 when neither is known; the scan (:func:`read_frames` over the film) gives the exact count.
    colorspace, color_range, color_primaries, color_trc: FFmpeg's enum values
    (AVColorSpace, AVColorRange, AVColorPrimaries, AVColorTransferCharacteristic; 2 and 0
    mean unspecified). container: FFmpeg's demuxer name (e.g. "mov,mp4,m4a,3gp,3g2,mj2").
    display: HDR mastering display, content light level and display matrix (rotation).
    field_order: "progressive", or the interlaced film's field order as ffprobe names it
    ("tt", "bb", "tb", "bt"; see :mod:`.fields`).
    """

    path: Path
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    codec: str
    time_base: Fraction
    average_rate: Fraction | None
    frame_count: int
    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int
    sample_aspect_ratio: Fraction | None
    container: str
    stream_index: int
    other_streams: tuple[StreamSummary, ...] = field(default=())
    display: DisplayMetadata = field(default=DisplayMetadata())
    field_order: str = PROGRESSIVE

    @property
    def chroma_subsampling(self) -> tuple[int, int] | None:
        """(log2 horizontal, log2 vertical) chroma divisors, None for grey."""
        _, sx, sy = PIX_FMTS[self.pix_fmt]
        return None if sx is None else (sx, sy)


def probe(path) -> VideoInfo:
    """The film's :class:`VideoInfo` from its headers; VideoError for a missing file, a file
    that is not media, no video stream or an unsupported pixel format."""
    path = Path(path)
    with open_input(path) as container:
        stream = video_stream(container, path)
        context = stream.codec_context
        pix_fmt = context.pix_fmt
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.FFmpegError):
            first = None
        if first is None and pix_fmt is None:  # some codecs only tell after decoding a frame
            raise VideoError(f"{path.name}: its video stream has no decodable frame: repair or re-export it")
        pix_fmt = pix_fmt or first.format.name
        if pix_fmt not in PIX_FMTS:
            raise unsupported_format(pix_fmt, path.name)
        rate = positive_fraction(stream.average_rate) or positive_fraction(stream.guessed_rate)
        frame_count = int(stream.frames or 0)
        if frame_count <= 0:
            duration = None
            if stream.duration:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            frame_count = int(round(duration * rate)) if duration and rate else 0
        others = []
        for other in container.streams:
            if other.index == stream.index:
                continue
            name = None
            try:
                name = other.codec_context.name if other.codec_context is not None else None
            except Exception:  # streams without a decoder (some data streams)
                name = None
            metadata = dict(other.metadata)
            others.append(StreamSummary(other.index, other.type, name, metadata.get("language"),
                                        metadata.get("title") or metadata.get("handler_name")))
        return VideoInfo(
            path=path, width=context.width, height=context.height, pix_fmt=pix_fmt,
            bit_depth=PIX_FMTS[pix_fmt][0], codec=context.name, time_base=Fraction(stream.time_base),
            average_rate=rate, frame_count=frame_count,
            colorspace=int(context.colorspace), color_range=int(context.color_range),
            color_primaries=int(context.color_primaries), color_trc=int(context.color_trc),
            sample_aspect_ratio=positive_fraction(context.sample_aspect_ratio), container=container.format.name,
            stream_index=stream.index, other_streams=tuple(others),
            display=display_metadata(first) if first is not None else DisplayMetadata(),
            field_order=field_order(first, context.field_order) if first is not None else PROGRESSIVE)
