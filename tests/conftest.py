"""Shared test fixtures: where the real assets (../shared) are, skipping cleanly without them."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("FILM_RESTORE_ASSETS", REPO.parent / "shared")).resolve()


def asset(relative: str) -> Path:
    """Path of a shared asset; the calling test skips if it is not there."""
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"{path} is missing: set FILM_RESTORE_ASSETS to the shared assets folder")
    return path
