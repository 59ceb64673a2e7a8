"""The exported ONNX graphs compute what torch computes, for any batch and number of references."""
import numpy as np
import onnxruntime
import pytest
import torch

from dmdnet.export import build_tensorrt_engine, dictionary_input_names, example_inputs
from dmdnet.model import part_names


def _torch_restore(model, inputs):
    lq, boxes, *dictionary = inputs
    if not dictionary:
        return model.restore(lq, boxes)
    return model.restore(lq, boxes, dict(zip(part_names(), dictionary[0::2])), dict(zip(part_names(), dictionary[1::2])))


@pytest.fixture(scope="module")
def graphs(small_onnx_graphs):
    """specific -> the narrow network's exported graph (dmdnet.export.export_onnx, through the engines' cache)."""
    return dict(zip((False, True), small_onnx_graphs))


@pytest.mark.parametrize("specific", [False, True])
def test_onnx_graph_equals_torch(graphs, small_model, specific):
    session = onnxruntime.InferenceSession(str(graphs[specific]), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["lq", "boxes"] + (dictionary_input_names() if specific else [])
    # Traced with batch 2 and 3 references; run with other counts to prove they are dynamic.
    for batch, references in ((1, 1), (3, 5)):
        inputs = example_inputs(small_model, batch, references if specific else None)
        with torch.no_grad():
            expected = _torch_restore(small_model, inputs).numpy()
        (restored,) = session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})
        assert restored.shape == (batch, 3, 512, 512)
        assert np.abs(restored - expected).max() < 1e-3


def test_tensorrt_engine_builds_from_the_onnx_graph(graphs, tmp_path):
    pytest.importorskip(
        "tensorrt", reason="TensorRT cannot be installed on these CPU machines; this runs on a GPU node that has it"
    )
    engine = build_tensorrt_engine(graphs[True], tmp_path / "dmdnet.engine", batch=(1, 2, 4), references=(1, 4, 8))
    assert engine.stat().st_size > 0


def test_tensorrt_missing_is_a_clear_error(graphs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeError, match="TensorRT is not installed"):
        build_tensorrt_engine(graphs[False], tmp_path / "x.engine")
    assert not (tmp_path / "x.engine").exists()
