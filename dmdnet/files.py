"""File writing that never leaves a partial file at the final path, and file hashing."""
import contextlib
import hashlib
import json
import os
from pathlib import Path


def temporary_beside(path) -> Path:
    """Where a file is written before it is renamed onto `path`: hidden, per process, `*.tmp`.

    One naming scheme for every writer, so leftovers of a killed run are found by `*.tmp`.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def default_file_mode() -> int:
    """The mode a new file gets under this process's umask (0o644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_json(path, value) -> None:
    """`value` as indented JSON at `path` (its folder created), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=1))


def write_image(path, image_rgb) -> None:
    """An RGB uint8 image in the format its suffix names (PNG without one), written atomically."""
    import cv2
    import numpy as np

    path = Path(path)
    encoded, data = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not encoded:
        raise ValueError(f"cannot write an image with the suffix {path.suffix!r}: use .png")
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.tobytes())


def file_sha256(path) -> str:
    """Hex sha256 of a file's contents, read in blocks (films are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
