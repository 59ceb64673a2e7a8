"""Small archive masters made with PyAV for the output-container tests.

``make_master`` writes a short film (a moving gradient, 64 x 64 by default, or the pictures
given) with the streams an archive master carries: a start timecode (a QuickTime tmcd track
in MOV, the timecode tag elsewhere), audio tracks, text subtitles (``CUES``) and chapters,
progressive or interlaced. ``woven_frames`` makes interlaced pictures of a real clip (each
frame's fields from two consecutive frames). The ``*_cues`` / ``packets`` helpers read a film
back for stream-by-stream comparison.
"""
from __future__ import annotations

import struct
from fractions import Fraction

import av
import numpy as np

from film_restore.video.fields import FIELD_ORDER_CODES, FieldFlagger
from tests.media import clip_frames

# (start ms, end ms, text) of the subtitle cues every master carries.
CUES = ((40, 200, "Hello there"), (240, 440, "Second line"))
CHAPTERS = ((0, 240, "Opening"), (240, 480, "Ending"))
TIMECODE = "10:00:00:00"
AUDIO_RATE = 48000
# A minimal ASS header: what FFmpeg's text subtitle encoders need to open.
ASS_HEADER = (
    b"[Script Info]\r\nScriptType: v4.00+\r\nPlayResX: 384\r\nPlayResY: 288\r\n\r\n[V4+ Styles]\r\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
    b"Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, "
    b"MarginV, Encoding\r\nStyle: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\r\n\r\n"
    b"[Events]\r\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\r\n")


def _pictures(count, width, height):
    y, x = np.mgrid[0:height, 0:width]
    for index in range(count):
        red = (x * 4 + index * 9) % 256
        green = (y * 4 + index * 5) % 256
        yield np.stack([red, green, np.full_like(red, 128)], axis=2).astype(np.uint8)


def woven_frames(clip, count: int, size, order: str = "tt") -> list[np.ndarray]:
    """count interlaced RGB pictures of size (width, height) from a real clip: frame n's field shown first from the
    clip's frame 2n, the other from frame 2n + 1 (fields 1/50 s apart from a 25 fps clip: real motion between them)."""
    pictures = clip_frames(clip, 2 * count, size)
    first_row = 0 if order in ("tt", "bt") else 1
    woven = []
    for earlier, later in zip(pictures[::2], pictures[1::2]):
        frame = later.copy()
        frame[first_row::2] = earlier[first_row::2]
        woven.append(frame)
    return woven


def make_master(path, *, container: str = "mov", encoder: str = "prores_ks", pix_fmt: str = "yuv422p10le",
                options: dict | None = None, size=(64, 64), frames: int = 12, rate: int = 25,
                audio=(("pcm_s24le", "stereo"), ("aac", "stereo")), subtitles: str | None = "mov_text",
                timecode: str | None = TIMECODE, chapters: bool = True, colour: dict | None = None, pgs: bool = False,
                rotation: int | None = None, attachment: tuple[str, bytes] | None = None,
                images: list | None = None, field_order: str | None = None):
    """Write a master film to path and return path.

    colour: codec-context colour tags of the video; rotation: a display matrix rotating by
    that many degrees counter-clockwise; attachment: (file name, data) attached (Matroska only); pgs: add a Blu-ray (PGS) bitmap subtitle
    stream with one display set per cue (Matroska only). images: the pictures (uint8 RGB of size), else the gradient;
    field_order: code them interlaced ("tt", "bb"; the encoder's interlaced flags, each frame flagged, the stream tagged).
    """
    width, height = size
    if images is not None:
        frames = len(images)
    output = av.open(str(path), "w", format=container)
    output.metadata["title"] = "Archive master"
    video = output.add_stream(encoder, rate=rate, options=dict(options or {}))
    video.width, video.height, video.pix_fmt = width, height, pix_fmt
    for name, value in (colour or {}).items():
        setattr(video.codec_context, name, value)
    if rotation is not None:
        video.set_display_rotation(rotation)
    flag_fields = None
    if field_order is not None:
        video.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
        video.codec_context.field_order = FIELD_ORDER_CODES[field_order]
        flag_fields = FieldFlagger(field_order, width, height, pix_fmt)
    if timecode:
        video.metadata["timecode"] = timecode
        if container != "mov":
            output.metadata["timecode"] = timecode
    tracks = []
    for number, (codec, layout) in enumerate(audio):
        track = output.add_stream(codec, rate=AUDIO_RATE, layout=layout)
        track.metadata["language"] = ("eng", "fra", "deu", "ita")[number % 4]
        tracks.append(track)
    text = None
    if subtitles:
        text = output.add_stream(subtitles)
        text.time_base = Fraction(1, 1000)
        text.codec_context.subtitle_header = ASS_HEADER
        text.metadata["language"] = "eng"
    if attachment:
        output.add_attachment(attachment[0], "application/octet-stream", attachment[1])
    bitmaps = None
    if pgs:
        bitmaps = output.add_mux_stream("hdmv_pgs_subtitle")
        bitmaps.time_base = Fraction(1, 1000)
    if chapters:
        output.set_chapters([{"id": number + 1, "start": start, "end": end, "time_base": Fraction(1, 1000),
                              "metadata": {"title": title}} for number, (start, end, title) in enumerate(CHAPTERS)])
    output.start_encoding()
    for index, image in enumerate(_pictures(frames, width, height) if images is None else images):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
        frame.pts = index
        if flag_fields is not None:
            frame = flag_fields(frame)
        for packet in video.encode(frame):
            output.mux(packet)
    for packet in video.encode():
        output.mux(packet)
    rng = np.random.default_rng(1)
    samples = AUDIO_RATE * frames // rate
    for track in tracks:
        channels = track.codec_context.layout.nb_channels
        for start in range(0, samples, 1024):
            noise = (rng.standard_normal((channels, 1024)) * 0.1).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(noise, format="fltp", layout=track.codec_context.layout.name)
            frame.sample_rate, frame.pts = AUDIO_RATE, start
            for packet in track.encode(frame):
                output.mux(packet)
        for packet in track.encode():
            output.mux(packet)
    if text is not None:
        for number, (start, end, words) in enumerate(CUES):
            cue = av.subtitles.subtitle.SubtitleSet.create(f"{number},0,Default,,0,0,0,,{words}".encode(), 0, end - start, start)
            packet = text.codec_context.encode_subtitle(cue)
            packet.stream, packet.time_base = text, text.time_base
            output.mux(packet)
    for start, end, _ in CUES if bitmaps is not None else ():
        packet = av.Packet(_pgs_display_set(start * 90))
        packet.stream, packet.time_base = bitmaps, bitmaps.time_base
        packet.pts = packet.dts = start
        packet.duration = end - start
        output.mux(packet)
    output.close()
    return path


def _pgs_display_set(pts_90khz: int) -> bytes:
    """A minimal PGS display set: a presentation composition segment and an end segment."""
    def segment(kind, data):
        return b"PG" + struct.pack(">IIBH", pts_90khz, pts_90khz, kind, len(data)) + data
    composition = struct.pack(">HHBHBBBB", 64, 64, 0x10, 0, 0x80, 0, 0, 0)
    return segment(0x16, composition) + segment(0x80, b"")


def packets(path, index) -> list[bytes]:
    """The payloads of stream #index's packets, in order."""
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(container.streams[index]) if packet.size]


def cues(path) -> list[tuple[float, float, str]]:
    """(start s, end s, text) of the first subtitle stream's cues, times from the video's first frame; empty cues left out."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        origin = float((video.start_time or 0) * video.time_base)
        stream = container.streams.subtitles[0]
        decoder = stream.codec_context
        found = []
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            decoded = decoder.decode2(packet)
            texts = [cue.ass.decode().split(",", 8)[-1] for cue in decoded or () if cue.ass]
            if texts:
                start = float(packet.pts * packet.time_base) - origin
                found.append((round(start, 3), round(start + float(packet.duration * packet.time_base), 3), " ".join(texts)))
        return found


def chapters(path) -> list[tuple[float, str]]:
    """(start s, title) of each chapter."""
    with av.open(str(path)) as container:
        return [(round(float(chapter["start"] * chapter["time_base"]), 3), chapter["metadata"].get("title"))
                for chapter in container.chapters()]
