"""The output film: :func:`check_output` refuses impossible output choices before any work,
:func:`join` writes the chunks' video packets and every other stream of the input into
the output container, atomically."""
from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av

from dmdnet.files import atomic_path
from film_restore.video.encoding import CODEC_NAME, EncoderChoice, choose_encoder
from film_restore.video.fields import FIELD_ORDER_CODES, is_interlaced
from film_restore.video.formats import RANGE_FULL, STORAGE_ERRNOS, StorageError, VideoError, av_error, open_input
from film_restore.video.probe import VideoInfo, probe
from film_restore.video.streams import FAMILY_SUFFIX, StreamRoute, SubtitleConverter, route_streams

# Video codecs each output container family takes (codec names as FFmpeg reports them).
_CONTAINER_VIDEO = {
    "mp4": {"h264", "hevc"},
    "mov": {"h264", "hevc", "prores", "dnxhd"},
    "matroska": {"h264", "hevc", "prores", "ffv1"},
    "mxf": {"dnxhd", "prores", "ffv1"},
}
_FORMAT_FAMILY = {"mp4": "mp4", "m4v": "mp4", "mov": "mov", "mkv": "matroska", "mxf": "mxf"}
# Time base of each container's timestamps (None: keeps the stream's own).
_CONTAINER_CLOCK = {"matroska": Fraction(1, 1000)}
# errno values that mean the output's storage, not its content, failed (its folder gone, too).
_STORAGE_ERRORS = STORAGE_ERRNOS | {errno.ENOENT}
# Statistics tags that describe the old encoding and would be wrong on the output.
_STALE_TAGS = ("bps", "number_of_frames", "number_of_bytes", "duration", "_statistics", "encoder")


@dataclass(frozen=True)
class OutputPlan:
    """What :func:`join` will write: container format, encoder, each other stream's route, dropped streams, warnings, start timecode."""

    path: Path
    format: str
    encoder: EncoderChoice
    routes: tuple[StreamRoute, ...]
    dropped_streams: tuple[tuple[int, str], ...]
    warnings: tuple[str, ...]
    timecode: str | None = None

    @property
    def copied_streams(self) -> tuple[int, ...]:
        """The input streams copied packet for packet (not converted)."""
        return tuple(route.index for route in self.routes if route.convert_to is None)


def _output_format(output_path: Path, info: VideoInfo) -> tuple[Path, str]:
    suffix = output_path.suffix.lower().lstrip(".")
    if not suffix:
        suffix = info.path.suffix.lower().lstrip(".")
        output_path = output_path.with_suffix(info.path.suffix)
    family = _FORMAT_FAMILY.get(suffix)
    if family is None:
        raise VideoError(f"cannot write a .{suffix} film: name the output .mkv, .mov, .mp4 or .mxf")
    return output_path, family


def check_output(output_path, info: VideoInfo, codec: str = "auto") -> OutputPlan:
    """Check early that the output can be written: VideoError naming the fix if not.

    The output container is the output path's extension (the input's if it has none).
    Refused: the same path as the input; a video codec the container does not carry
    (FFV1 only in .mkv; ProRes in .mov or .mkv; H.264/HEVC in .mp4, .mov, .mkv); an audio
    or subtitle stream the container cannot store even converted (the error names the
    containers that take it). Text subtitles are converted where they cannot be copied
    (mov_text <-> SubRip), the start timecode is kept (see :mod:`.streams`), data streams
    the muxer refuses are dropped and listed. Warns when the container cannot store the
    input's timestamps exactly (Matroska keeps milliseconds).
    """
    output_path = Path(output_path)
    choice = choose_encoder(info, codec)
    if output_path.exists() and info.path.exists() and os.path.samefile(output_path, info.path):
        raise VideoError(f"the output {output_path} is the input: choose another output path")
    output_path, family = _output_format(output_path, info)
    if not output_path.parent.is_dir():
        raise VideoError(f"the output folder {output_path.parent} does not exist: create it or choose another output path")
    video_codec = CODEC_NAME[choice.codec]
    allowed = _CONTAINER_VIDEO.get(family)
    if allowed is not None and video_codec not in allowed:
        takers = [FAMILY_SUFFIX[other] for other, codecs in _CONTAINER_VIDEO.items() if video_codec in codecs]
        raise VideoError(f"{choice.encoder} video cannot go into {output_path.suffix} ({family} takes {', '.join(sorted(allowed))}): "
                         f"name the output {' or '.join(takers)}, or choose another codec")
    warnings = [choice.note] if choice.note else []
    with open_input(info.path) as container:
        routes, dropped, timecode = route_streams(container, info.stream_index, family, output_path.suffix.lower())
        written = {route.index for route in routes} | {info.stream_index}
        starts = [stream.start_time * stream.time_base for stream in container.streams
                  if stream.start_time is not None and stream.index in written]
    warnings += [f"{route.describe()}: {route.codec} cannot go into {family}" for route in routes if route.convert_to]
    clock = _CONTAINER_CLOCK.get(family)
    if clock is not None and (info.time_base / clock).denominator != 1:
        warnings.append(f"{family} stores timestamps in units of {clock} s; the film's time base is {info.time_base}, "
                        "so timestamps are rounded to that unit (frame count and order kept); write .mp4/.mov to keep them exactly")
    if family == "matroska" and starts and min(starts) < 0:
        warnings.append(f"{family} cannot store negative timestamps: all streams are shifted by {float(-min(starts)):.3f} s "
                        "(synchronisation kept)")
    for index, reason in dropped:
        warnings.append(reason)
    return OutputPlan(output_path, family, choice, tuple(routes), tuple(dropped), tuple(warnings), timecode)


def _clean_metadata(metadata: dict) -> dict:
    return {key: value for key, value in metadata.items()
            if not any(key.lower().startswith(stale) for stale in _STALE_TAGS)}


def _chunk_packets(chunk_paths, path_for_errors):
    """(packet, chunk index, position within chunk) of all chunks' video packets in order."""
    for number, chunk in enumerate(chunk_paths):
        chunk = Path(chunk)
        try:
            container = av.open(str(chunk))
        except (av.FFmpegError, FileNotFoundError):
            raise VideoError(f"chunk {chunk} is missing or unreadable: encode that chunk again") from None
        try:
            stream = container.streams.video[0]
            position = 0
            for packet in container.demux(stream):
                if packet.size == 0 and packet.dts is None:
                    continue
                if packet.is_corrupt:
                    raise VideoError(f"chunk {chunk.name} has a corrupt packet: encode that chunk again")
                if position == 0 and not packet.is_keyframe:
                    raise VideoError(f"chunk {chunk.name} does not start with a keyframe: encode it again with ChunkWriter")
                yield packet, number, position
                position += 1
            if position == 0:
                raise VideoError(f"chunk {chunk.name} has no video packets: encode that chunk again")
        except av.FFmpegError as error:
            raise VideoError(f"chunk {chunk.name} is damaged ({error}): encode that chunk again") from None
        finally:
            container.close()


def join(chunk_paths: Sequence, input_path, output_path, info: VideoInfo | None = None, *,
         frame_pts: Sequence[int] | None = None) -> OutputPlan:
    """Write the output film: the chunks' video packets in order plus every other stream of the input.

    Video: the chunk files' packets, unchanged, with their pts (the input's pts, exact where
    the output container's clock can store them, see :func:`check_output`). All chunks must
    share codec, size, pixel format and codec headers (they do when written by
    :class:`ChunkWriter` with the same codec), start with a keyframe and follow each other
    in time. frame_pts (the scan's) makes join check that the chunks hold exactly those
    frames. Other streams go as :func:`check_output` routes them (copied packet for packet,
    or text subtitles converted), with their metadata, language and dispositions; the
    container's metadata, chapters and start timecode are kept; the video stream keeps the
    input's stream metadata, frame rate, sample aspect ratio, colour tags and field order (from info,
    whatever the chunk container kept). A muxer failure names the output step that failed.

    Atomic: written to a temporary file beside the output and renamed on success; on any
    error nothing is at output_path (an older file there is left as it was) and the input
    is only read. Returns the :class:`OutputPlan` (its warnings are worth logging).
    """
    input_path = Path(input_path)
    info = info or probe(input_path)
    chunk_paths = [Path(chunk) for chunk in chunk_paths]
    if not chunk_paths:
        raise VideoError("join needs at least one chunk file: encode the chunks first")
    signature = _chunk_signature(chunk_paths, info)
    codec = {name: key for key, name in CODEC_NAME.items()}.get(signature[0])
    if codec is None:
        raise VideoError(f"chunk {chunk_paths[0].name} holds {signature[0]} video: encode chunks with ChunkWriter")
    plan = check_output(output_path, info, codec)
    output_path = plan.path
    steps = _OutputSteps(output_path)
    try:
        with atomic_path(output_path) as temp:
            _write_output(chunk_paths, input_path, temp, info, plan, frame_pts, steps)
    except av.FFmpegError as error:
        raise steps.failure(error) from None
    return plan


def _chunk_signature(chunk_paths, info):
    """The chunks' common (codec, width, height, pix_fmt, extradata); VideoError if they differ or do not fit the film."""
    signatures = []
    for chunk in chunk_paths:
        try:
            with av.open(str(chunk)) as container:
                if not container.streams.video:
                    raise VideoError(f"chunk {chunk.name} has no video stream: encode that chunk again")
                context = container.streams.video[0].codec_context
                signatures.append((context.name, context.width, context.height, context.pix_fmt, bytes(context.extradata or b"")))
        except (av.FFmpegError, FileNotFoundError, IsADirectoryError):
            raise VideoError(f"chunk {chunk} is missing or unreadable: encode that chunk again") from None
    for chunk, signature in zip(chunk_paths, signatures):
        if signature != signatures[0]:
            raise VideoError(f"chunk {chunk.name} was encoded differently from {chunk_paths[0].name} "
                             f"({signature[:4]} vs {signatures[0][:4]}): encode all chunks with the same codec")
    if (signatures[0][1], signatures[0][2]) != (info.width, info.height):
        raise VideoError(f"the chunks are {signatures[0][1]}x{signatures[0][2]}, the film {info.width}x{info.height}: encode chunks from this film")
    return signatures[0]


class _OutputSteps:
    """Names the step of writing the output in progress, so that a muxer failure says which one failed."""

    def __init__(self, output_path: Path):
        self.output_path = output_path
        self.step = "creating the file"

    def failure(self, error: Exception) -> VideoError:
        message = str(error).replace("\n", " ")
        storage = isinstance(error, OSError) and error.errno in _STORAGE_ERRORS
        fix = ("check that the output folder exists, is writable and has room" if storage
               else "name the output .mkv (it takes the most streams), or leave out the stream named")
        return (StorageError if storage else VideoError)(
            f"writing the output {self.output_path.name} failed while {self.step} ({message}); the input is fine: {fix}")


def _add_video(output, source, template, info, plan):
    """The output's video stream: the chunks' codec with the input's timing, colour, aspect and tags."""
    in_video = source.streams[info.stream_index]
    out_video = output.add_stream_from_template(template)
    out_video.time_base = info.time_base
    context = out_video.codec_context
    if info.average_rate:
        context.framerate = info.average_rate  # the muxers' timecode needs the frame rate
    if plan.format in ("mp4", "mov") and plan.encoder.codec == "x265":
        context.codec_tag = "hvc1"  # parameter sets are out of band; QuickTime plays only hvc1
    context.colorspace, context.color_primaries, context.color_trc = info.colorspace, info.color_primaries, info.color_trc
    context.color_range = RANGE_FULL if info.pix_fmt.startswith("yuvj") else info.color_range
    if info.sample_aspect_ratio:
        context.sample_aspect_ratio = info.sample_aspect_ratio
    if is_interlaced(info.field_order):
        context.field_order = FIELD_ORDER_CODES[info.field_order]  # the container's tag (MOV fiel, Matroska FieldOrder)
    out_video.metadata.update(_clean_metadata(dict(in_video.metadata)))
    out_video.disposition = in_video.disposition
    if info.display.display_matrix:
        out_video.set_display_matrix(info.display.display_matrix)
    if plan.timecode:
        out_video.metadata["timecode"] = plan.timecode  # a tmcd track in MOV/MP4, a tag elsewhere
        if plan.format in ("matroska", "mxf"):
            output.metadata["timecode"] = plan.timecode
    return out_video


def _add_other(output, stream, route):
    """(output stream, converter or None) for one routed input stream, with its tags and dispositions."""
    converter = None
    if route.convert_to is None:
        copy = output.add_stream_from_template(stream)
        copy.time_base = stream.time_base
    else:
        converter = SubtitleConverter(stream, output, route.convert_to)
        copy = converter.stream
    copy.metadata.update(_clean_metadata(dict(stream.metadata)))
    copy.disposition = stream.disposition
    return copy, converter


def _write_output(chunk_paths, input_path, temp, info, plan, frame_pts, steps):
    source = open_input(input_path)
    first_chunk = av.open(str(chunk_paths[0]))
    output = None
    try:
        output = av.open(str(temp), "w", format=plan.format)
        output.metadata.update(_clean_metadata(dict(source.metadata)))
        template = first_chunk.streams.video[0]
        out_video = _add_video(output, source, template, info, plan)
        outputs, converters, names = {}, {}, {}
        for route in plan.routes:
            outputs[route.index], converters[route.index] = _add_other(output, source.streams[route.index], route)
            names[route.index] = f"output stream #{outputs[route.index].index} ({route.describe()})"
        chapters = source.chapters()
        if chapters:
            output.set_chapters(chapters)
        steps.step = "writing the header (streams: video " + ", ".join(
            [plan.encoder.encoder] + [route.describe() for route in plan.routes]) + ")"
        output.start_encoding()

        def mux_other(packet):
            steps.step = f"writing {names[packet.stream_index]} at {_seconds(packet)}"
            converter = converters[packet.stream_index]
            for written in (converter.convert(packet) if converter else [packet]):
                written.stream = outputs[packet.stream_index]
                output.mux(written)

        video_time_base = template.time_base
        others = [source.streams[route.index] for route in plan.routes]
        other_packets = _input_packets(source, others, input_path) if others else iter(())
        video_packets = _chunk_packets(chunk_paths, input_path)

        def key(packet):
            stamp = packet.dts if packet.dts is not None else packet.pts
            return float(stamp * packet.time_base) if stamp is not None else -math.inf

        count = 0
        previous = None
        pending_other = next(other_packets, None)
        for packet, number, _ in video_packets:
            pts_input = packet.pts * video_time_base / info.time_base if packet.pts is not None else None
            if pts_input is None or pts_input.denominator != 1:
                raise VideoError(f"chunk {chunk_paths[number].name} has a pts off the film's time base: encode it with ChunkWriter")
            pts_input = int(pts_input)
            if previous is not None and pts_input <= previous:
                raise VideoError(f"chunk {chunk_paths[number].name} overlaps or precedes the chunk before it "
                                 f"(pts {pts_input} after {previous}): give the chunks in order, each once")
            if frame_pts is not None and (count >= len(frame_pts) or frame_pts[count] != pts_input):
                expected = frame_pts[count] if count < len(frame_pts) else "no frame"
                raise VideoError(f"output frame {count} from chunk {chunk_paths[number].name} has pts {pts_input}, "
                                 f"the film has {expected}: encode the missing or wrong chunks again")
            while pending_other is not None and key(pending_other) <= key(packet):
                mux_other(pending_other)
                pending_other = next(other_packets, None)
            steps.step = f"writing the video from chunk {chunk_paths[number].name} at {_seconds(packet)}"
            packet.stream = out_video
            output.mux(packet)
            previous = pts_input
            count += 1
        if frame_pts is not None and count != len(frame_pts):
            raise VideoError(f"the chunks hold {count} frames, the film {len(frame_pts)}: encode the missing chunks")
        while pending_other is not None:
            mux_other(pending_other)
            pending_other = next(other_packets, None)
        steps.step = "finishing the file (the container's index and trailer)"
        output.close()
        output = None
    finally:
        if output is not None:
            try:
                output.close()
            except Exception:
                pass
        first_chunk.close()
        source.close()


def _seconds(packet) -> str:
    stamp = packet.pts if packet.pts is not None else packet.dts
    return "the start" if stamp is None else f"{float(stamp * packet.time_base):.3f} s"


def _input_packets(source, streams, path):
    try:
        for packet in source.demux(*streams):
            if packet.size == 0 and packet.dts is None and packet.pts is None:
                continue  # end-of-stream markers
            if packet.is_corrupt:
                raise VideoError(f"{Path(path).name}: a corrupt packet in stream #{packet.stream_index}; the file is damaged: repair it")
            yield packet
    except av.FFmpegError as error:
        raise av_error(path, "reading the other streams", error) from None
