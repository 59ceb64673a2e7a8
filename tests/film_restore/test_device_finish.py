"""The finishing steps in torch beside the restorer (finish.device, as on a GPU node; here torch on the
CPU) give the frames the numpy and OpenCV steps give, on a real clip: within 1 code value."""
import cv2
import numpy as np
import pytest

from film_restore.compose import ComposeSettings, Composer
from film_restore.finish.device import LocalDevice
from film_restore.faces.identity import Identifier
from film_restore.finish import steps
from film_restore.finish.paste import face_matte
from film_restore.records import ChunkResult, Frame, Track
from film_restore.tracking import identify_tracks
from film_restore.video import RGBPicture
from tests.assets import asset

FRAMES = 12


def sharpened_with_noise(crops, boxes, actor):
    """A restorer that changes the faces (sharpens and adds a little fresh noise, seeded by the faces' boxes:
    the same on both paths), so every step has work."""
    faces = crops.astype(np.float32)
    sharp = np.stack([face + 0.8 * (face - cv2.GaussianBlur(face, (0, 0), 1.5)) for face in faces])
    return sharp + np.random.default_rng(int(boxes.sum()) % 2**32).normal(0, 1.5, faces.shape).astype(np.float32)


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
    warp = steps.WarpCrops.work
    warped = []

    def warped_there(self, window):  # the crops the torch path's session warps itself
        warped.extend(face.aligned.crop is None for face in window.faces.values())
        warp(self, window)

    monkeypatch.setattr(steps.WarpCrops, "work", warped_there)
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
    assert warped == [True] * len(tracks[0].faces)  # and the crops (one face a frame)
    [numpy_track], [torch_track] = results["numpy"].tracks, results["torch"].tracks
    assert torch_track["series"] == numpy_track["series"]
    assert torch_track["flicker_ratio"] == pytest.approx(numpy_track["flicker_ratio"], abs=1e-3)


def test_each_image_primitive_gives_on_torch_what_it_gives_on_numpy(talking_head):
    # The primitives the finishing is written with (finish.ops), on a real face crop: torch's kernels, grids and
    # constants are built on the device and kept, and must read the pixels OpenCV reads (borders, odd sizes, batches).
    import torch

    from film_restore.finish import ops

    crops = talking_head["crops"][:2].astype(np.float32)[:, :, 3:]  # 2 x 128 x 125: not square, odd side
    on_torch = torch.as_tensor(crops)
    close = lambda numpy_result, torch_result: np.abs(numpy_result - torch_result.numpy()).max()  # noqa: E731
    for border in (ops.REFLECT101, ops.REFLECT, ops.REPLICATE, ops.CONSTANT):
        for sigma in (0.8, 3.0, 40.0):  # 40: a reach wider than the crop
            if border == ops.REFLECT101 and sigma == 40.0:
                continue  # torch's reflection pads less than the side only
            assert close(ops.blur(crops, sigma, border), ops.blur(on_torch, sigma, border)) < 1e-3, (border, sigma)
    matrices = np.array([[[0.7, 0.1, 5.0], [-0.1, 0.7, 9.0]], [[1.3, 0.0, -20.0], [0.0, 1.3, -11.5]]])
    for interpolation in (ops.LINEAR, ops.CUBIC):
        assert close(ops.affine(crops, matrices, (97, 61), interpolation), ops.affine(on_torch, matrices, (97, 61), interpolation)) < 1e-2
    assert close(ops.resize(crops, (200, 170), ops.LINEAR), ops.resize(on_torch, (200, 170), ops.LINEAR)) < 1e-3
    assert close(ops.resize(crops, (200, 170), ops.NEAREST), ops.resize(on_torch, (200, 170), ops.NEAREST)) == 0
    for images, size in ((crops[:, :, 1:], (64, 62)), (crops, (64, 62)), (crops, (45, 77)), (crops, (128, 41))):
        # area shrinks by a whole factor, by any, one side alone: OpenCV's sums to the bit
        assert close(ops.resize(images, size, ops.AREA), ops.resize(torch.as_tensor(images), size, ops.AREA)) == 0, size
    points = np.random.default_rng(1).uniform(-3, 130, (1, 40, 30, 2)).astype(np.float32)
    assert close(ops.sample(crops, points), ops.sample(on_torch, torch.as_tensor(points))) < 1e-3
    assert close(ops.warp(crops, points - ops.grid(points)), ops.warp(on_torch, torch.as_tensor(points) - ops.grid(torch.as_tensor(points)))) < 1e-3
    assert close(ops.blur(crops, 2.5, ops.CONSTANT, 11), ops.blur(on_torch, 2.5, ops.CONSTANT, 11)) < 1e-3  # a kernel of a given size
    landmarks = np.loadtxt(asset("media/dmdnet_testset/RefsLandmark/00005/0.png.txt"))
    assert close(face_matte(landmarks, 512), face_matte(landmarks, 512, like=on_torch)) < 1e-5  # the matte made on the device


def test_align_converts_only_what_the_faces_read_and_gives_the_whole_frames_crops(talking_head):
    # A film's frames are converted to RGB only around their faces (the crop's source, the surround):
    # the crops and surroundings are those the whole frame's RGB gives, whether the crop shrinks the frame or enlarges it.
    # A GPU node warps the crops beside the restorer, from the surroundings: OpenCV's crops but for rounding.
    import av
    import torch

    from film_restore.faces.align import align_face
    from film_restore.finish.window import Surround, Window
    from film_restore.video.picture import Picture

    rgb = np.ascontiguousarray(talking_head["frames"][0][:, 5:])  # odd offsets: half chroma samples at the edges
    picture = Picture.from_frame(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
    whole = picture.rgb()
    from dataclasses import replace

    tracked = talking_head["faces"][0]
    x1, y1, x2, y2 = tracked.face.box
    face = replace(tracked.face, box=(x1 - 5, y1, x2 - 5, y2), keypoints=tracked.face.keypoints - [5, 0],
                   landmarks=tracked.face.landmarks - [5, 0])
    for size in (64, 512):
        plan = steps.FacePlan.of([Track(0, [replace(tracked, face=face)])], 0)
        window = Window([Frame(0, 0, picture)], (picture.height, picture.width))
        steps.Align(plan, size).work(window)
        aligned, expected = window.faces[0, 0], align_face(whole, face, size)
        assert np.array_equal(aligned.aligned.crop, expected.crop) and np.array_equal(aligned.aligned.transform.matrix, expected.transform.matrix)
        surround = Surround.around(whole, expected, face.landmarks)
        assert aligned.surround.origin == surround.origin and np.array_equal(aligned.surround.rgb, surround.rgb)
        left = Window([Frame(0, 0, picture)], window.shape)
        steps.Align(plan, size, warp=False).work(left)
        assert left.faces[0, 0].aligned.crop is None
        steps.WarpCrops(torch.zeros(1)).work(left)
        difference = np.abs(left.faces[0, 0].aligned.crop.astype(int) - expected.crop)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (size, difference.max(), (difference > 0).mean())
