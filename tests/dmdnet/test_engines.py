"""dmdnet.engines: each engine restores what eager float32 torch restores, within its tolerance."""
import os
import subprocess
import sys

import pytest
import torch
from tests.assets import REPO, copy_graphs, save_small_checkpoint

from dmdnet import engines
from dmdnet.engines.auto import _first_passing, gpu_candidates, native_bfloat16
from dmdnet.engines.onnx_engine import onnx_graph
from dmdnet.export import example_inputs


@pytest.fixture(scope="module")
def cache(tmp_path_factory, small_onnx_graphs):
    return copy_graphs(small_onnx_graphs, tmp_path_factory.mktemp("engine_cache"))


@pytest.fixture(scope="module")
def case(small_model):
    """Two faces with different boxes, a 3-reference dictionary, and eager float32's results."""
    lq, boxes, *_ = example_inputs(small_model, batch=2)
    refs, ref_boxes, *_ = example_inputs(small_model, batch=3)
    dictionary = small_model.build_dictionary(refs, ref_boxes)
    with torch.inference_mode():
        expected = {False: small_model(lq, boxes), True: small_model(lq, boxes, dictionary)}
    return lq, boxes, dictionary, expected


@pytest.fixture(scope="module")
def onnx_engine(small_model, cache):
    return engines.load(small_model, "onnxruntime", device="cpu", cache=cache)


def _restore(engine, case, specific):
    lq, boxes, dictionary, expected = case
    return engine(lq, boxes, dictionary if specific else None), expected[specific]


@pytest.mark.parametrize("specific", [False, True], ids=["generic", "dictionary"])
@pytest.mark.parametrize(
    "precision, options, min_db",
    [("float32", {"channels_last": True}, 100.0), ("bfloat16", {}, 40.0)],
    ids=["float32-channels-last", "bfloat16"],
)
def test_torch_engine_matches_float32(small_model, case, specific, precision, options, min_db):
    if precision == "bfloat16" and not native_bfloat16():
        pytest.skip("this CPU has no native bfloat16 (avx512_bf16 or amx): torch emulates it, too slow for a test")
    engine = engines.load(small_model, "torch", precision, device="cpu", **options)
    restored, expected = _restore(engine, case, specific)
    assert restored.dtype == torch.float32 and restored.shape == expected.shape
    assert engines.psnr_db(restored, expected) >= min_db
    assert next(small_model.parameters()).dtype == torch.float32  # the caller's model is left alone


@pytest.mark.parametrize("specific", [False, True], ids=["generic", "dictionary"])
def test_onnxruntime_engine_matches_float32(onnx_engine, case, specific):
    restored, expected = _restore(onnx_engine, case, specific)
    assert (restored - expected).abs().max() < 1e-3
    assert onnx_engine.describe()["providers"] == "CPUExecutionProvider"


def test_onnx_export_is_cached_and_reused(small_model, onnx_engine, cache):
    path, exported = onnx_graph(small_model, specific=False, precision="float32", folder=cache)
    assert not exported and path.is_file() and small_model.fingerprint[:16] in path.name
    again = engines.load(small_model, "onnxruntime", device="cpu", cache=cache)
    assert again.exported == {False: False}


def test_float16_graph_keeps_the_box_arithmetic_in_float32(small_model, case, cache):
    """The GPU's fp16 graph, run here on onnxruntime's CPU provider for its numbers only."""
    import onnxruntime

    path, _ = onnx_graph(small_model, specific=False, precision="float16", folder=cache)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lq, boxes, _, expected = case
    (restored,) = session.run(None, {"lq": lq.numpy(), "boxes": boxes.numpy()})
    assert engines.psnr_db(torch.from_numpy(restored), expected[False]) >= engines.MIN_PSNR_DB


def test_auto_picks_a_measured_engine_and_says_why(small_model, case, cache):
    engine = engines.load(small_model, "auto", device="cpu", cache=cache)
    assert engine.name in ("torch", "onnxruntime") and engine.device == torch.device("cpu")
    assert engine.reason.startswith("auto on cpu: fastest measured per face (") and "dB against float32" in engine.reason
    restored, expected = _restore(engine, case, True)
    assert engines.psnr_db(restored, expected) >= engines.MIN_PSNR_DB
    again = engines.load(small_model, "auto", device="cpu", cache=cache)
    assert (again.name, again.precision) == (engine.name, engine.precision)
    assert "measured fastest earlier" in again.reason


def test_auto_on_a_gpu_tries_the_fastest_engines_first_at_the_precision_asked():
    assert gpu_candidates("auto") == [("tensorrt", "float16", {}), ("onnxruntime", "float16", {}),
                                      ("torch", "float16", {"channels_last": True})]
    # The run's default precision (float32) still prefers TensorRT to eager torch.
    assert [c[:2] for c in gpu_candidates("float32")] == [("tensorrt", "float32"), ("onnxruntime", "float32"), ("torch", "float32")]
    assert [c[:2] for c in gpu_candidates("bfloat16")] == [("torch", "bfloat16")]


def test_auto_takes_the_first_engine_that_runs_and_says_what_it_passed_over(small_model, cache):
    # The GPU's search run here, where TensorRT cannot run: onnxruntime float32 is next.
    lq, boxes = example_inputs(small_model, batch=1)
    expected = engines.load(small_model, "torch", "float32", device="cpu")(lq, boxes)
    engine = _first_passing(small_model, gpu_candidates("float32"), torch.device("cpu"), cache, lq, boxes, expected)
    assert (engine.name, engine.precision) == ("onnxruntime", "float32")
    assert "first available of tensorrt float32, onnxruntime float32" in engine.reason
    assert "tensorrt float32 unavailable" in engine.reason


def test_tensorrt_unavailable_here_says_why(small_model, cache):
    with pytest.raises(engines.EngineUnavailable, match="TensorRT runs on a CUDA device|TensorRT is not installed"):
        engines.load(small_model, "tensorrt", device="cpu", cache=cache)


def test_tensorrt_engine_matches_float32(small_model, case, cache):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: the TensorRT engine runs on GPU nodes (python -m bench.gpu_check)")
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this GPU node: pip install tensorrt")
    engine = engines.load(small_model, "tensorrt", "float16", device="cuda", cache=cache)
    restored, expected = _restore(engine, case, True)
    assert engines.psnr_db(restored, expected) >= engines.MIN_PSNR_DB


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"engine": "openvino"}, "unknown engine 'openvino': use one of auto, torch, onnxruntime, tensorrt"),
        ({"engine": "torch", "precision": "int8"}, "unknown precision 'int8': use one of float32, bfloat16, float16"),
        ({"engine": "onnxruntime", "precision": "bfloat16"}, "runs float32 or float16 graphs"),
    ],
)
def test_bad_choices_are_one_line_errors(small_model, arguments, message, cache):
    with pytest.raises(ValueError, match=message) as error:
        engines.load(small_model, device="cpu", cache=cache, **arguments)
    assert "\n" not in str(error.value)


def test_bad_inputs_are_one_line_errors(onnx_engine, case):
    lq, boxes, _, _ = case
    with pytest.raises(ValueError, match="lq must be float B x 3 x 512 x 512"):
        onnx_engine(lq[:, :, :256], boxes)
    with pytest.raises(ValueError, match="one 4 x 4 box set per face"):
        onnx_engine(lq, boxes[:1])


def test_gpu_check_runs_on_the_cpu(tmp_path, cache, onnx_engine):
    """bench/gpu_check.py's smoke mode: every CPU engine row measured, PSNR against float32."""
    output = tmp_path / "check.md"
    checkpoint = save_small_checkpoint(tmp_path / "small.pth")
    command = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--checkpoint", str(checkpoint),
               "--cache", str(cache), "-o", str(output)]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in output.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    measured = {(row[0][2:], int(row[1])): (float(row[2]), float(row[3])) for row in rows[1:]}
    for engine in ("torch float32", "torch float32 channels-last", "onnxruntime float32"):
        for batch in (1, 2):
            faces_per_s, psnr = measured[engine, batch]
            assert faces_per_s > 0 and psnr >= 100
    assert any(engine.startswith("auto: ") for engine, _ in measured)
