"""Chunk encoding: which encoder keeps a film's codec family and pixel format
(:func:`choose_encoder`), and :class:`ChunkWriter`, which encodes one chunk of pictures to a chunk file."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av

from dmdnet.files import temporary_beside
from film_restore.video.fields import FIELD_ORDER_CODES, FieldFlagger, is_interlaced
from film_restore.video.formats import PIX_FMTS, RANGE_FULL, STORAGE_ERRNOS, StorageError, VideoError
from film_restore.video.picture import Picture
from film_restore.video.probe import VideoInfo

CODECS = ("auto", "x264", "x265", "prores", "dnxhd", "ffv1")

_ENCODERS = {"x264": "libx264", "x265": "libx265", "prores": "prores_ks", "dnxhd": "dnxhd", "ffv1": "ffv1"}
CODEC_NAME = {"x264": "h264", "x265": "hevc", "prores": "prores", "dnxhd": "dnxhd", "ffv1": "ffv1"}  # the codec FFmpeg names
_FAMILY = {"h264": "x264", "hevc": "x265", "prores": "prores", "dnxhd": "dnxhd", "ffv1": "ffv1"}
# DNxHR profile for each pixel format (DNxHD's fixed bit rates fit few sizes; DNxHR fits any from 256 wide).
_DNXHR_PROFILES = {"yuv422p": "dnxhr_hq", "yuv422p10le": "dnxhr_hqx", "yuv444p10le": "dnxhr_444"}
_CODEC_PIX_FMTS = {
    "x264": {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p",
             "yuv420p10le", "yuv422p10le", "yuv444p10le"},
    "x265": {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p",
             "yuv420p10le", "yuv422p10le", "yuv444p10le", "yuv420p12le", "yuv422p12le", "yuv444p12le"},
    "prores": {"yuv422p10le", "yuv444p10le"},
    "dnxhd": set(_DNXHR_PROFILES),
    "ffv1": set(PIX_FMTS),
}
# Encoders that code interlaced pictures (the frames' fields and their order), and the codec flags they need.
_INTERLACED_FLAGS = {"x264": ("interlaced_dct", "interlaced_me"), "prores": ("interlaced_dct",), "ffv1": ()}
# Quality settings (constant quality, visually transparent; B-frames off so that chunks
# join with monotonic DTS and every chunk opens with an IDR keyframe).
X264_CRF = 14
X265_CRF = 16
PRESET = "medium"


@dataclass(frozen=True)
class EncoderChoice:
    """How chunks are encoded: codec key, FFmpeg encoder, pixel format it gets, options, chunk container."""

    codec: str
    encoder: str
    pix_fmt: str
    options: dict
    chunk_format: str
    note: str = ""
    interlaced: bool = False  # pictures coded as interlaced, in the film's field order


def choose_encoder(info: VideoInfo, codec: str = "auto") -> EncoderChoice:
    """The encoder for chunks of this film.

    auto keeps the input's codec family at high quality: h264 -> libx264 (CRF 14; this
    build's libx264 encodes 8- and 10-bit, so 10-bit H.264 stays 10-bit), hevc -> libx265
    (CRF 16, main10/main12 for 10/12-bit), prores -> prores_ks (HQ for 4:2:2, 4444 for 4:4:4),
    dnxhd (DNxHD or DNxHR) -> DNxHR (HQ 8-bit, HQX 10-bit 4:2:2, 444),
    ffv1 -> ffv1; any other input codec, or a pixel format the family's encoder cannot keep
    (12-bit H.264, 4:2:0 ProRes, grey), -> ffv1 (lossless, level 3, intra-only, slice CRCs).
    An explicit codec that cannot keep the input's bit depth and chroma subsampling is a VideoError.
    An interlaced film is coded interlaced in its field order by x264, ProRes and FFV1; DNxHR
    and x265 code it as progressive frames (both fields still woven in each), which the note says.
    """
    if codec not in CODECS:
        raise VideoError(f"unknown codec {codec!r}: choose one of {', '.join(CODECS)}")
    note = ""
    if codec == "auto":
        chosen = _FAMILY.get(info.codec, "ffv1")
        if info.pix_fmt not in _CODEC_PIX_FMTS[chosen]:
            note = f"{_ENCODERS[chosen]} cannot keep {info.pix_fmt}; using lossless ffv1"
            chosen = "ffv1"
        elif chosen == "ffv1" and info.codec != "ffv1":
            note = f"no high-quality encoder of the {info.codec} family here; using lossless ffv1"
    else:
        chosen = codec
        if info.pix_fmt not in _CODEC_PIX_FMTS[chosen]:
            allowed = ", ".join(sorted(_CODEC_PIX_FMTS[chosen]))
            raise VideoError(f"codec {codec} cannot keep the film's {info.pix_fmt} (it takes {allowed}): "
                             "use codec='ffv1' (lossless, any format) or 'auto'")
    interlaced = is_interlaced(info.field_order) and chosen in _INTERLACED_FLAGS
    if is_interlaced(info.field_order) and not interlaced:
        note = "; ".join(filter(None, [note, f"{_ENCODERS[chosen]} cannot code interlaced pictures: the film's fields stay "
                                       f"woven but are coded as progressive frames (field order {info.field_order} tagged): "
                                       "use codec ffv1, prores or x264 to keep the interlacing"]))
    pix_fmt = info.pix_fmt
    hdr = info.display.encoder_parameters(chosen) if chosen in ("x264", "x265") else ""
    if info.display.hdr and not hdr:
        note = "; ".join(filter(None, [note, f"{_ENCODERS[chosen]} cannot carry the film's HDR mastering display and light "
                                       "level metadata (colour tags kept): use codec x265 to keep them"]))
    if chosen == "x264":
        options = {"crf": str(X264_CRF), "preset": PRESET, "x264-params": ":".join(filter(None, ["bframes=0:open-gop=0", hdr]))}
    elif chosen == "x265":
        options = {"crf": str(X265_CRF), "preset": PRESET,
                   "x265-params": ":".join(filter(None, ["bframes=0:open-gop=0:log-level=error", hdr]))}
    elif chosen == "dnxhd":
        options = {"profile": _DNXHR_PROFILES[pix_fmt]}
    elif chosen == "prores":
        options = {"profile": "4444" if pix_fmt.startswith("yuv444") else "hq", "vendor": "apl0"}
    else:
        pix_fmt = pix_fmt.replace("yuvj", "yuv")  # ffv1 takes the layout; full range goes in the tags
        options = {"level": "3", "g": "1", "slicecrc": "1", "context": "1"}
    return EncoderChoice(chosen, _ENCODERS[chosen], pix_fmt, options, "mov" if chosen in ("prores", "dnxhd") else "nut", note,
                         interlaced)


class ChunkWriter:
    """Encodes one chunk of pictures to a video-only chunk file, atomically.

    ``with ChunkWriter(path, info, codec) as writer: writer.write(picture, pts)``. The file
    appears at path only when the block ends without an exception (a temporary file beside
    it is renamed); otherwise nothing is left at path. Frames keep the given pts exactly
    (strictly increasing, in info.time_base), the film's size, sample aspect ratio, pixel
    format (yuvj formats become their yuv layout tagged full range for ffv1) and colour
    tags. The chunk container is NUT (exact timestamps in any time base), or QuickTime for
    ProRes and DNxHR, whatever the file's name; only :func:`join` needs to read it. See
    :func:`choose_encoder` for codecs; chunks are encoded without B-frames and start with a
    keyframe, so they join with monotonic DTS.
    """

    def __init__(self, path, info: VideoInfo, codec: str = "auto"):
        self.path = Path(path)
        self.info = info
        self.choice = choose_encoder(info, codec)
        self.frames_written = 0
        self._temp = temporary_beside(self.path)
        self._container = None
        self._stream = None
        self._last_pts = None
        self._flag_fields = None

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:
            self.abort()
        return False

    def _open(self):
        info, choice = self.info, self.choice
        try:
            container = av.open(str(self._temp), "w", format=choice.chunk_format)
        except av.FFmpegError as error:
            raise StorageError(f"cannot create chunk file {self._temp} ({error}): check the folder is writable") from None
        self._container = container
        stream = container.add_stream(choice.encoder)
        context = stream.codec_context
        context.width, context.height = info.width, info.height
        context.pix_fmt = choice.pix_fmt
        context.time_base = info.time_base
        stream.time_base = info.time_base
        if info.average_rate:
            context.framerate = info.average_rate
        if info.sample_aspect_ratio:
            context.sample_aspect_ratio = info.sample_aspect_ratio
        context.colorspace = info.colorspace
        context.color_range = RANGE_FULL if info.pix_fmt.startswith("yuvj") else info.color_range
        context.color_primaries = info.color_primaries
        context.color_trc = info.color_trc
        context.max_b_frames = 0
        if is_interlaced(info.field_order):
            context.field_order = FIELD_ORDER_CODES[info.field_order]
        if choice.interlaced:
            for flag in _INTERLACED_FLAGS[choice.codec]:
                context.flags |= getattr(av.codec.context.Flags, flag)
            self._flag_fields = FieldFlagger(info.field_order, info.width, info.height, choice.pix_fmt)
        context.thread_type = "AUTO"
        context.options = dict(choice.options)
        self._stream = stream

    def write(self, picture: Picture, pts: int) -> None:
        """Encode one picture with this pts (an int in info.time_base, greater than the previous one)."""
        if pts is None:
            raise VideoError("a frame without a timestamp cannot be written: remux the film into mkv or mp4 first (ffmpeg -i IN -map 0 -c copy OUT.mkv)")
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise VideoError(f"chunk frames must have increasing pts, got {pts} after {self._last_pts}: write frames in order, once each")
        if (picture.width, picture.height) != (self.info.width, self.info.height) or \
                picture.pix_fmt.replace("yuvj", "yuv") != self.info.pix_fmt.replace("yuvj", "yuv"):
            raise VideoError(f"picture {picture.width}x{picture.height} {picture.pix_fmt} does not match the film's "
                             f"{self.info.width}x{self.info.height} {self.info.pix_fmt}: write the film's own pictures")
        if self._container is None:
            self._open()
        frame = picture.to_frame(self.choice.pix_fmt)
        frame.pts = pts
        frame.time_base = self.info.time_base
        if self._flag_fields is not None:
            frame = self._flag_fields(frame)
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except av.FFmpegError as error:
            if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
                raise StorageError(f"cannot write chunk file {self._temp} ({error}): check the folder is writable and has room") from None
            raise VideoError(f"encoding with {self.choice.encoder} failed ({error}): try codec='ffv1'") from None
        self._last_pts = pts
        self.frames_written += 1

    def close(self) -> None:
        """Finish the chunk and move it to path (VideoError if no frame was written)."""
        if self._container is None:
            if self.frames_written == 0 and not self.path.exists():
                raise VideoError(f"chunk {self.path.name} has no frames: write at least one picture")
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._container = None
        os.replace(self._temp, self.path)

    def abort(self) -> None:
        """Drop the chunk: close and delete the temporary file; path is not touched."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        try:
            self._temp.unlink()
        except FileNotFoundError:
            pass
