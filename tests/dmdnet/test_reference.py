"""The contract: the full-size network reproduces the authors' outputs for seeded weights."""
import json

import numpy as np
import pytest
import torch

from tests.assets import asset, reference_module
import dmdnet
from dmdnet import DMDNet, component_boxes
from dmdnet.checkpoint import authors_manifest
from dmdnet.images import to_tensor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_model(vectors):
    manifest = json.loads(asset("dmdnet_reference/state_dict_manifest.json").read_text())
    state = reference_module().make_state(manifest, int(vectors["seed"]), float(vectors["gain"]))
    return dmdnet.load(state)


def test_our_network_declares_exactly_the_checkpoint_keys_and_shapes():
    manifest = json.loads(asset("dmdnet_reference/state_dict_manifest.json").read_text())
    ours = {name: list(entry[1]) for name, entry in authors_manifest(DMDNet()).items()}
    assert ours == manifest
    assert len(ours) == 1014


def test_boxes_from_landmarks_are_exact(vectors):
    assert np.array_equal(component_boxes(vectors["lq_landmarks"]), vectors["lq_boxes"])
    for landmarks, boxes in zip(vectors["ref_landmarks"], vectors["ref_boxes"]):
        assert np.array_equal(component_boxes(landmarks), boxes)


@torch.no_grad()
def test_generic_and_specific_outputs_match_the_authors(full_model, vectors):
    lq = to_tensor([vectors["lq"]])
    boxes = torch.from_numpy(vectors["lq_boxes"][None])
    generic = full_model(lq, boxes)[0].permute(1, 2, 0).numpy()
    assert np.abs(generic - vectors["generic"]).max() < 1e-4

    dictionary = full_model.build_dictionary(to_tensor(list(vectors["ref_images"])), torch.from_numpy(vectors["ref_boxes"]))
    assert dictionary.num_references == len(vectors["ref_images"])
    assert np.abs(dictionary.keys["le_256"].numpy() - vectors["specific_dict_le256_key"]).max() < 1e-4
    specific = full_model(lq, boxes, dictionary)[0].permute(1, 2, 0).numpy()
    assert np.abs(specific - vectors["specific"]).max() < 1e-4
    # The two results differ where the dictionaries differ: the check is not vacuous.
    assert np.abs(specific - generic).max() > 0.1


@torch.no_grad()
def test_a_batch_of_different_faces_equals_single_calls(small_model, vectors):
    # Whether faces of a batch stay apart (per-face boxes, parts and attention) does not depend
    # on the width: the narrow network at full size runs the same code as the authors'.
    faces = to_tensor(list(vectors["ref_images"]))
    boxes = torch.from_numpy(vectors["ref_boxes"])
    assert len({tuple(b.ravel()) for b in vectors["ref_boxes"]}) == len(faces)
    assert small_model.image_size == faces.shape[-1]
    dictionary = small_model.build_dictionary(faces[:2], boxes[:2])
    for used in (None, dictionary):
        batched = small_model(faces, boxes, used)
        single = torch.cat([small_model(faces[i : i + 1], boxes[i : i + 1], used) for i in range(len(faces))])
        assert (batched - single).abs().max() < 1e-5
