"""Film input and output: probing, frame-accurate reading, native-format blending, chunk encoding, joining.

Archival contract: nothing but face pixels changes. Frame count, every frame's timestamp
(variable frame rate included), resolution, sample aspect ratio, bit depth and chroma
subsampling, and colour tags are kept; every other stream of the input (all audio,
subtitles, data and attachments where the output container allows them), the container
metadata and chapters are copied packet for packet, never re-encoded.

The pipeline uses this module in three steps:

1. scan: ``for index, pts, picture in read_frames(path)`` once over the film, keeping every
   frame's pts (and thumbnails for shot detection);
2. per chunk: ``read_frames(path, first, last, frame_pts=all_pts)`` seeks to the chunk,
   ``picture.rgb()`` feeds face analysis, ``picture.blended(restored_rgb, alpha)`` puts
   the restored faces back in the picture's own pixel format, and a :class:`ChunkWriter`
   encodes the chunk to a chunk file;
3. :func:`join` puts the chunk files' video packets and all the input's other streams
   into the output. Call :func:`check_output` before any work to refuse impossible
   output choices early.

Frame numbers count decoded frames from 0 in presentation order. Timestamps (pts) are
integers in the input video stream's time base (:attr:`VideoInfo.time_base`).

Colour: Y'CbCr <-> R'G'B' uses explicit matrices chosen from the colour tags (BT.601,
BT.709, BT.2020 non-constant luminance, SMPTE 240M, FCC; unspecified means BT.709 from 720
lines up and BT.601 below) and the range (limited unless tagged full or a ``yuvj``
format). Chroma is upsampled by sample replication and downsampled by averaging over each
chroma sample's footprint, so the two directions are exact inverses.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import cv2
import numpy as np

from dmdnet.files import temporary_beside

__all__ = [
    "VideoError", "StreamSummary", "VideoInfo", "probe", "Picture", "read_frames",
    "EncoderChoice", "choose_encoder", "OutputPlan", "check_output", "ChunkWriter", "join",
    "SUPPORTED_PIX_FMTS", "CODECS",
]


class VideoError(ValueError):
    """Unreadable, truncated or unsupported input, or an impossible output choice (one line: the problem and the fix)."""


# pix_fmt -> (bit depth, log2 chroma width divisor, log2 chroma height divisor); None: no chroma.
_PIX_FMTS: dict[str, tuple[int, int | None, int | None]] = {
    "yuv420p": (8, 1, 1), "yuvj420p": (8, 1, 1), "yuv422p": (8, 1, 0), "yuvj422p": (8, 1, 0),
    "yuv444p": (8, 0, 0), "yuvj444p": (8, 0, 0),
    "yuv420p10le": (10, 1, 1), "yuv422p10le": (10, 1, 0), "yuv444p10le": (10, 0, 0),
    "yuv420p12le": (12, 1, 1), "yuv422p12le": (12, 1, 0), "yuv444p12le": (12, 0, 0),
    "gray": (8, None, None), "gray10le": (10, None, None), "gray12le": (12, None, None),
}
SUPPORTED_PIX_FMTS = tuple(_PIX_FMTS)

# FFmpeg enum values (AVColorSpace, AVColorRange).
_RANGE_LIMITED, _RANGE_FULL = 1, 2
_UNSPECIFIED = 2  # AVCOL_SPC/PRI/TRC_UNSPECIFIED
# AVColorSpace -> (Kr, Kb)
_MATRICES = {
    1: (0.2126, 0.0722),    # BT.709
    4: (0.30, 0.11),        # FCC
    5: (0.299, 0.114),      # BT.470BG (BT.601 625)
    6: (0.299, 0.114),      # SMPTE 170M (BT.601 525)
    7: (0.212, 0.087),      # SMPTE 240M
    9: (0.2627, 0.0593),    # BT.2020 non-constant luminance
    10: (0.2627, 0.0593),   # BT.2020 constant luminance: approximated by the NCL matrix
}

# Statistics tags that describe the old encoding and would be wrong on the output.
_STALE_TAGS = ("bps", "number_of_frames", "number_of_bytes", "duration", "_statistics", "encoder")


def _unsupported_format(pix_fmt, where: str) -> VideoError:
    return VideoError(
        f"{where}: pixel format {pix_fmt} is not supported (supported: {', '.join(SUPPORTED_PIX_FMTS)}); "
        f"convert the film first, e.g. ffmpeg -i IN -map 0 -c copy -c:v ffv1 -pix_fmt yuv444p10le OUT.mkv")


def _av_error(path, what: str, error: Exception) -> VideoError:
    message = str(error).replace("\n", " ")
    return VideoError(f"{Path(path).name}: {what} failed ({message}); the file is damaged, truncated or not a film: repair or re-export it")


# ----------------------------------------------------------------------------------- probe


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
    """What the header says about a film (fast to get: no frame is decoded).

    time_base: the video stream's time base; every pts here is an integer in it.
    average_rate: frames per second (the container's average; None if unknown); a
    variable-frame-rate film keeps its own timestamps regardless.
    frame_count: the header's frame count, else an estimate from duration x average rate,
    0 when neither is known; the scan (:func:`read_frames` over the film) gives the exact count.
    colorspace, color_range, color_primaries, color_trc: FFmpeg's enum values
    (AVColorSpace, AVColorRange, AVColorPrimaries, AVColorTransferCharacteristic; 2 and 0
    mean unspecified). container: FFmpeg's demuxer name (e.g. "mov,mp4,m4a,3gp,3g2,mj2").
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

    @property
    def chroma_subsampling(self) -> tuple[int, int] | None:
        """(log2 horizontal, log2 vertical) chroma divisors, None for grey."""
        _, sx, sy = _PIX_FMTS[self.pix_fmt]
        return None if sx is None else (sx, sy)


def _video_stream(container, path):
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError(f"{Path(path).name} has no video stream: give a film file")


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path} does not exist or is not a file: check the path")
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError(f"{path.name} is not a media file FFmpeg can read ({type(error).__name__}): "
                         "give a film file (mp4, mov, mkv, ...) that is complete") from None


def _fraction(value) -> Fraction | None:
    if value is None:
        return None
    value = Fraction(value)
    return value if value > 0 else None


def probe(path) -> VideoInfo:
    """The film's :class:`VideoInfo` from its headers; VideoError for a missing file, a file
    that is not media, no video stream or an unsupported pixel format."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        context = stream.codec_context
        pix_fmt = context.pix_fmt
        if pix_fmt is None:  # some codecs only tell after decoding a frame
            try:
                pix_fmt = next(container.decode(stream)).format.name
            except (StopIteration, av.FFmpegError):
                raise VideoError(f"{path.name}: its video stream has no decodable frame: repair or re-export it") from None
        if pix_fmt not in _PIX_FMTS:
            raise _unsupported_format(pix_fmt, path.name)
        rate = _fraction(stream.average_rate) or _fraction(stream.guessed_rate)
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
            bit_depth=_PIX_FMTS[pix_fmt][0], codec=context.name, time_base=Fraction(stream.time_base),
            average_rate=rate, frame_count=frame_count,
            colorspace=int(context.colorspace), color_range=int(context.color_range),
            color_primaries=int(context.color_primaries), color_trc=int(context.color_trc),
            sample_aspect_ratio=_fraction(context.sample_aspect_ratio), container=container.format.name,
            stream_index=stream.index, other_streams=tuple(others))


# --------------------------------------------------------------------------------- Picture


class _ColourModel:
    """Affine maps between Y'CbCr code values and R'G'B' on the 0..255 scale, exact inverses in float."""

    def __init__(self, colorspace: int, full_range: bool, bit_depth: int, height: int):
        if colorspace in _MATRICES:
            kr, kb = _MATRICES[colorspace]
        else:  # unspecified or unknown: the usual rule of players
            kr, kb = _MATRICES[1] if height >= 720 else _MATRICES[6]
        kg = 1.0 - kr - kb
        normalised = np.array([[kr, kg, kb],
                               [-kr / (2 - 2 * kb), -kg / (2 - 2 * kb), 0.5],
                               [0.5, -kg / (2 - 2 * kr), -kb / (2 - 2 * kr)]], dtype=np.float64)
        if full_range:
            peak = float((1 << bit_depth) - 1)
            scale = np.array([peak, peak, peak])
            offset = np.array([0.0, 1 << (bit_depth - 1), 1 << (bit_depth - 1)])
        else:
            unit = float(1 << (bit_depth - 8))
            scale = np.array([219.0, 224.0, 224.0]) * unit
            offset = np.array([16.0, 128.0, 128.0]) * unit
        forward = scale[:, None] * normalised / 255.0             # rgb255 -> yuv codes (minus offset)
        inverse = np.linalg.inv(forward)                           # yuv codes (minus offset) -> rgb255
        self.to_yuv = np.hstack([forward, offset[:, None]]).astype(np.float32)
        self.to_rgb = np.hstack([inverse, -(inverse @ offset)[:, None]]).astype(np.float32)
        self.luma_offset = float(offset[0])
        self.luma_to_grey = float(inverse[0, 0])                   # rgb255 grey level per luma code
        self.full_range = full_range


class Picture:
    """One decoded frame in its native planar pixel format.

    planes: (Y, U, V) or (Y,) for grey, read-only numpy arrays, uint8 for 8-bit and uint16
    for 10/12-bit formats (the value in its low bits); chroma planes are
    ceil(W / 2**sx) x ceil(H / 2**sy). Colour tags are FFmpeg's enum values.
    """

    __slots__ = ("planes", "pix_fmt", "colorspace", "color_range", "color_primaries", "color_trc", "_model")

    def __init__(self, planes, pix_fmt: str, colorspace: int = _UNSPECIFIED, color_range: int = 0,
                 color_primaries: int = _UNSPECIFIED, color_trc: int = _UNSPECIFIED):
        if pix_fmt not in _PIX_FMTS:
            raise _unsupported_format(pix_fmt, "Picture")
        depth, sx, sy = _PIX_FMTS[pix_fmt]
        dtype = np.uint8 if depth == 8 else np.uint16
        planes = tuple(planes)
        if len(planes) != (1 if sx is None else 3):
            raise ValueError(f"{pix_fmt} needs {1 if sx is None else 3} planes, got {len(planes)}")
        frozen = []
        for plane in planes:
            plane = np.asarray(plane)
            if plane.dtype != dtype or plane.ndim != 2:
                raise ValueError(f"{pix_fmt} planes must be 2-d {np.dtype(dtype).name}, got {plane.ndim}-d {plane.dtype}")
            if plane.flags.writeable:
                plane = plane.copy()
                plane.flags.writeable = False
            frozen.append(plane)
        height, width = frozen[0].shape
        if sx is not None:
            chroma = (-(-height >> sy), -(-width >> sx))
            if frozen[1].shape != chroma or frozen[2].shape != chroma:
                raise ValueError(f"{pix_fmt} {width}x{height} needs chroma planes of {chroma}, got {frozen[1].shape}, {frozen[2].shape}")
        self.planes = tuple(frozen)
        self.pix_fmt = pix_fmt
        self.colorspace = int(colorspace)
        self.color_range = int(color_range)
        self.color_primaries = int(color_primaries)
        self.color_trc = int(color_trc)
        self._model = None

    # ---- properties

    @property
    def height(self) -> int:
        return self.planes[0].shape[0]

    @property
    def width(self) -> int:
        return self.planes[0].shape[1]

    @property
    def bit_depth(self) -> int:
        return _PIX_FMTS[self.pix_fmt][0]

    @property
    def full_range(self) -> bool:
        return self.color_range == _RANGE_FULL or self.pix_fmt.startswith("yuvj")

    @property
    def max_code(self) -> int:
        return (1 << self.bit_depth) - 1

    def _colour(self) -> _ColourModel:
        if self._model is None:
            self._model = _ColourModel(self.colorspace, self.full_range, self.bit_depth, self.height)
        return self._model

    def __repr__(self) -> str:
        return f"Picture({self.width}x{self.height} {self.pix_fmt}, colorspace={self.colorspace}, range={self.color_range})"

    def same_pixels(self, other: "Picture") -> bool:
        """True when both pictures have bit-identical planes of the same layout and range (yuvjNNN counts as full-range yuvNNN)."""
        return (self.pix_fmt.replace("yuvj", "yuv") == other.pix_fmt.replace("yuvj", "yuv")
                and self.full_range == other.full_range and len(self.planes) == len(other.planes)
                and all(np.array_equal(a, b) for a, b in zip(self.planes, other.planes)))

    # ---- conversion with PyAV frames

    @classmethod
    def from_frame(cls, frame: "av.VideoFrame") -> "Picture":
        """Copy a decoded PyAV frame's planes; VideoError for a pixel format not supported here."""
        name = frame.format.name
        if name not in _PIX_FMTS:
            raise _unsupported_format(name, "decoded frame")
        dtype = np.dtype(np.uint8) if _PIX_FMTS[name][0] == 8 else np.dtype(np.uint16)
        planes = []
        for plane in frame.planes:
            data = np.frombuffer(plane, dtype=dtype).reshape(-1, plane.line_size // dtype.itemsize)
            array = np.array(data[:plane.height, :plane.width])  # own copy
            array.flags.writeable = False
            planes.append(array)
        return cls(planes, name, int(frame.colorspace), int(frame.color_range),
                   int(frame.color_primaries), int(frame.color_trc))

    def to_frame(self, pix_fmt: str | None = None) -> "av.VideoFrame":
        """A new PyAV frame with these pixels (pix_fmt may relabel yuvjNNN as yuvNNN, the same layout)."""
        name = pix_fmt or self.pix_fmt
        if name != self.pix_fmt and name.replace("yuvj", "yuv") != self.pix_fmt.replace("yuvj", "yuv"):
            raise ValueError(f"cannot relabel {self.pix_fmt} as {name}")
        frame = av.VideoFrame(self.width, self.height, name)
        for plane, array in zip(frame.planes, self.planes):
            row = plane.line_size // array.itemsize
            target = np.frombuffer(plane, dtype=array.dtype).reshape(-1, row)
            target[:array.shape[0], :array.shape[1]] = array
        frame.colorspace = self.colorspace
        frame.color_range = _RANGE_FULL if self.full_range else self.color_range
        frame.color_primaries = self.color_primaries
        frame.color_trc = self.color_trc
        return frame

    # ---- colour

    def _yuv_full(self, y0=0, y1=None, x0=0, x1=None) -> np.ndarray:
        """H x W x 3 native-typed Y, U, V of a rectangle, chroma replicated to every pixel."""
        y1 = self.height if y1 is None else y1
        x1 = self.width if x1 is None else x1
        luma = self.planes[0][y0:y1, x0:x1]
        _, sx, sy = _PIX_FMTS[self.pix_fmt]
        if sx is None:
            return luma
        cy0, cx0 = y0 >> sy, x0 >> sx
        cy1, cx1 = -(-y1 >> sy), -(-x1 >> sx)
        chroma = []
        for plane in self.planes[1:]:
            part = plane[cy0:cy1, cx0:cx1]
            if sx or sy:
                part = cv2.resize(part, (part.shape[1] << sx, part.shape[0] << sy), interpolation=cv2.INTER_NEAREST)
                oy, ox = y0 - (cy0 << sy), x0 - (cx0 << sx)
                part = part[oy:oy + (y1 - y0), ox:ox + (x1 - x0)]
            chroma.append(part)
        return cv2.merge([np.ascontiguousarray(luma), np.ascontiguousarray(chroma[0]), np.ascontiguousarray(chroma[1])])

    def rgb_float(self) -> np.ndarray:
        """float32 H x W x 3 R'G'B' on the 0..255 scale, keeping the full precision of 10/12-bit.

        Not clipped: footage below black or above white (out of gamut) gives values a little
        outside 0..255, so that :meth:`blended` can give them back exactly.
        """
        model = self._colour()
        yuv = self._yuv_full()
        if yuv.ndim == 2:  # grey
            grey = (yuv.astype(np.float32) - model.luma_offset) * model.luma_to_grey
            return np.repeat(grey[:, :, None], 3, axis=2)
        return cv2.transform(yuv.astype(np.float32), model.to_rgb)

    def rgb(self) -> np.ndarray:
        """uint8 H x W x 3 RGB for face analysis: rgb_float clipped and rounded (within 1 level; a fast fixed-point path for 8-bit)."""
        model = self._colour()
        yuv = self._yuv_full()
        if yuv.ndim == 2:
            grey = np.clip((yuv.astype(np.float32) - model.luma_offset) * model.luma_to_grey + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if yuv.dtype == np.uint8:
            return cv2.transform(yuv, model.to_rgb)  # saturating, rounded
        return np.minimum(cv2.transform(yuv, model.to_rgb), 255).astype(np.uint8)

    def blended(self, rgb_float: np.ndarray, alpha: np.ndarray) -> "Picture":
        """A new Picture with restored RGB blended in with alpha, in this picture's own format.

        rgb_float: float32 H x W x 3 on the 0..255 scale (the full frame); alpha: float32
        H x W in 0..1 (values outside are clipped). Luma: Y = Y0 + alpha * (Y(rgb) - Y0).
        Chroma: C = C0 + mean over the sample's footprint of alpha * (C(rgb) - C0), which is
        the footprint's mean alpha times the alpha-weighted mean of the target chroma. Every
        sample whose alpha (for chroma: every alpha in its footprint) is 0 keeps its exact
        value; the others are rounded to nearest and clipped to the codes of the bit depth
        (0..2**bits-1: sub-black and super-white of the original survive a round trip).
        Only the bounding rectangle of alpha > 0 is computed; with no alpha > 0 anywhere
        this picture itself is returned (pictures are immutable).
        """
        height, width = self.height, self.width
        rgb_float = np.asarray(rgb_float)
        alpha = np.asarray(alpha)
        if rgb_float.shape != (height, width, 3):
            raise ValueError(f"restored RGB must be {height} x {width} x 3 (the full frame), got {rgb_float.shape}")
        if alpha.shape != (height, width):
            raise ValueError(f"alpha must be {height} x {width} (the full frame), got {alpha.shape}")
        rows = np.flatnonzero((alpha > 0).any(axis=1))
        if rows.size == 0:
            return self
        columns = np.flatnonzero((alpha[rows[0]:rows[-1] + 1] > 0).any(axis=0))
        _, sx, sy = _PIX_FMTS[self.pix_fmt]
        gx, gy = (1, 1) if sx is None else (1 << sx, 1 << sy)
        # The rectangle, widened to whole chroma footprints.
        y0, y1 = rows[0] - rows[0] % gy, min(-(-(rows[-1] + 1) // gy) * gy, height)
        x0, x1 = columns[0] - columns[0] % gx, min(-(-(columns[-1] + 1) // gx) * gx, width)
        a = np.clip(alpha[y0:y1, x0:x1].astype(np.float32, copy=False), 0.0, 1.0)
        if not np.isfinite(a).all():
            raise ValueError("alpha must be finite numbers, got NaN")
        colour = np.ascontiguousarray(rgb_float[y0:y1, x0:x1], dtype=np.float32)
        model = self._colour()
        top = float(self.max_code)
        dtype = self.planes[0].dtype
        target = cv2.transform(colour, model.to_yuv)           # h x w x 3 code values, unrounded
        touched = a > 0

        luma0 = self.planes[0][y0:y1, x0:x1]
        current = luma0.astype(np.float32)
        new = current + a * (target[..., 0] - current)
        new = np.clip(np.rint(new), 0, top).astype(dtype)
        luma = self.planes[0].copy()
        luma[y0:y1, x0:x1] = np.where(touched, new, luma0)
        planes = [luma]

        if sx is not None:
            h, w = y1 - y0, x1 - x0
            ch, cw = -(-h // gy), -(-w // gx)
            cy0, cx0 = y0 // gy, x0 // gx
            pad = ((0, ch * gy - h), (0, cw * gx - w))

            def footprint_sum(values):
                if pad[0][1] or pad[1][1]:
                    values = np.pad(values, pad)
                return values.reshape(ch, gy, cw, gx).sum(axis=(1, 3))

            count = footprint_sum(np.ones((h, w), np.float32)) if (pad[0][1] or pad[1][1]) else float(gx * gy)
            weight = footprint_sum(a)
            mask = weight > 0
            for k in (1, 2):
                chroma0 = self.planes[k][cy0:cy0 + ch, cx0:cx0 + cw]
                current = chroma0.astype(np.float32)
                up = current if gx == gy == 1 else cv2.resize(current, (cw * gx, ch * gy), interpolation=cv2.INTER_NEAREST)[:h, :w]
                delta = footprint_sum(a * (target[..., k] - up)) / count
                new = np.clip(np.rint(current + delta), 0, top).astype(dtype)
                plane = self.planes[k].copy()
                plane[cy0:cy0 + ch, cx0:cx0 + cw] = np.where(mask, new, chroma0)
                planes.append(plane)
        result = Picture.__new__(Picture)
        for array in planes:
            array.flags.writeable = False
        result.planes = tuple(planes)
        result.pix_fmt = self.pix_fmt
        result.colorspace, result.color_range = self.colorspace, self.color_range
        result.color_primaries, result.color_trc = self.color_primaries, self.color_trc
        result._model = self._model
        return result


# ----------------------------------------------------------------------------- read_frames


def read_frames(path, first: int = 0, last: int | None = None,
                frame_pts: Sequence[int] | None = None) -> Iterator[tuple[int, int | None, Picture]]:
    """Yield (frame_index, pts, picture) for decoded frames first..last (inclusive).

    Frame indices count decoded frames from 0 in presentation order; last=None reads to the end.
    frame_pts: every frame's pts from an earlier full scan. With it, a range that does not
    start at frame 0 is reached by seeking (to a keyframe at or before the first frame's
    pts, checked, stepping further back if the container lands after it) and decoding
    forward; without it, or when the pts are missing or not strictly increasing, or seeking
    proves unreliable, frames are decoded from the start. Every yielded frame's pts is
    checked against frame_pts.

    Raises VideoError (when iterated) for a decoding error, a corrupt packet, a film that
    ends before ``last`` (or before len(frame_pts) frames, or before the header's frame
    count when reading a whole film without frame_pts), or frames whose pts disagree with
    frame_pts. pts is None only for frames that carry no timestamp (raw streams).
    """
    path = Path(path)
    if first < 0 or (last is not None and last < first):
        raise ValueError(f"read_frames needs 0 <= first <= last, got first={first}, last={last}")
    pts_list = None
    if frame_pts is not None:
        pts_list = [None if value is None else int(value) for value in frame_pts]
        if last is None:
            last = len(pts_list) - 1
        if last >= len(pts_list):
            raise ValueError(f"frame {last} asked, but the scan's frame_pts has {len(pts_list)} frames")
        if first > last:
            return iter(())
    return _read(path, first, last, pts_list)


def _reliable(pts_list) -> bool:
    if pts_list is None or any(value is None for value in pts_list):
        return False
    return all(b > a for a, b in zip(pts_list, pts_list[1:]))


def _read(path, first, last, pts_list):
    if first > 0 and _reliable(pts_list):
        resume = yield from _read_seeking(path, first, last, pts_list)
        if resume is None:
            return
        first = resume
    yield from _read_sequential(path, first, last, pts_list)


def _configure_decoder(stream):
    stream.codec_context.thread_type = "AUTO"


def _packets(container, stream, path):
    for packet in container.demux(stream):
        if packet.is_corrupt:
            raise VideoError(f"{path.name}: a corrupt video packet at pts {packet.pts}; the file is damaged or truncated: repair or re-export it")
        yield packet


def _frames(packets, path):
    try:
        for packet in packets:
            for frame in packet.decode():
                if frame.is_corrupt:
                    raise VideoError(f"{path.name}: the frame at pts {frame.pts} decodes corrupt; the file is damaged: repair or re-export it")
                yield frame
    except av.FFmpegError as error:
        raise _av_error(path, "decoding", error) from None


def _check_pts(path, index, pts, pts_list):
    if pts_list is not None and index < len(pts_list) and pts != pts_list[index]:
        raise VideoError(f"{path.name}: frame {index} has pts {pts} but the scan found {pts_list[index]}; "
                         "the file is truncated, damaged or changed since the scan: repair it or scan it again")


class _EndTracker:
    """Follows the demuxed packets' end (pts + duration) and whether every packet had a duration."""

    def __init__(self):
        self.end = None
        self.durations = True

    def watch(self, packets):
        for packet in packets:
            if packet.pts is not None and packet.size:
                self.durations = self.durations and bool(packet.duration)
                end = packet.pts + (packet.duration or 0)
                self.end = end if self.end is None else max(self.end, end)
            yield packet


def _read_sequential(path, first, last, pts_list):
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        _configure_decoder(stream)
        header_frames = int(stream.frames or 0)
        index = -1
        tracker = _EndTracker()
        for frame in _frames(tracker.watch(_packets(container, stream, path)), path):
            index += 1
            _check_pts(path, index, frame.pts, pts_list)
            if index < first:
                continue
            yield index, frame.pts, Picture.from_frame(frame)
            if last is not None and index >= last:
                return
        count = index + 1
        if last is not None:
            raise VideoError(f"{path.name} ended after {count} frames, frame {last} was asked; "
                             "the file is truncated or changed since the scan: repair it or scan it again")
        if header_frames and count < header_frames:
            raise VideoError(f"{path.name} decoded to {count} frames but its header promises {header_frames}; "
                             "the file is truncated or damaged: repair or re-export it")
        if not header_frames and tracker.end is not None:
            _check_duration(path, container, stream, tracker.end, tracker.durations)
    finally:
        container.close()


def _header_seconds(container, stream) -> tuple[float | None, bool]:
    """(the video's end in seconds as the header states it, whether that is the video stream's own)."""
    if stream.duration:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base), True
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds), True
        except ValueError:
            pass
    if container.duration:
        return ((container.start_time or 0) + container.duration) / av.time_base, False
    return None, False


def _check_duration(path, container, stream, end_pts, known_duration):
    """Without a frame count in the header, a film whose frames stop before its stated duration is truncated."""
    stated, own = _header_seconds(container, stream)
    if stated is None:
        return
    rate = _fraction(stream.average_rate) or _fraction(stream.guessed_rate) or Fraction(25)
    decoded = float(end_pts * stream.time_base)
    if not known_duration:
        decoded += float(1 / rate)
    # The stream's own duration is exact to the container's clock; the container's may include longer audio.
    tolerance = (0.002 + (0 if known_duration else 0.5 / float(rate))) if own else max(0.5, 3 / float(rate))
    if decoded < stated - tolerance:
        raise VideoError(f"{path.name}: its frames stop at {decoded:.3f} s but its header says {stated:.3f} s; "
                         "the file is truncated or damaged: repair or re-export it")


def _read_seeking(path, first, last, pts_list):
    """Yields frames first..last by seeking; returns None when done, or the index to resume sequentially from."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        _configure_decoder(stream)
        target = pts_list[first]
        seek_index = first
        packets = None
        for attempt in range(5):
            try:
                container.seek(pts_list[seek_index], stream=stream, backward=True, any_frame=False)
            except av.FFmpegError:
                return first
            packets = _packets(container, stream, path)
            opening = next((p for p in packets if p.size), None)
            if opening is None:
                return first
            if opening.is_keyframe and opening.pts is not None and opening.pts <= target:
                packets = _chain(opening, packets)
                break
            seek_index = max(0, seek_index - 8 * 4 ** attempt)
            if seek_index == 0:
                return first  # as cheap to decode from the start
        else:
            return first
        index = None
        for frame in _frames(packets, path):
            pts = frame.pts
            if index is None:
                if pts is None or pts > target:
                    return first  # the first frame was not decoded after the seek
                if pts < target:
                    continue
                index = first
            else:
                index += 1
            if index >= len(pts_list) or pts != pts_list[index]:
                return index
            yield index, pts, Picture.from_frame(frame)
            if index >= last:
                return None
        return first if index is None else index + 1
    finally:
        container.close()


def _chain(head, rest):
    yield head
    yield from rest


# ---------------------------------------------------------------------------- encoding


CODECS = ("auto", "x264", "x265", "prores", "ffv1")

_ENCODERS = {"x264": "libx264", "x265": "libx265", "prores": "prores_ks", "ffv1": "ffv1"}
_FAMILY = {"h264": "x264", "hevc": "x265", "prores": "prores", "ffv1": "ffv1"}
_CODEC_PIX_FMTS = {
    "x264": {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p",
             "yuv420p10le", "yuv422p10le", "yuv444p10le"},
    "x265": {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p",
             "yuv420p10le", "yuv422p10le", "yuv444p10le", "yuv420p12le", "yuv422p12le", "yuv444p12le"},
    "prores": {"yuv422p10le", "yuv444p10le"},
    "ffv1": set(_PIX_FMTS),
}
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


def choose_encoder(info: VideoInfo, codec: str = "auto") -> EncoderChoice:
    """The encoder for chunks of this film.

    auto keeps the input's codec family at high quality: h264 -> libx264 (CRF 14; this
    build's libx264 encodes 8- and 10-bit, so 10-bit H.264 stays 10-bit), hevc -> libx265
    (CRF 16, main10/main12 for 10/12-bit), prores -> prores_ks (HQ for 4:2:2, 4444 for 4:4:4),
    ffv1 -> ffv1; any other input codec, or a pixel format the family's encoder cannot keep
    (12-bit H.264, 4:2:0 ProRes, grey), -> ffv1 (lossless, level 3, intra-only, slice CRCs).
    An explicit codec that cannot keep the input's bit depth and chroma subsampling is a VideoError.
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
    pix_fmt = info.pix_fmt
    if chosen == "x264":
        options = {"crf": str(X264_CRF), "preset": PRESET, "x264-params": "bframes=0:open-gop=0"}
    elif chosen == "x265":
        options = {"crf": str(X265_CRF), "preset": PRESET, "x265-params": "bframes=0:open-gop=0:log-level=error"}
    elif chosen == "prores":
        options = {"profile": "4444" if pix_fmt.startswith("yuv444") else "hq", "vendor": "apl0"}
    else:
        pix_fmt = pix_fmt.replace("yuvj", "yuv")  # ffv1 takes the layout; full range goes in the tags
        options = {"level": "3", "g": "1", "slicecrc": "1", "context": "1"}
    return EncoderChoice(chosen, _ENCODERS[chosen], pix_fmt, options, "mov" if chosen == "prores" else "nut", note)


class ChunkWriter:
    """Encodes one chunk of pictures to a video-only chunk file, atomically.

    ``with ChunkWriter(path, info, codec) as writer: writer.write(picture, pts)``. The file
    appears at path only when the block ends without an exception (a temporary file beside
    it is renamed); otherwise nothing is left at path. Frames keep the given pts exactly
    (strictly increasing, in info.time_base), the film's size, sample aspect ratio, pixel
    format (yuvj formats become their yuv layout tagged full range for ffv1) and colour
    tags. The chunk container is NUT (exact timestamps in any time base), or QuickTime for
    ProRes, whatever the file's name; only :func:`join` needs to read it. See
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
            raise VideoError(f"cannot create chunk file {self._temp} ({error}): check the folder is writable") from None
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
        context.color_range = _RANGE_FULL if info.pix_fmt.startswith("yuvj") else info.color_range
        context.color_primaries = info.color_primaries
        context.color_trc = info.color_trc
        context.max_b_frames = 0
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
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except av.FFmpegError as error:
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


# -------------------------------------------------------------------------------- output

# Video codecs each output container family takes (codec names as FFmpeg reports them).
_CONTAINER_VIDEO = {
    "mp4": {"h264", "hevc"},
    "mov": {"h264", "hevc", "prores"},
    "matroska": {"h264", "hevc", "prores", "ffv1"},
}
_FORMAT_FAMILY = {"mp4": "mp4", "m4v": "mp4", "mov": "mov", "mkv": "matroska"}
_CODEC_NAME = {"x264": "h264", "x265": "hevc", "prores": "prores", "ffv1": "ffv1"}
# Time base of each container's timestamps (None: keeps the stream's own).
_CONTAINER_CLOCK = {"matroska": Fraction(1, 1000)}


@dataclass(frozen=True)
class OutputPlan:
    """What :func:`join` will write: container format, encoder, copied and dropped streams, warnings."""

    path: Path
    format: str
    encoder: EncoderChoice
    copied_streams: tuple[int, ...]
    dropped_streams: tuple[tuple[int, str], ...]
    warnings: tuple[str, ...]


def _output_format(output_path: Path, info: VideoInfo) -> tuple[Path, str]:
    suffix = output_path.suffix.lower().lstrip(".")
    if not suffix:
        suffix = info.path.suffix.lower().lstrip(".")
        output_path = output_path.with_suffix(info.path.suffix)
    family = _FORMAT_FAMILY.get(suffix)
    if family is None:
        raise VideoError(f"cannot write a .{suffix} film: name the output .mkv, .mov or .mp4")
    return output_path, family


def _dry_mux(family: str, template) -> str | None:
    """None if the muxer writes a header with a copy of this stream, else the reason it gives."""
    import io

    try:
        container = av.open(io.BytesIO(), "w", format=family)
    except av.FFmpegError as error:
        return str(error)
    try:
        container.add_stream_from_template(template)
        container.start_encoding()
        return None
    except (av.FFmpegError, ValueError, TypeError, NotImplementedError) as error:
        return str(error).replace("\n", " ")
    finally:
        try:
            container.close()
        except Exception:
            pass


def check_output(output_path, info: VideoInfo, codec: str = "auto") -> OutputPlan:
    """Check early that the output can be written: VideoError naming the fix if not.

    The output container is the output path's extension (the input's if it has none).
    Refused: the same path as the input; a video codec the container does not carry
    (FFV1 only in .mkv; ProRes in .mov or .mkv; H.264/HEVC in .mp4, .mov, .mkv); an audio
    or subtitle stream of the input the container cannot store. Data streams the muxer
    refuses (e.g. QuickTime timecode into .mkv) are dropped and listed. Warns when the
    container cannot store the input's timestamps exactly (Matroska keeps milliseconds).
    """
    output_path = Path(output_path)
    choice = choose_encoder(info, codec)
    if output_path.exists() and info.path.exists() and os.path.samefile(output_path, info.path):
        raise VideoError(f"the output {output_path} is the input: choose another output path")
    output_path, family = _output_format(output_path, info)
    video_codec = _CODEC_NAME[choice.codec]
    allowed = _CONTAINER_VIDEO.get(family)
    if allowed is not None and video_codec not in allowed:
        raise VideoError(f"{choice.encoder} video cannot go into .{output_path.suffix.lstrip('.')} "
                         f"({family} takes {', '.join(sorted(allowed))}): name the output .mkv, or choose another codec")
    copied, dropped, warnings = [], [], []
    if choice.note:
        warnings.append(choice.note)
    with _open(info.path) as container:
        for stream in container.streams:
            if stream.index == info.stream_index:
                continue
            reason = _dry_mux(family, stream)
            if reason is None:
                copied.append(stream.index)
            elif stream.type in ("data", "attachment"):
                dropped.append((stream.index, f"{stream.type} stream #{stream.index} cannot go into {family}: {reason}"))
            else:
                name = stream.codec_context.name if stream.codec_context is not None else "?"
                raise VideoError(f"{stream.type} stream #{stream.index} ({name}) cannot go into .{output_path.suffix.lstrip('.')} "
                                 f"({reason}): name the output .mkv")
        starts = [stream.start_time * stream.time_base for stream in container.streams
                  if stream.start_time is not None and (stream.index in copied or stream.index == info.stream_index)]
    clock = _CONTAINER_CLOCK.get(family)
    if clock is not None and (info.time_base / clock).denominator != 1:
        warnings.append(f"{family} stores timestamps in units of {clock} s; the film's time base is {info.time_base}, "
                        "so timestamps are rounded to that unit (frame count and order kept); write .mp4/.mov to keep them exactly")
    if family == "matroska" and starts and min(starts) < 0:
        warnings.append(f"{family} cannot store negative timestamps: all streams are shifted by {float(-min(starts)):.3f} s "
                        "(synchronisation kept)")
    for index, reason in dropped:
        warnings.append(reason)
    return OutputPlan(output_path, family, choice, tuple(copied), tuple(dropped), tuple(warnings))


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
    frames. Other streams (audio, subtitles, data, attachments) are copied packet for
    packet, with their metadata, language and dispositions; the container's metadata and
    chapters are copied too; the video stream keeps the input's stream metadata, sample
    aspect ratio and colour tags (from info, whatever the chunk container kept).

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
    codec = {name: key for key, name in _CODEC_NAME.items()}.get(signature[0])
    if codec is None:
        raise VideoError(f"chunk {chunk_paths[0].name} holds {signature[0]} video: encode chunks with ChunkWriter")
    plan = check_output(output_path, info, codec)
    output_path = plan.path
    temp = temporary_beside(output_path)
    try:
        _write_output(chunk_paths, input_path, temp, info, plan, frame_pts)
        os.replace(temp, output_path)
    except BaseException as error:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(error, av.FFmpegError):
            raise _av_error(output_path, "writing the output", error) from None
        raise
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


def _write_output(chunk_paths, input_path, temp, info, plan, frame_pts):
    source = _open(input_path)
    first_chunk = av.open(str(chunk_paths[0]))
    output = None
    try:
        in_video = source.streams[info.stream_index]
        output = av.open(str(temp), "w", format=plan.format)
        output.metadata.update(_clean_metadata(dict(source.metadata)))
        template = first_chunk.streams.video[0]
        out_video = output.add_stream_from_template(template)
        out_video.time_base = info.time_base
        context = out_video.codec_context
        if plan.format in ("mp4", "mov") and plan.encoder.codec == "x265":
            context.codec_tag = "hvc1"  # parameter sets are out of band; QuickTime plays only hvc1
        context.colorspace, context.color_primaries, context.color_trc = info.colorspace, info.color_primaries, info.color_trc
        context.color_range = _RANGE_FULL if info.pix_fmt.startswith("yuvj") else info.color_range
        if info.sample_aspect_ratio:
            context.sample_aspect_ratio = info.sample_aspect_ratio
        out_video.metadata.update(_clean_metadata(dict(in_video.metadata)))
        out_video.disposition = in_video.disposition
        mapping = {}
        for index in plan.copied_streams:
            stream = source.streams[index]
            copy = output.add_stream_from_template(stream)
            copy.time_base = stream.time_base
            copy.metadata.update(_clean_metadata(dict(stream.metadata)))
            copy.disposition = stream.disposition
            mapping[index] = copy
        chapters = source.chapters()
        if chapters:
            output.set_chapters(chapters)

        video_time_base = template.time_base
        others = [source.streams[index] for index in plan.copied_streams]
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
                _mux_copy(output, pending_other, mapping)
                pending_other = next(other_packets, None)
            packet.stream = out_video
            output.mux(packet)
            previous = pts_input
            count += 1
        if frame_pts is not None and count != len(frame_pts):
            raise VideoError(f"the chunks hold {count} frames, the film {len(frame_pts)}: encode the missing chunks")
        while pending_other is not None:
            _mux_copy(output, pending_other, mapping)
            pending_other = next(other_packets, None)
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


def _input_packets(source, streams, path):
    try:
        for packet in source.demux(*streams):
            if packet.size == 0 and packet.dts is None and packet.pts is None:
                continue  # end-of-stream markers
            if packet.is_corrupt:
                raise VideoError(f"{Path(path).name}: a corrupt packet in stream #{packet.stream_index}; the file is damaged: repair it")
            yield packet
    except av.FFmpegError as error:
        raise _av_error(path, "reading the other streams", error) from None


def _mux_copy(output, packet, mapping):
    packet.stream = mapping[packet.stream_index]
    output.mux(packet)
