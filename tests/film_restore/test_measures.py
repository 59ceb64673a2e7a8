"""The measures of film_restore.finish (flicker, identity, fidelity), the track's flow they follow
and the hold-still's share, on a real talking-head track."""
import numpy as np
import pytest

from film_restore.finish import measures as quality, ops
from film_restore.finish.flow import PairFlow, chained, flows_in_frame, image_flow
from film_restore.finish.hold import steady_share
from film_restore.finish.measures import ChangeSamples


def test_the_track_flow_follows_a_real_face_on_crops_and_in_the_frame(talking_head):
    crops = talking_head["crops"].astype(np.float32)
    first, later = talking_head["crops"][0], talking_head["crops"][3]
    flow, valid = PairFlow.of_crops(first, later, scale=1.0).backward(128)
    # The earlier face brought onto the later one matches it better than it did unmoved.
    unmoved = np.abs(crops[0] - crops[3]).mean()
    assert np.abs(ops.warp(crops[:1], flow[None])[0] - crops[3]).mean() < 0.7 * unmoved
    assert 0.7 < valid.mean() <= 1.0
    # Two pairs chained follow as well as the flow between their ends.
    pairs = [PairFlow.of_crops(talking_head["crops"][t], talking_head["crops"][t + 1], 1.0) for t in range(3)]
    two = chained(pairs[2].backward(128), pairs[1].backward(128))
    assert np.abs(ops.warp(crops[1:2], two[0][None])[0] - crops[3]).mean() < 0.7 * np.abs(crops[1] - crops[3]).mean()
    # The same flow in frame pixels, through the two faces' alignments, moves the earlier frame onto the later.
    from film_restore.faces import align_face

    frames = talking_head["frames"]
    aligned = [align_face(frames[t], talking_head["faces"][t].face, 128) for t in (0, 3)]
    pair = PairFlow.of_crops(aligned[0].crop, aligned[1].crop, aligned[1].transform.scale)
    box = talking_head["faces"][3].face.box
    region = np.s_[int(box[1]):int(box[3]), int(box[0]):int(box[2])]
    (in_frame, inside), = flows_in_frame([(pair, aligned[1].transform, aligned[0].transform)], region)
    earlier, now = frames[0].astype(np.float32), frames[3][region].astype(np.float32)
    grid_y, grid_x = np.mgrid[region]
    moved = ops.sample(earlier[None], (in_frame + np.stack([grid_x, grid_y], -1).astype(np.float32))[None])[0]
    assert np.abs(moved - now)[inside].mean() < 0.7 * np.abs(earlier[region] - now)[inside].mean()
    assert inside.mean() > 0.7
    measured, _ = image_flow(frames[0][region], frames[3][region])
    assert np.median(np.abs(in_frame - measured)[inside]) < 1.0  # agrees with a flow of the frames themselves
    # Where the faces are on a GPU node's device, the same in frame pixels there (torch; here on the CPU).
    import torch

    (on_torch, inside_on_torch), = flows_in_frame([(pair, aligned[1].transform, aligned[0].transform)], region, like=torch.zeros(1))
    assert np.abs(on_torch.numpy() - in_frame)[inside].max() < 1e-3
    assert (inside_on_torch.numpy() != inside).mean() < 1e-3
    # A pair sent to the device and checked there (forward-backward) is read on other grids and chained there as on numpy.
    on_device = [PairFlow.of_crops(talking_head["crops"][t], talking_head["crops"][t + 1], 1.0, like=torch.zeros(1)) for t in range(3)]
    assert isinstance(on_device[0].back, torch.Tensor) and isinstance(on_device[0].ahead_valid, torch.Tensor)
    for numpy_pair, torch_pair in zip(pairs, on_device):
        assert (torch_pair.back_valid.numpy() != numpy_pair.back_valid).mean() < 1e-3
        assert (torch_pair.ahead_valid.numpy() != numpy_pair.ahead_valid).mean() < 1e-3
    for numpy_flow, torch_flow in ((pairs[2].backward(200), on_device[2].backward(200)),
                                   (chained(pairs[2].forward(200), pairs[1].forward(200)),
                                    chained(on_device[2].forward(200), on_device[1].forward(200)))):
        assert np.abs(torch_flow[0].numpy() - numpy_flow[0]).max() < 1e-3
        assert (torch_flow[1].numpy() != numpy_flow[1]).mean() < 1e-3


def test_a_flow_is_sampled_exactly_on_numpy_as_on_torch(talking_head):
    # OpenCV 5 remaps two-channel float images in fixed point (1/32 pixel): a flow's samples would be
    # off by up to 1/64 pixel times its gradient. ops.sample keeps them exact, as torch's are.
    import torch

    flow, _ = PairFlow.of_crops(talking_head["crops"][0], talking_head["crops"][3], 1.0).backward(128)
    points = np.random.default_rng(0).uniform(0, 127, (1, 64, 64, 2)).astype(np.float32)
    on_numpy = ops.sample(flow[None], points)[0]
    on_torch = ops.sample(torch.as_tensor(flow)[None], torch.as_tensor(points))[0].numpy()
    assert np.abs(on_numpy - on_torch).max() < 1e-4


def test_the_kept_dis_instance_gives_a_fresh_ones_flows_whatever_came_before(talking_head):
    # Each thread keeps its DIS instances (their buffers) from flow to flow: no flow may depend on the ones before it.
    import cv2

    from film_restore.finish import flow

    grays = [cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) for crop in talking_head["crops"][:3]]
    for side in (128, 64, 128, 97):
        first, second = (cv2.resize(picture, (side, side), interpolation=cv2.INTER_AREA) for picture in grays[side % 2:side % 2 + 2])
        for tuned in (True, False):
            fresh = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            if tuned:
                fresh.setPatchStride(flow.DIS_PATCH_STRIDE)
                fresh.setGradientDescentIterations(flow.DIS_DESCENT_ITERATIONS)
                fresh.setVariationalRefinementIterations(flow.DIS_REFINEMENT_ITERATIONS)
            assert np.array_equal(flow._dis(tuned).calc(first, second, None), fresh.calc(first, second, None)), (side, tuned)
    assert flow._dis(True) is flow._dis(True) and flow._dis(True) is not flow._dis(False)


def test_flicker_is_one_for_the_input_and_rises_with_added_flicker(talking_head):
    crops = talking_head["crops"][:8]
    assert quality.flicker(crops, crops).ratio == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(0, 4, crops.shape).astype(np.float32)
    flickering = quality.flicker(crops, crops + noise)
    assert flickering.ratio > 1.3
    # The same change on every frame (a steady tint) adds no flicker.
    assert quality.flicker(crops, crops.astype(np.float32) + 10).ratio == pytest.approx(1.0, abs=0.02)


def test_the_second_flicker_measure_follows_its_own_flow_and_agrees_with_the_first(talking_head):
    crops = talking_head["crops"][:8]
    frames = crops.astype(np.float32)
    # Farneback's flow follows the face on its own: the earlier face brought onto the later one matches it better.
    flow, valid = image_flow(crops[0], crops[3], method="farneback")
    assert np.abs(ops.warp(frames[:1], flow[None])[0] - frames[3]).mean() < 0.7 * np.abs(frames[0] - frames[3]).mean()
    assert 0.7 < valid.mean() <= 1.0
    import cv2

    smoothed = np.stack([cv2.GaussianBlur(crop, (0, 0), 1.0) for crop in frames])
    flickering = frames + np.random.default_rng(0).normal(0, 0.5, frames.shape).astype(np.float32)
    # Where a measure's flow misses, the input's change grows as much as the output's: the ratios
    # part by about (ratio - 1) x the share of the input's change that is the flow's error.
    for outputs in (smoothed, flickering):
        first, second = quality.flicker(crops, outputs), quality.flicker(crops, outputs, flow="farneback")
        assert abs(first.ratio - 1) > 0.1 and second.ratio == pytest.approx(first.ratio, abs=0.1 * abs(first.ratio - 1))
    with pytest.raises(ValueError, match="flow method must be one of dis, farneback"):
        quality.flicker(crops, crops, flow="lucas-kanade")


def test_identity_of_a_real_face_to_its_actor(talking_head):
    embeddings = talking_head["embed"](talking_head["crops"][:4])
    assert (quality.identity(embeddings, talking_head["reference"]) > 0.6).all()
    assert quality.identity(embeddings, embeddings) == pytest.approx(np.ones(4), abs=1e-5)
    with pytest.raises(ValueError, match="one recogniser"):
        quality.identity(embeddings, np.ones(3, np.float32))


def test_fidelity_and_change_in_a_face_box(talking_head):
    frame = talking_head["frames"][0]
    box = talking_head["faces"][0].face.box
    noisy = np.clip(frame + np.random.default_rng(1).normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    psnr, ssim = quality.fidelity(noisy, frame, box)
    assert 31.5 < psnr < 33.0  # 20 log10(255 / 6) = 32.6 dB, less a little clipping
    assert 0.5 < ssim < 0.99
    assert quality.fidelity(frame, frame, box)[0] == float("inf")
    assert quality.mean_change(noisy, frame, box) == pytest.approx(6 * np.sqrt(2 / np.pi), rel=0.1)
    with pytest.raises(ValueError, match="outside"):
        quality.box_region(frame, (400, 400, 500, 500))


def test_steady_share_keeps_the_restoration_that_changes_no_more_than_the_input():
    # Two samples changing by 1 level; a restoration changing them by 3 and -1: the mean |change|
    # stays 1 up to half of it, then grows.
    def share(input_change, output_change):
        return steady_share(ChangeSamples(np.array(input_change), np.array(output_change), np.zeros((2, 2))))

    assert share([1.0, 1.0], [3.0, -1.0]) == pytest.approx(0.5, abs=1e-4)
    assert share([2.0, -2.0], [1.0, -1.0]) == 1.0  # changes less: kept whole
    assert share([0.0, 0.0], [0.0, 0.00005]) == 1.0  # float rounding is not flicker
    assert share([0.0, 0.0], [0.5, -0.5]) < 0.01  # a still face must stay still
