"""How the film is meant to be shown, beyond its colour tags: HDR10 mastering display and
content light level, and the display matrix (rotation, flips).

Read from the first decoded frame (FFmpeg attaches the stream's display matrix and the
bitstream's HDR SEI to it) and written back: HDR metadata as SEI by the H.264/HEVC
encoders (their ``mastering-display``/``cll`` parameters), the display matrix as the
output stream's side data.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from av.sidedata.sidedata import Type

# AVMasteringDisplayMetadata: display_primaries[3][2] (R, G, B), white_point[2], min and max
# luminance, each an AVRational (int num, int den); then has_primaries, has_luminance.
_MASTERING = struct.Struct("<22i")
_LIGHT = struct.Struct("<2I")        # AVContentLightMetadata: MaxCLL, MaxFALL
_MATRIX = struct.Struct("<9i")       # the display matrix, FFmpeg's 16.16 / 2.30 fixed point
_CHROMATICITY, _LUMINANCE = 50000, 10000  # the units of the encoders' master-display parameter


@dataclass(frozen=True)
class DisplayMetadata:
    """mastering_display: ((Rx, Ry), (Gx, Gy), (Bx, By), (WPx, WPy), (max, min) luminance) in
    units of 1/50000 (chromaticity) and 1/10000 cd/m2, as the encoders take them, or None;
    content_light: (MaxCLL, MaxFALL) in cd/m2 or None; display_matrix: 9 ints or None."""

    mastering_display: tuple | None = None
    content_light: tuple[int, int] | None = None
    display_matrix: tuple[int, ...] | None = None

    @property
    def hdr(self) -> bool:
        return self.mastering_display is not None or self.content_light is not None

    def encoder_parameters(self, codec: str) -> str:
        """The x264-params / x265-params (codec "x264" or "x265") that write this HDR metadata as SEI; "" when there is none."""
        names = {"x264": ("mastering-display", "cll"), "x265": ("master-display", "max-cll")}[codec]
        parameters = []
        if self.mastering_display is not None:
            (rx, ry), (gx, gy), (bx, by), (wx, wy), (high, low) = self.mastering_display
            parameters.append(f"{names[0]}=G({gx},{gy})B({bx},{by})R({rx},{ry})WP({wx},{wy})L({high},{low})")
        if self.content_light is not None:
            parameters.append("{}={},{}".format(names[1], *self.content_light))
        return ":".join(parameters)


def _scaled(numerator: int, denominator: int, unit: int) -> int:
    return round(numerator * unit / denominator) if denominator else 0


def display_metadata(frame) -> DisplayMetadata:
    """The :class:`DisplayMetadata` a decoded PyAV frame carries."""
    found = {}
    for side_data in frame.side_data:
        found[side_data.type] = bytes(side_data)
    mastering = light = matrix = None
    if Type.MASTERING_DISPLAY_METADATA in found:
        values = _MASTERING.unpack_from(found[Type.MASTERING_DISPLAY_METADATA])
        if values[20] and values[21]:
            points = [(_scaled(*values[i:i + 2], _CHROMATICITY), _scaled(*values[i + 2:i + 4], _CHROMATICITY))
                      for i in range(0, 16, 4)]
            luminance = (_scaled(*values[18:20], _LUMINANCE), _scaled(*values[16:18], _LUMINANCE))
            mastering = tuple(points) + (luminance,)
    if Type.CONTENT_LIGHT_LEVEL in found:
        light = _LIGHT.unpack_from(found[Type.CONTENT_LIGHT_LEVEL])
    if Type.DISPLAYMATRIX in found:
        matrix = _MATRIX.unpack_from(found[Type.DISPLAYMATRIX])
        if matrix == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30):
            matrix = None  # identity: nothing to keep
    return DisplayMetadata(mastering, light, matrix)
