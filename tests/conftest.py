"""Shared test fixtures: where the real assets (../shared) are, skipping cleanly without them."""
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


@pytest.fixture(scope="session")
def vectors():
    import numpy as np

    return dict(np.load(asset("dmdnet_reference/vectors_seed1234.npz")))


@pytest.fixture(scope="session")
def small_model():
    import dmdnet

    return dmdnet.load(small_state())


# Identities of celeba_identities that dmdnet.train.split_identities holds out at the
# default fraction (0.1): never trained on by the shipped model, 18 photos each.
HELDOUT_IDENTITIES = ("7402", "7406", "7413")


@pytest.fixture(scope="session")
def heldout_faces(tmp_path_factory):
    """HELDOUT_IDENTITIES prepared at 256 px with the compact pack (a few seconds)."""
    import shutil

    from dmdnet.data import prepare

    root = tmp_path_factory.mktemp("heldout")
    for identity in HELDOUT_IDENTITIES:
        shutil.copytree(asset(f"datasets/celeba_identities/{identity}"), root / "src" / identity)
    prepare(root / "src", root / "prepared", 256, asset("models"), detector_size=320, log=lambda _: None)
    return root / "prepared"


@pytest.fixture(scope="session")
def talking_head(tmp_path_factory):
    """One real face track for the guard and quality tests (a few seconds, made once).

    The first 20 frames of retalk_2 at 320 px, their main face tracked and smoothed with the
    compact pack, aligned at 128 px; the actor's centroid from 3 frames of the clip's second
    half. A dict: frames, faces (TrackedFace), crops (N x 128 x 128 x 3), reference, embed.
    """
    import numpy as np

    from film_restore.faces import FaceAnalyzer, align_face
    from film_restore.guards import aligned_embedder
    from film_restore.identity import centroid
    from film_restore.records import Shot
    from film_restore.tracking import smooth_track, track_shot
    from media import clip_frames

    frames = clip_frames(asset("media/clips/retalk_2.mp4"), 100, (320, 320))
    analyzer = FaceAnalyzer.from_models_dir(asset("models"), detector_size=320)
    shown = frames[:20]
    tracks = track_shot(Shot(0, 0, len(shown) - 1), {i: analyzer.analyze(f) for i, f in enumerate(shown)})
    track = smooth_track(max(tracks, key=lambda t: len(t.faces)))
    assert len(track.faces) == len(shown)
    reference = centroid(np.stack([analyzer.analyze(frames[i])[0].embedding for i in (60, 80, 99)]))
    crops = np.stack([align_face(f, t.face, 128).crop for f, t in zip(shown, track.faces)])
    return {"frames": shown, "faces": track.faces, "crops": crops, "reference": reference,
            "embed": aligned_embedder(analyzer.recogniser), "analyzer": analyzer}
