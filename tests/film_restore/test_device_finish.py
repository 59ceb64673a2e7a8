"""The finishing steps in torch beside the restorer (finish.device, as on a GPU node; here torch on the
CPU) give the frames the numpy and OpenCV steps give, on a real clip: within 1 code value."""
import cv2
import numpy as np
import pytest

from film_restore.compose import ComposeSettings, Composer
from film_restore.finish.device import LocalDevice
from film_restore.faces.identity import Identifier
from film_restore.finish import steps
from film_restore.records import ChunkResult, Frame, Track
from film_restore.tracking import identify_tracks
from film_restore.video import RGBPicture
from tests.assets import asset

FRAMES = 12


def sharpened_with_noise(crops, boxes, actor):
    """A restorer that changes the faces (sharpens and adds a little fresh noise), so every step has work."""
    faces = crops.astype(np.float32)
    sharp = np.stack([face + 0.8 * (face - cv2.GaussianBlur(face, (0, 0), 1.5)) for face in faces])
    return sharp + np.random.default_rng(int(faces.sum()) % 2**32).normal(0, 1.5, faces.shape).astype(np.float32)


def test_torch_finishing_beside_the_restorer_gives_the_numpy_frames(talking_head, monkeypatch):
    frames = talking_head["frames"][:FRAMES]
    tracks = identify_tracks([Track(0, talking_head["faces"][:FRAMES])], Identifier({"Speaker": talking_head["reference"][None]}, 0.45))
    assert [t.actor for t in tracks] == ["Speaker"] and len(tracks[0].faces) == FRAMES
    settings = ComposeSettings("ffv1", 128, references={"Speaker": talking_head["reference"]}, models_dir=str(asset("models")))
    outputs, results, kinds = {}, {}, set()
    pasted = steps.Paste.work

    def seen(self, window):  # what the torch path's Paste step works on
        pasted(self, window)
        kinds.update(type(face.region.face).__name__ for face in window.faces.values() if face.region is not None)

    monkeypatch.setattr(steps.Paste, "work", seen)
    estimate = steps.estimate_track_grain
    estimated_from = []

    def estimated(pictures, flows):  # what each track's grain is estimated from
        model = estimate(pictures, flows)
        estimated_from.append((type(pictures[0]).__name__, model is not None))
        return model

    monkeypatch.setattr(steps, "estimate_track_grain", estimated)
    for name, restore in (("numpy", sharpened_with_noise), ("torch", LocalDevice(sharpened_with_noise, "cpu"))):
        result = ChunkResult(0, 0, 0)
        pictures = {}
        in_memory = [Frame(index, index, RGBPicture(frame)) for index, frame in enumerate(frames)]
        kinds.clear()
        for window in Composer(None, settings, restore).windows(in_memory, tracks, result):
            pictures.update(window.pictures)
        outputs[name] = np.stack([pictures[index].rgb() for index in range(FRAMES)]).astype(np.int16)
        results[name] = result
    difference = np.abs(outputs["numpy"] - outputs["torch"])
    changed = np.abs(outputs["numpy"] - np.stack(frames)).max(axis=-1) > 0
    assert changed.sum() > 1000  # the faces were restored
    assert difference.max() <= 1, (difference.max(), (difference > 1).sum())
    assert kinds == {"Tensor"}  # the torch path ran in torch
    assert estimated_from == [("ndarray", True), ("Tensor", True)]  # the grain too
    [numpy_track], [torch_track] = results["numpy"].tracks, results["torch"].tracks
    assert torch_track["series"] == numpy_track["series"]
    assert torch_track["flicker_ratio"] == pytest.approx(numpy_track["flicker_ratio"], abs=1e-3)
