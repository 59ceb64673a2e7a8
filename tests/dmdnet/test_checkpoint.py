"""Loading the authors' checkpoint format: files, state dicts, and clear errors."""
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.assets import small_state
import dmdnet
from dmdnet import CheckpointError, DMDNet


@pytest.fixture(scope="module")
def state():
    return small_state()


def _tensors(state, dtype=torch.float32):
    return {name: torch.from_numpy(value).to(dtype) for name, value in state.items()}


def _same_weights(a: DMDNet, b: DMDNet) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_torch_saved_state_dict_loads_from_a_path(tmp_path, state, small_model):
    path = tmp_path / "DMDNet.pth"
    torch.save(_tensors(state), path)
    loaded = dmdnet.load(path)
    assert not loaded.training
    assert (loaded.width, loaded.dictionary_size) == (8, 16)
    assert _same_weights(loaded, small_model)
    assert loaded.fingerprint == small_model.fingerprint


def test_spectral_norm_is_folded_into_the_weight(state, small_model):
    stem = "up4.4."
    w = state[stem + "weight_orig"]
    sigma = state[stem + "weight_u"] @ (w.reshape(w.shape[0], -1) @ state[stem + "weight_v"])
    assert np.allclose(small_model.head[4].weight.detach().numpy(), w / sigma, rtol=1e-6)


def test_wrapped_and_data_parallel_checkpoints_load(tmp_path, state, small_model):
    path = tmp_path / "wrapped.pth"
    torch.save({"params": {f"module.{k}": v for k, v in _tensors(state).items()}}, path)
    assert _same_weights(dmdnet.load(path), small_model)


def test_half_precision_safetensors_load_as_float32(tmp_path, state, small_model):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(state, torch.float16), str(path))
    loaded = dmdnet.load(path)
    assert loaded.head[4].weight.dtype == torch.float32
    assert torch.allclose(loaded.head[4].weight, small_model.head[4].weight, rtol=1e-2, atol=1e-3)


def test_missing_unexpected_and_misshaped_keys_are_all_listed(state):
    broken = dict(state)
    del broken["up4.4.bias"]
    broken["extra.weight"] = np.zeros(3, np.float32)
    broken["MSDilate.convi.bias"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointError) as error:
        dmdnet.load(broken)
    message = str(error.value)
    assert "missing (1): up4.4.bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "MSDilate.convi.bias (5,)" in message and "mis-shaped (1)" in message


def test_files_that_are_not_checkpoints_get_a_clear_error(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth is not a PyTorch checkpoint"):
        dmdnet.load(text)
    with pytest.raises(CheckpointError, match="no checkpoint file at .*absent.pth: download DMDNet.pth"):
        dmdnet.load(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="not a DMDNet checkpoint"):
        dmdnet.load({"conv.weight": torch.zeros(3)})


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"x": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="loads safely"):
        dmdnet.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_256_pixel_network_loads_with_its_geometry():
    from tests.assets import reference_module
    from dmdnet.checkpoint import authors_manifest

    manifest = {name: list(entry[1]) for name, entry in authors_manifest(DMDNet(8, 16, image_size=256)).items()}
    assert manifest["mo_256_mem_key"] == [16, 2, 27, 27] and manifest["le_64_mem_value"] == [16, 32, 5, 5]
    model = dmdnet.load(reference_module().make_state(manifest, 3, 1.5))
    assert model.image_size == 256
    boxes = torch.tensor([[[75, 94, 116, 134], [138, 91, 181, 134], [114, 136, 148, 170], [101, 158, 159, 216]]])
    with torch.no_grad():
        restored = model(torch.zeros(1, 3, 256, 256), boxes)
    assert restored.shape == (1, 3, 256, 256) and torch.isfinite(restored).all()
    with pytest.raises(ValueError, match="lq must be float B x 3 x 256 x 256"):
        model(torch.zeros(1, 3, 512, 512), boxes)
