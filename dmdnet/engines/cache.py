"""Files engines build once and reuse (exported ONNX graphs, TensorRT engines), under a lock.

Several actors of a node may ask for the same file at once: the first builds it under a
file lock and renames it into place; the others wait on the lock and then read it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from filelock import FileLock

CACHE_ENVIRONMENT = "DMDNET_CACHE"


def cache_dir(folder=None) -> Path:
    """`folder`, else $DMDNET_CACHE, else ~/.cache/dmdnet (created)."""
    path = Path(folder or os.environ.get(CACHE_ENVIRONMENT) or Path.home() / ".cache" / "dmdnet")
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_name(*parts) -> str:
    """A file-name-safe key from its parts (fingerprints shortened to 16 characters)."""
    text = "-".join(str(part)[:16] if len(str(part)) == 64 else str(part) for part in parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def cached_file(path: Path, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """(path, built): builds `path` with build(path) unless it exists, once across processes.

    `build` must write atomically (dmdnet.files.atomic_path), so a crash leaves no file.
    """
    if path.is_file():
        return path, False
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return path, False
        build(path)
        return path, True
