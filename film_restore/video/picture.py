"""Picture: one decoded frame in its native planar pixel format, and the colour maths that
converts it to RGB and blends restored RGB back into it.

Y'CbCr <-> R'G'B' uses explicit matrices chosen from the colour tags (BT.601, BT.709,
BT.2020 non-constant luminance, SMPTE 240M, FCC; unspecified means BT.709 from 720 lines
up and BT.601 below) and the range (limited unless tagged full or a ``yuvj`` format).
Chroma is upsampled by sample replication and downsampled by averaging over each chroma
sample's footprint, so the two directions are exact inverses.
"""
from __future__ import annotations

import functools

import av
import cv2
import numpy as np

from film_restore.video.formats import PIX_FMTS, RANGE_FULL, UNSPECIFIED, unsupported_format

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


@functools.lru_cache(maxsize=16)
def _colour_model(colorspace: int, full_range: bool, bit_depth: int, height: int) -> _ColourModel:
    """Shared by every frame of a film: the matrices are read only, and building them per frame is waste."""
    return _ColourModel(colorspace, full_range, bit_depth, height)


class Picture:
    """One decoded frame in its native planar pixel format.

    planes: (Y, U, V) or (Y,) for grey, read-only numpy arrays, uint8 for 8-bit and uint16
    for 10/12-bit formats (the value in its low bits); chroma planes are
    ceil(W / 2**sx) x ceil(H / 2**sy). Colour tags are FFmpeg's enum values.
    """

    __slots__ = ("planes", "pix_fmt", "colorspace", "color_range", "color_primaries", "color_trc", "_model")

    def __init__(self, planes, pix_fmt: str, colorspace: int = UNSPECIFIED, color_range: int = 0,
                 color_primaries: int = UNSPECIFIED, color_trc: int = UNSPECIFIED):
        if pix_fmt not in PIX_FMTS:
            raise unsupported_format(pix_fmt, "Picture")
        depth, sx, sy = PIX_FMTS[pix_fmt]
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
        return PIX_FMTS[self.pix_fmt][0]

    @property
    def full_range(self) -> bool:
        return self.color_range == RANGE_FULL or self.pix_fmt.startswith("yuvj")

    @property
    def max_code(self) -> int:
        return (1 << self.bit_depth) - 1

    def _colour(self) -> _ColourModel:
        if self._model is None:
            self._model = _colour_model(self.colorspace, self.full_range, self.bit_depth, self.height)
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
        if name not in PIX_FMTS:
            raise unsupported_format(name, "decoded frame")
        dtype = np.dtype(np.uint8) if PIX_FMTS[name][0] == 8 else np.dtype(np.uint16)
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
        frame.color_range = RANGE_FULL if self.full_range else self.color_range
        frame.color_primaries = self.color_primaries
        frame.color_trc = self.color_trc
        return frame

    # ---- colour

    def _yuv_full(self, y0=0, y1=None, x0=0, x1=None) -> np.ndarray:
        """H x W x 3 native-typed Y, U, V of a rectangle, chroma replicated to every pixel."""
        y1 = self.height if y1 is None else y1
        x1 = self.width if x1 is None else x1
        luma = self.planes[0][y0:y1, x0:x1]
        _, sx, sy = PIX_FMTS[self.pix_fmt]
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

    def rgb(self, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """uint8 H x W x 3 RGB for face analysis: rgb_float clipped and rounded (within 1 level; a fast fixed-point path for 8-bit).
        region (x0, y0, x1, y1): only those pixels (the same values as the whole picture's there)."""
        model = self._colour()
        yuv = self._yuv_full() if region is None else self._yuv_full(region[1], region[3], region[0], region[2])
        if yuv.ndim == 2:
            grey = np.clip((yuv.astype(np.float32) - model.luma_offset) * model.luma_to_grey + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if yuv.dtype == np.uint8:
            return cv2.transform(yuv, model.to_rgb)  # saturating, rounded
        return np.minimum(cv2.transform(yuv, model.to_rgb), 255).astype(np.uint8)

    def rgb_in(self, rectangles: list[tuple[slice, slice]]) -> np.ndarray:
        """uint8 H x W x 3 RGB (as rgb()) inside these frame rectangles (rows, columns) and zeros elsewhere:
        only the pixels a reader of those rectangles needs are converted."""
        out = np.zeros((self.height, self.width, 3), np.uint8)  # untouched pages cost nothing
        for rows, columns in rectangles:
            out[rows, columns] = self.rgb((columns.start, rows.start, columns.stop, rows.stop))
        return out

    def blended(self, rgb_float: np.ndarray, alpha: np.ndarray, origin: tuple[int, int] | None = None) -> "Picture":
        """A new Picture with restored RGB blended in with alpha, in this picture's own format.

        rgb_float: float32 H x W x 3 on the 0..255 scale, the full frame or, with origin=(y, x),
        a rectangle of it whose top-left pixel is there; alpha: float32 H x W in 0..1 (values
        outside are clipped) over the same pixels. Luma: Y = Y0 + alpha * (Y(rgb) - Y0).
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
        origin_y, origin_x = origin or (0, 0)
        extent = (height, width) if origin is None else alpha.shape
        where = "the full frame" if origin is None else f"a rectangle at {origin} inside the {height} x {width} frame"
        if (alpha.shape != extent or origin_y < 0 or origin_x < 0 or origin_y + extent[0] > height
                or origin_x + extent[1] > width):
            raise ValueError(f"alpha must be {extent[0]} x {extent[1]} ({where}), got {alpha.shape}")
        if rgb_float.shape != (*extent, 3):
            raise ValueError(f"restored RGB must be {extent[0]} x {extent[1]} x 3 ({where}), got {rgb_float.shape}")
        rows = np.flatnonzero((alpha > 0).any(axis=1))
        if rows.size == 0:
            return self
        columns = np.flatnonzero((alpha[rows[0]:rows[-1] + 1] > 0).any(axis=0))
        rows, columns = rows + origin_y, columns + origin_x
        _, sx, sy = PIX_FMTS[self.pix_fmt]
        gx, gy = (1, 1) if sx is None else (1 << sx, 1 << sy)
        # The rectangle, widened to whole chroma footprints.
        y0, y1 = int(rows[0] - rows[0] % gy), int(min(-(-(rows[-1] + 1) // gy) * gy, height))
        x0, x1 = int(columns[0] - columns[0] % gx), int(min(-(-(columns[-1] + 1) // gx) * gx, width))
        a = np.clip(_frame_rectangle(alpha, origin_y, origin_x, y0, y1, x0, x1).astype(np.float32, copy=False), 0.0, 1.0)
        if not np.isfinite(a).all():
            raise ValueError("alpha must be finite numbers, got NaN")
        colour = np.ascontiguousarray(_frame_rectangle(rgb_float, origin_y, origin_x, y0, y1, x0, x1), dtype=np.float32)
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
                # The footprint's samples added as strided views: far cheaper than a reduction over short axes.
                total = values[0::gy, 0::gx].copy()
                for dy in range(gy):
                    for dx in range(gx):
                        if dy or dx:
                            total += values[dy::gy, dx::gx]
                return total

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


def _frame_rectangle(values: np.ndarray, top: int, left: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Frame rows y0:y1, columns x0:x1 of values that cover the frame from (top, left), zero where they do not reach."""
    height, width = values.shape[:2]
    if top <= y0 and left <= x0 and y1 <= top + height and x1 <= left + width:
        return values[y0 - top:y1 - top, x0 - left:x1 - left]
    out = np.zeros((y1 - y0, x1 - x0, *values.shape[2:]), values.dtype)
    sy0, sy1, sx0, sx1 = max(y0, top), min(y1, top + height), max(x0, left), min(x1, left + width)
    out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = values[sy0 - top:sy1 - top, sx0 - left:sx1 - left]
    return out


class RGBPicture:
    """A picture held as 8-bit RGB (H x W x 3 uint8), with Picture's rgb() and blended(): for pictures
    that are not a film's frames (tests, benches, photos) going through the compose steps."""

    __slots__ = ("pixels",)

    def __init__(self, rgb: np.ndarray):
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"an RGB picture is H x W x 3 uint8, got {rgb.shape} {rgb.dtype}")
        self.pixels = rgb

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    def rgb(self) -> np.ndarray:
        return self.pixels

    def rgb_in(self, rectangles: list[tuple[slice, slice]]) -> np.ndarray:
        """As Picture.rgb_in; held as RGB, the whole picture is at hand."""
        return self.pixels

    def blended(self, rgb_float: np.ndarray, alpha: np.ndarray, origin: tuple[int, int] | None = None) -> "RGBPicture":
        """A new RGBPicture: pixel + alpha (rgb - pixel), rounded, where alpha > 0 (as Picture.blended, in RGB)."""
        origin_y, origin_x = origin or (0, 0)
        height, width = alpha.shape
        region = np.s_[origin_y:origin_y + height, origin_x:origin_x + width]
        current = self.pixels[region].astype(np.float32)
        blended = current + alpha[..., None] * (np.asarray(rgb_float, np.float32) - current)
        pixels = self.pixels.copy()
        pixels[region] = np.where(alpha[..., None] > 0, np.clip(np.rint(blended), 0, 255), current).astype(np.uint8)
        return RGBPicture(pixels)
