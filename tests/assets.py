"""Where the tests' real assets are (FILM_RESTORE_ASSETS, default ../shared), skipping cleanly without them,
and the seeded narrow DMDNet states most tests use."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Our own trained model (MODEL_CARD.md), shipped in the repository.
TRAINED_MODEL = REPO / "weights" / "dmdnet-celeba256-w20.safetensors"
ASSETS = Path(os.environ.get("FILM_RESTORE_ASSETS", REPO.parent / "shared")).resolve()


def asset(relative: str) -> Path:
    """Path of a shared asset; the calling test skips if it is not there."""
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"{path} is missing: set FILM_RESTORE_ASSETS to the shared assets folder")
    return path


def reference_module():
    """The contract's `random_state` module (seeded stand-in weights), imported from the assets."""
    import importlib.util

    path = asset("dmdnet_reference/random_state.py")
    spec = importlib.util.spec_from_file_location("dmdnet_random_state", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_state(width: int = 8, dictionary_size: int = 16, seed: int = 7) -> dict:
    """A seeded state dict under the authors' key names for a narrow network (fast tests)."""
    from dmdnet import DMDNet
    from dmdnet.checkpoint import authors_manifest

    manifest = {name: list(entry[1]) for name, entry in authors_manifest(DMDNet(width, dictionary_size)).items()}
    return reference_module().make_state(manifest, seed, 1.5)


def save_state(state: dict, path: Path) -> Path:
    """A state of numpy arrays saved with torch.save under the authors' key names, as users' DMDNet.pth is."""
    import torch

    torch.save({name: torch.from_numpy(value) for name, value in state.items()}, path)
    return path


def save_small_checkpoint(path: Path, **options) -> Path:
    return save_state(small_state(**options), path)


# Identities of celeba_identities that dmdnet.train.split_identities holds out at the
# default fraction (0.1): never trained on by the shipped model, 18 photos each.
HELDOUT_IDENTITIES = ("7402", "7406", "7413")


def copy_graphs(graphs, cache: Path) -> Path:
    """An engine cache folder holding the given exported graphs (conftest's small_onnx_graphs)."""
    import shutil

    cache.mkdir(parents=True, exist_ok=True)
    for graph in graphs:
        shutil.copy(graph, cache)
    return cache
