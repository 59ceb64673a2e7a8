"""Batched inference, stored dictionaries and their checks, on a narrow seeded network and real faces."""

import numpy as np
import pytest
import torch

from tests.assets import asset, small_state
import dmdnet
from dmdnet import SpecificDictionary, component_boxes
from dmdnet.cli import read_face, read_landmarks
from dmdnet.images import to_tensor
from dmdnet.model import read_dictionary


def _testset_faces(identity: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = sorted(asset(f"media/dmdnet_testset/RefsImg/{identity}").glob("*.png"))[:count]
    landmarks = asset(f"media/dmdnet_testset/RefsLandmark/{identity}")
    boxes = [component_boxes(read_landmarks(landmarks / f"{p.name}.txt")) for p in images]
    return to_tensor([read_face(p) for p in images]), torch.from_numpy(np.stack(boxes))


@pytest.fixture(scope="module")
def faces():
    """Four real aligned faces of two people, with their own (different) boxes."""
    identities = sorted(p.name for p in asset("media/dmdnet_testset/RefsImg").iterdir())
    a, a_boxes = _testset_faces(identities[0], 2)
    b, b_boxes = _testset_faces(identities[1], 2)
    return torch.cat([a, b]), torch.cat([a_boxes, b_boxes])


@pytest.fixture(scope="module")
def dictionary(small_model):
    identities = sorted(p.name for p in asset("media/dmdnet_testset/RefsImg").iterdir())
    refs, boxes = _testset_faces(identities[0], 5)
    return small_model.build_dictionary(refs[2:], boxes[2:])


@torch.no_grad()
def test_batch_of_different_boxes_equals_single_calls(small_model, faces, dictionary):
    images, boxes = faces
    for used in (None, dictionary):
        batched = small_model(images, boxes, used)
        single = torch.cat([small_model(images[i : i + 1], boxes[i : i + 1], used) for i in range(4)])
        assert (batched - single).abs().max() < 1e-5
        shifted = small_model(images[:1], boxes[1:2], used)
        assert (shifted - single[:1]).abs().max() > 1e-2


@torch.no_grad()
def test_a_dictionary_read_does_not_depend_on_the_faces_place_in_the_batch():
    # The mouth's crop of a 256 px model: 27 x 27, rows of 5 x 729 values (not a multiple of 16),
    # and two references. Before the rows were padded, half the faces changed in the last bits.
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(8, 5, 27, 27, generator=generator)
    keys, values = torch.randn(2, 5, 27, 27, generator=generator), torch.randn(2, 20, 27, 27, generator=generator)
    read = read_dictionary(query, keys, values)
    order = torch.tensor([3, 1, 7, 0, 5, 2, 6, 4])
    reordered = read_dictionary(query[order], keys, values)
    assert all(torch.equal(reordered[i], read[order[i]]) for i in range(8))
    similarity = torch.einsum("bf,kf->bk", query.flatten(1).double(), keys.flatten(1).double()) / 2**0.5
    expected = torch.einsum("bk,kf->bf", similarity.softmax(1), values.flatten(1).double())
    assert (read.flatten(1).double() - expected).abs().max() < 1e-4


@torch.no_grad()
def test_the_specific_restore_decodes_once(small_model, faces, dictionary):
    calls = []
    hook = small_model.head.register_forward_hook(lambda *_: calls.append(1))
    try:
        small_model(faces[0], faces[1], dictionary)
    finally:
        hook.remove()
    assert len(calls) == 1


@torch.no_grad()
def test_stored_dictionary_round_trips(tmp_path, small_model, faces, dictionary):
    path = tmp_path / "actor.dict"
    dictionary.save(path)
    loaded = SpecificDictionary.load(path)
    assert loaded.num_references == 3
    assert loaded.fingerprint == small_model.fingerprint
    assert loaded.reference_hashes == dictionary.reference_hashes and len(set(loaded.reference_hashes)) == 3
    assert torch.equal(small_model(*faces, loaded), small_model(*faces, dictionary))
    assert not list(tmp_path.glob(".*tmp"))


@torch.no_grad()
def test_a_dictionary_of_another_model_is_refused(faces, dictionary):
    other = dmdnet.load(small_state(seed=8))
    with pytest.raises(ValueError, match="rebuild it with this checkpoint"):
        other(*faces, dictionary)


def test_files_that_are_not_dictionaries_are_refused(tmp_path):
    junk = tmp_path / "junk.dict"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="junk.dict is not a DMDNet dictionary file"):
        SpecificDictionary.load(junk)
    with pytest.raises(FileNotFoundError, match="python -m dmdnet dictionary"):
        SpecificDictionary.load(tmp_path / "absent.dict")


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((1, 3, 256, 256), torch.float32, "lq must be float B x 3 x 512 x 512"),
        ((1, 512, 512, 3), torch.float32, "lq must be float B x 3 x 512 x 512"),
        ((1, 3, 512, 512), torch.uint8, "dmdnet.images.to_tensor converts uint8 images"),
    ],
)
def test_wrong_image_shapes_are_named(small_model, shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        small_model(torch.zeros(shape, dtype=dtype), torch.zeros(1, 4, 4))


@torch.no_grad()
def test_numpy_inputs_are_accepted(small_model, faces):
    images, boxes = faces
    assert torch.equal(small_model(images.numpy(), boxes.numpy().astype(np.int32)), small_model(images, boxes))


def test_wrong_box_shapes_are_named(small_model):
    with pytest.raises(ValueError, match="boxes must be B x 4 x 4"):
        small_model(torch.zeros(1, 3, 512, 512), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="2 faces in lq but"):
        small_model(torch.zeros(2, 3, 512, 512), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="component_boxes needs 68 x 2"):
        component_boxes(np.zeros((5, 2)))
