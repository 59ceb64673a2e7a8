"""What every part of film_restore.video shares: the error type, the pixel formats handled
natively, and opening an input film with one-line errors."""
from __future__ import annotations

import errno
from fractions import Fraction
from pathlib import Path

import av


class VideoError(ValueError):
    """Unreadable, truncated or unsupported input, or an impossible output choice (one line: the problem and the fix)."""


class StorageError(VideoError):
    """A file that cannot be written where it goes: the folder is missing, not writable, read-only or full."""


# errno values of a write that failed for its storage, not its content: not writable, read-only, full.
STORAGE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


# pix_fmt -> (bit depth, log2 chroma width divisor, log2 chroma height divisor); None: no chroma.
PIX_FMTS: dict[str, tuple[int, int | None, int | None]] = {
    "yuv420p": (8, 1, 1), "yuvj420p": (8, 1, 1), "yuv422p": (8, 1, 0), "yuvj422p": (8, 1, 0),
    "yuv444p": (8, 0, 0), "yuvj444p": (8, 0, 0),
    "yuv420p10le": (10, 1, 1), "yuv422p10le": (10, 1, 0), "yuv444p10le": (10, 0, 0),
    "yuv420p12le": (12, 1, 1), "yuv422p12le": (12, 1, 0), "yuv444p12le": (12, 0, 0),
    "gray": (8, None, None), "gray10le": (10, None, None), "gray12le": (12, None, None),
}
SUPPORTED_PIX_FMTS = tuple(PIX_FMTS)

# FFmpeg enum values (AVColorRange; AVColorSpace/Primaries/TransferCharacteristic).
RANGE_FULL = 2
UNSPECIFIED = 2  # AVCOL_SPC/PRI/TRC_UNSPECIFIED


def unsupported_format(pix_fmt, where: str) -> VideoError:
    """The error for a pixel format outside SUPPORTED_PIX_FMTS, with the command that converts the film."""
    return VideoError(
        f"{where}: pixel format {pix_fmt} is not supported (supported: {', '.join(SUPPORTED_PIX_FMTS)}); "
        f"convert the film first, e.g. ffmpeg -i IN -map 0 -c copy -c:v ffv1 -pix_fmt yuv444p10le OUT.mkv")


def av_error(path, what: str, error: Exception) -> VideoError:
    """The error for FFmpeg failing on an input film (for output problems name the output step instead)."""
    message = str(error).replace("\n", " ")
    return VideoError(f"{Path(path).name}: {what} failed ({message}); the file is damaged, truncated or not a film: repair or re-export it")


def video_stream(container, path):
    """The film's video stream: the first one that is not cover art."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError(f"{Path(path).name} has no video stream: give a film file")


def open_input(path):
    """The film opened for reading; VideoError for a missing file or one FFmpeg cannot read."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path} does not exist or is not a file: check the path")
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError(f"{path.name} is not a media file FFmpeg can read ({type(error).__name__}): "
                         "give a film file (mp4, mov, mkv, ...) that is complete") from None


def positive_fraction(value) -> Fraction | None:
    if value is None:
        return None
    value = Fraction(value)
    return value if value > 0 else None
