"""The tests' shared fixtures (helpers they import are in tests/assets.py, tests/media.py, tests/small_case.py)."""
import pytest

from tests.assets import HELDOUT_IDENTITIES, asset, small_state


@pytest.fixture(scope="session")
def vectors():
    import numpy as np

    return dict(np.load(asset("dmdnet_reference/vectors_seed1234.npz")))


@pytest.fixture(scope="session")
def small_model():
    import dmdnet

    return dmdnet.load(small_state())


@pytest.fixture(scope="session")
def heldout_faces(tmp_path_factory):
    """HELDOUT_IDENTITIES prepared at 256 px with the compact pack (a few seconds)."""
    import shutil

    from dmdnet.data import prepare
    from film_restore.training_faces import face_finder

    root = tmp_path_factory.mktemp("heldout")
    for identity in HELDOUT_IDENTITIES:
        shutil.copytree(asset(f"datasets/celeba_identities/{identity}"), root / "src" / identity)
    prepare(root / "src", root / "prepared", 256, face_finder(asset("models"), detector_size=320), log=lambda _: None)
    return root / "prepared"


@pytest.fixture(scope="session")
def analyzer():
    """The face stack on the compact pack of the shared models."""
    from film_restore.faces import FaceAnalyzer

    return FaceAnalyzer.from_models_dir(asset("models"))
