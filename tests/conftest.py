"""The tests' shared fixtures (helpers they import are in tests/assets.py, tests/media.py, tests/small_case.py)."""
import os

import pytest

# Under pytest-xdist each worker computes with its share of the cores (torch, OpenMP, the runs it
# starts): two workers of two threads each on 2 cores would spin-wait on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from tests.assets import HELDOUT_IDENTITIES, asset, small_state

# Test modules that must run on the same pytest-xdist worker: they share a session fixture that
# takes minutes to make (the narrow network's ONNX graphs) or a Ray head (ray_head).
SHARED_FIXTURE_GROUPS = {
    "small_onnx_graphs": ("tests.dmdnet.test_engines", "tests.dmdnet.test_export", "tests.film_restore.test_engines_pipeline"),
    "ray_head": ("tests.film_restore.test_cluster", "tests.film_restore.test_faults", "tests.film_restore.test_ray_address"),
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Each test's xdist group (pyproject's --dist loadgroup): its module's, or its shared fixture's."""
    groups = {module: group for group, modules in SHARED_FIXTURE_GROUPS.items() for module in modules}
    for item in items:
        module = item.module.__name__ if getattr(item, "module", None) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(groups.get(module, module)))


@pytest.fixture(scope="session")
def vectors():
    import numpy as np

    return dict(np.load(asset("dmdnet_reference/vectors_seed1234.npz")))


@pytest.fixture(scope="session")
def small_model():
    import dmdnet

    return dmdnet.load(small_state())


@pytest.fixture(scope="session")
def small_onnx_graphs(tmp_path_factory, small_model):
    """The narrow network's float32 ONNX graphs (generic, specific), exported once per session (about a
    minute each on 2 busy cores); tests copy them into their own engine caches with copy_graphs."""
    from dmdnet.engines.onnx_engine import onnx_graph

    folder = tmp_path_factory.mktemp("small_onnx_graphs")
    return [onnx_graph(small_model, specific, "float32", folder)[0] for specific in (False, True)]


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


@pytest.fixture(scope="session")
def talking_head(tmp_path_factory):
    """One real face track for the guard and quality tests (a few seconds, made once).

    The first 20 frames of retalk_2 at 320 px, their main face tracked and smoothed with the
    compact pack, aligned at 128 px; the actor's centroid from 3 frames of the clip's second
    half. A dict: frames, faces (TrackedFace), crops (N x 128 x 128 x 3), reference, embed.
    """
    import numpy as np

    from film_restore.faces import FaceAnalyzer, align_face
    from film_restore.finish.guards import aligned_embedder
    from film_restore.faces.identity import centroid
    from film_restore.records import Shot
    from film_restore.tracking import smooth_track, track_shot
    from tests.media import clip_frames

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


@pytest.fixture(scope="session")
def ray_head():
    """The session's own Ray cluster on loopback (tests/ray_head.py): a head of 2 CPUs, shared by the
    tests that submit jobs to it or lose its workers and nodes."""
    from tests.ray_head import started_head

    with started_head() as head:
        yield head
