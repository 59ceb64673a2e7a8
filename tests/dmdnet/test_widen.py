"""Growing a trained DMDNet wider (dmdnet.widen): the same restorations, and new channels that learn."""
import subprocess
import sys

import numpy as np
import torch

from tests.assets import REPO, TRAINED_MODEL

import dmdnet
from dmdnet.data import PreparedFaces
from dmdnet.degradations import degrade_for_evaluation
from dmdnet.images import to_tensor
from dmdnet.widen import widen


def real_batch(heldout_faces, count: int = 5):
    """x4-degraded held-out faces with their boxes, and ground truths."""
    faces = PreparedFaces(heldout_faces)
    identity = sorted(faces.identities)[0]
    truths = [faces.face(identity, name) for name in faces.identities[identity][:count]]
    lq = to_tensor([degrade_for_evaluation(face.crop, 4, seed=i) for i, face in enumerate(truths)])
    return lq, torch.from_numpy(np.stack([face.boxes for face in truths])), to_tensor([face.crop for face in truths])


def test_the_widened_trained_model_restores_real_faces_exactly_as_before(heldout_faces):
    narrow = dmdnet.load(TRAINED_MODEL).float()
    wide = widen(narrow, narrow.width + 4).eval()
    assert (wide.width, wide.dictionary_size, wide.image_size) == (narrow.width + 4, narrow.dictionary_size, narrow.image_size)
    assert sum(p.numel() for p in wide.parameters()) > 1.2 * sum(p.numel() for p in narrow.parameters())
    lq, boxes, truth = real_batch(heldout_faces)
    with torch.no_grad():
        generic = narrow(lq[:3], boxes[:3])
        assert (wide(lq[:3], boxes[:3]) - generic).abs().max() < 1e-5
        specific = narrow(lq[:3], boxes[:3], narrow.build_dictionary(truth[3:], boxes[3:]))
        wide_specific = wide(lq[:3], boxes[:3], wide.build_dictionary(truth[3:], boxes[3:]))
    assert (wide_specific - specific).abs().max() < 1e-5
    assert (specific - generic).abs().max() > 1e-3  # the references matter, so the specific read was compared too


def test_the_new_channels_learn(heldout_faces):
    narrow = dmdnet.load(TRAINED_MODEL).float()
    wide = widen(narrow, narrow.width + 4).train()
    lq, boxes, truth = real_batch(heldout_faces, count=4)
    for parameter in wide.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.SGD(wide.parameters(), lr=1e-3)

    def backward():
        optimizer.zero_grad()
        specific = wide.restore(lq[:2], boxes[:2], *wide.dictionary_tensors(truth[2:], boxes[2:]))
        generic = wide.restore(lq[:2], boxes[:2])
        (torch.nn.functional.mse_loss(generic, truth[:2]) + torch.nn.functional.mse_loss(specific, truth[:2])).backward()

    backward()
    key = wide.parts["le_64"].key[2]
    new_keys = slice(narrow.parts["le_64"].key[2].out_channels, None)
    assert not key.weight[new_keys].any()  # new key channels start at zero: the similarities are unchanged...
    assert key.weight.grad[new_keys].abs().sum() > 0  # ...and still learn, through the new query channels
    head, old, new = wide.head[0], slice(None, narrow.width), slice(narrow.width, None)
    assert not head.weight[old, new].any()
    assert head.weight.grad[old, new].abs().sum() > 0  # old channels learn to read the new ones...
    first = wide.encoder_lq.stages[0].down[0]
    assert not first.weight.grad[new].any()
    optimizer.step()
    backward()
    assert first.weight.grad[new].abs().sum() > 0  # ...and once they do, the new channels learn too
    new_values = slice(narrow.parts["le_64"].generic_value.shape[1], None)
    assert wide.parts["le_64"].generic_value.grad[:, new_values].abs().sum() > 0


def test_the_command_writes_a_wider_checkpoint_and_refuses_a_narrower_one(tmp_path):
    width = dmdnet.load(TRAINED_MODEL).width
    output = tmp_path / "wide.safetensors"
    refused_output = tmp_path / "refused.safetensors"

    def widen_command(width: int, path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dmdnet", "widen", "--checkpoint", str(TRAINED_MODEL), "--width", str(width),
                               "-o", str(path)], cwd=REPO, capture_output=True, text=True, timeout=300)

    done = widen_command(width + 2, output)
    assert done.returncode == 0, done.stderr
    assert dmdnet.load(output).width == width + 2
    refused = widen_command(width, refused_output)
    assert refused.returncode == 1 and not refused_output.exists()
    assert refused.stderr.strip() == f"error: the new width must be larger than the model's {width}, got {width}"
