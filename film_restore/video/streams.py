"""Where each stream of the input other than the film's video goes in the output container.

Copied packet for packet where the muxer takes it; text subtitles the container cannot
hold converted to one it can (same texts, same times); the QuickTime timecode track
written as the output's own timecode (a tmcd track in MOV/MP4, the timecode tag in
Matroska and MXF); a chapter track kept as chapters; data streams the container refuses
dropped with a warning; any other stream refused, naming the containers that take it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import av

from film_restore.video.formats import VideoError

# Output container families and the extension each is written with.
FAMILY_SUFFIX = {"mov": ".mov", "mp4": ".mp4", "matroska": ".mkv", "mxf": ".mxf"}
# The text subtitle codec each family holds (FFmpeg encoder names); MXF holds none.
TEXT_SUBTITLE_CODEC = {"mov": "mov_text", "mp4": "mov_text", "matroska": "subrip"}
TEXT_SUBTITLES = {"mov_text", "subrip", "srt", "ass", "ssa", "webvtt", "text"}
# What the MXF muxer takes besides its video (it writes no file without video packets, so no dry run).
_MXF_AUDIO = {"pcm_s16le", "pcm_s24le"}
_DISCARD_ALL = 48  # AVDISCARD_ALL: FFmpeg's mark on a QuickTime chapter track (its entries are the chapters)


@dataclass(frozen=True)
class StreamRoute:
    """One input stream's way into the output: copied (convert_to None) or converted by that encoder."""

    index: int
    type: str
    codec: str | None
    convert_to: str | None = None

    def describe(self) -> str:
        what = f"{self.type} stream #{self.index} ({self.codec or 'no codec'})"
        return what if self.convert_to is None else f"{what} converted to {self.convert_to}"


def codec_name(stream) -> str | None:
    """The stream's codec as FFmpeg names it; None for data streams without a decoder."""
    context = stream.codec_context
    return context.name if context is not None else None


def start_timecode(container, video) -> str | None:
    """The film's start timecode (HH:MM:SS:FF, ';' before FF for drop-frame) from wherever the container keeps it."""
    places = [video.metadata] + [stream.metadata for stream in container.streams.data] + [container.metadata]
    for metadata in places:
        for key, value in metadata.items():
            if key.lower() == "timecode" and value:
                return value
    return None


def is_timecode_track(stream) -> bool:
    """A QuickTime tmcd track: a data stream whose only payload is the start timecode (tagged on it)."""
    return stream.type == "data" and any(key.lower() == "timecode" for key in stream.metadata)


def dry_mux(family: str, template) -> str | None:
    """None if the muxer writes a whole (empty) file with a copy of this stream, else the reason it gives."""
    try:
        container = av.open(io.BytesIO(), "w", format=family)
    except av.FFmpegError as error:
        return str(error)
    try:
        container.add_stream_from_template(template)
        container.start_encoding()
        container.close()
        return None
    except (av.FFmpegError, ValueError, TypeError, NotImplementedError) as error:
        return str(error).replace("\n", " ")
    finally:
        try:
            container.close()
        except Exception:
            pass


def _refusal(family: str, stream) -> str | None:
    """None if the family's muxer takes a copy of this stream, else why not."""
    if family != "mxf":
        return dry_mux(family, stream)
    if stream.type == "audio" and codec_name(stream) in _MXF_AUDIO and stream.codec_context.sample_rate == 48000:
        return None
    return "MXF takes 48 kHz PCM audio and no " + ("other audio" if stream.type == "audio" else f"{stream.type} streams")


def _converted_codec(stream, family: str) -> str | None:
    if stream.type == "subtitle" and codec_name(stream) in TEXT_SUBTITLES:
        return TEXT_SUBTITLE_CODEC.get(family)
    return None


def _families_taking(stream, family: str) -> list[str]:
    return [other for other in FAMILY_SUFFIX
            if other != family and (_refusal(other, stream) is None or _converted_codec(stream, other))]


def route_streams(container, video_index: int, family: str, suffix: str):
    """(routes, dropped, timecode): how every non-video stream goes into a ``family`` output.

    routes: the :class:`StreamRoute` of each stream written; dropped: (index, reason) of
    data and attachment streams the container refuses; timecode: the start timecode the
    output carries, or None. VideoError for an audio or subtitle stream the container
    cannot take even converted, naming the containers that take it.
    """
    routes, dropped = [], []
    video = container.streams[video_index]
    for stream in container.streams:
        if stream.index == video_index or stream.discard == _DISCARD_ALL or is_timecode_track(stream):
            continue
        name = codec_name(stream)
        reason = _refusal(family, stream)
        if reason is None:
            routes.append(StreamRoute(stream.index, stream.type, name))
        elif _converted_codec(stream, family):
            routes.append(StreamRoute(stream.index, stream.type, name, _converted_codec(stream, family)))
        else:
            takers = [FAMILY_SUFFIX[other] for other in _families_taking(stream, family)]
            what = f"{stream.type} stream #{stream.index} ({name or stream.metadata.get('filename', 'no codec')})"
            if stream.type in ("data", "attachment"):
                keep = f"; {', '.join(takers)} keep{'s' if len(takers) == 1 else ''} it" if takers else ""
                dropped.append((stream.index, f"{what} is left out: {family} cannot hold it ({reason}){keep}"))
                continue
            fix = (f"{', '.join(takers)} take{'s' if len(takers) == 1 else ''} it: name the output {takers[0]}" if takers else
                   f"no output container here takes it: drop it from the input first (ffmpeg -i IN -map 0 -map -0:{stream.index} -c copy OUT)")
            raise VideoError(f"{what} cannot go into {suffix} ({reason}); {fix}")
    return routes, dropped, start_timecode(container, video)


class SubtitleConverter:
    """Re-encodes a text subtitle stream packet by packet: same texts, same times, another codec."""

    def __init__(self, source, output, encoder: str):
        self.decoder = source.codec_context
        if not self.decoder.is_open:
            self.decoder.open()
        self.stream = output.add_stream(encoder)
        self.stream.time_base = source.time_base
        self.stream.codec_context.time_base = source.time_base
        self.stream.codec_context.subtitle_header = self.decoder.subtitle_header

    def convert(self, packet) -> list:
        """The output packets for one input packet: none for an empty (gap) cue, else one with the input's times."""
        cues = self.decoder.decode2(packet)
        if cues is None or not any(getattr(cue, "ass", b"") for cue in cues):
            return []
        encoded = self.stream.codec_context.encode_subtitle(cues)
        encoded.pts, encoded.dts, encoded.duration = packet.pts, packet.pts, packet.duration
        encoded.time_base = packet.time_base
        encoded.stream = self.stream
        return [encoded]
