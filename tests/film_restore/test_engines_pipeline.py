"""The pipeline with each CPU engine (--engine): the output agrees with eager float32 torch, the
report says what ran and why, and each engine's chunks are stored under their own key.

The small case (two 10-frame clips at 256 px, narrow seeded network) runs on an in-process local
Ray: eager torch first (scan and analysis then reused by the other runs through --resume on the
same work folder), then each engine. The ONNX graphs come exported from conftest's
small_onnx_graphs (exported once per session).
"""
import av
import numpy as np
import pytest
import ray
import torch

from dmdnet.export import example_inputs
from film_restore.pipeline import Job, init_ray, run
from film_restore.restore import FaceRestorer
from tests.assets import copy_graphs, save_small_checkpoint
from tests.small_case import make_case

# float32 engines differ from eager torch in a float's last bits: at most one code value once rounded.
MAX_CODE_DIFFERENCE = 1


def frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]).astype(np.int16)


@pytest.fixture(scope="module")
def case(tmp_path_factory, small_onnx_graphs):
    case = make_case(tmp_path_factory.mktemp("engines_pipeline"))
    with pytest.MonkeyPatch.context() as environment:
        # Set before Ray starts: its workers (the restore actors) inherit them.
        environment.setenv("DMDNET_CACHE", str(copy_graphs(small_onnx_graphs, case["folder"] / "engine_cache")))
        environment.setenv("FILM_RESTORE_DASHBOARD", "0")
        environment.delenv("RAY_ADDRESS", raising=False)
        if ray.is_initialized():
            pytest.skip("Ray already runs in this test process: this module starts its own")
        init_ray()
        try:
            yield case
        finally:
            ray.shutdown()


def restored(case, engine: str) -> tuple[np.ndarray, dict]:
    output = case["folder"] / f"{engine}.mkv"
    report = run(Job(input=case["film"], cast=case["cast"], output=output, checkpoint=case["checkpoint"],
                     models=case["models"], workdir=case["folder"] / "work", resume=True, codec="ffv1", engine=engine))
    return frames(output), report


@pytest.fixture(scope="module")
def eager(case):
    return restored(case, "torch")


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "auto"])
def test_each_engine_restores_the_film_like_eager_torch(case, eager, engine):
    eager_frames, eager_report = eager
    output, report = restored(case, engine) if engine != "torch" else eager
    (described,) = report["restore_engines"]
    assert set(described) >= {"engine", "precision", "device", "reason"} and described["device"] == "cpu"
    expected_name, reason = {
        "torch": ("torch", "torch float32 requested"),
        "onnxruntime": ("onnxruntime", "onnxruntime float32 requested"),
        "auto": (described["engine"], "auto on cpu: "),
    }[engine]
    assert described["engine"] == expected_name and described["precision"] == "float32"
    assert described["reason"].startswith(reason), described["reason"]
    assert "\n" not in described["reason"]
    faces = report["totals"]["faces_restored"]
    assert faces > 0 and report["restore_batching"]["faces"] == faces  # restored by this engine, not resumed
    assert output.shape == eager_frames.shape
    if engine == "torch":
        return
    assert report["output_key"] != eager_report["output_key"]
    difference = np.abs(output - eager_frames).max()
    # auto may pick torch channels-last (where it measures faster): its convolutions round otherwise than eager's.
    exactly_eager = described["engine"] == "torch" and described.get("variant") == "eager"
    assert difference <= (0 if exactly_eager else MAX_CODE_DIFFERENCE), difference


def test_a_missing_engine_says_why_and_eager_torch_restores_instead(tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: TensorRT may well run here")
    checkpoint = save_small_checkpoint(tmp_path / "DMDNet.pth")
    restorer = FaceRestorer(checkpoint, {}, engine="tensorrt")
    described = restorer.engine.describe()
    assert (described["engine"], described["precision"]) == ("torch", "float32")
    assert described["reason"].startswith("restore engine tensorrt is unavailable here (TensorRT ")
    assert described["reason"].endswith("; torch float32 runs instead") and "\n" not in described["reason"]
    assert [record.getMessage() for record in caplog.records if record.name == "film_restore.restore"] == [
        f"film_restore: {described['reason']}"]
    lq, boxes, *_ = example_inputs(restorer.engine, batch=2)
    crops = ((lq.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    eager = FaceRestorer(checkpoint, {}, engine="torch").restore(crops, boxes.numpy(), None)
    np.testing.assert_array_equal(restorer.restore(crops, boxes.numpy(), None), eager)
