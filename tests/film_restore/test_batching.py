"""BatchingRestorer: concurrent requests are merged into passes of one actor, results unchanged."""
import asyncio
import threading

import numpy as np
import pytest
import torch

from dmdnet.export import example_inputs
from film_restore.batching import BatchingRestorer

OFFSET = {"ann": 1000.0, "bob": 2000.0, None: 0.0}


class RecordingModel:
    """A fake forward: face i becomes crops[i] + the actor's offset; records each call."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay, self.lock = [], delay, threading.Lock()

    def __call__(self, crops, boxes, actor):
        with self.lock:
            self.calls.append((actor, len(crops)))
        threading.Event().wait(self.delay)
        return crops.astype(np.float32) + OFFSET[actor]


def _faces(first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    crops = np.arange(first, first + count, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float32)
    return crops, np.zeros((count, 4, 4), np.float32)


def _concurrently(batcher, requests):
    """Runs restore(crops, boxes, actor) for each request in its own thread, all released at once."""
    results, start = [None] * len(requests), threading.Barrier(len(requests))

    def call(index, crops, boxes, actor):
        start.wait()
        results[index] = batcher.restore(crops, boxes, actor)

    threads = [threading.Thread(target=call, args=(i, *request)) for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_of_one_actor_share_forward_passes():
    model = RecordingModel()
    requests = [(*_faces(10 * i, 3), "ann") for i in range(4)]
    with BatchingRestorer(model, batch_size=8, max_wait_s=0.5) as batcher:
        results = _concurrently(batcher, requests)
        counts = batcher.counts()
    for (crops, _, actor), result in zip(requests, results):
        np.testing.assert_array_equal(result, crops + OFFSET[actor])
    assert [size for _, size in model.calls] == [8, 4]  # 12 faces in passes of at most 8
    assert counts == {"forward_passes": 2, "faces": 12, "requests": 4, "mean_batch": 6.0, "mean_request": 3.0}


def test_actors_never_share_a_pass_and_large_requests_are_split():
    model = RecordingModel()
    requests = [(*_faces(0, 20), "ann"), (*_faces(100, 2), "bob"), (*_faces(200, 3), None), (*_faces(300, 5), "bob")]
    with BatchingRestorer(model, batch_size=8, max_wait_s=0.2) as batcher:
        results = _concurrently(batcher, requests)
    for (crops, _, actor), result in zip(requests, results):
        np.testing.assert_array_equal(result, crops + OFFSET[actor])
    per_actor = {actor: sorted(size for a, size in model.calls if a == actor) for actor in OFFSET}
    assert per_actor == {"ann": [4, 8, 8], "bob": [7], None: [3]}


def test_a_lone_request_waits_no_longer_than_the_deadline():
    model = RecordingModel()
    with BatchingRestorer(model, batch_size=64, max_wait_s=0.05) as batcher:
        crops, boxes = _faces(0, 2)
        np.testing.assert_array_equal(batcher.restore(crops, boxes, "ann"), crops + OFFSET["ann"])
    assert model.calls == [("ann", 2)]


def test_a_failing_pass_fails_its_requests_and_the_worker_goes_on():
    def forward(crops, boxes, actor):
        if actor == "bob":
            raise RuntimeError("out of memory")
        return crops

    with BatchingRestorer(forward, batch_size=4, max_wait_s=0.0) as batcher:
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.restore(*_faces(0, 2), "bob")
        crops, boxes = _faces(5, 2)
        np.testing.assert_array_equal(batcher.restore(crops, boxes, "ann"), crops)


def test_async_callers_are_merged():
    model = RecordingModel()

    async def main(batcher):
        return await asyncio.gather(*[batcher.restore_async(*_faces(10 * i, 2), "ann") for i in range(3)])

    with BatchingRestorer(model, batch_size=8, max_wait_s=0.3) as batcher:
        results = asyncio.run(main(batcher))
    assert model.calls == [("ann", 6)]
    np.testing.assert_array_equal(results[2], _faces(20, 2)[0] + OFFSET["ann"])


def test_merged_passes_restore_what_each_request_gets_alone(small_model):
    """The real narrow network: two callers of one actor merged, a generic face apart."""
    lq, boxes = example_inputs(small_model, batch=3)
    refs, ref_boxes = example_inputs(small_model, batch=1)
    dictionaries = {"ann": small_model.build_dictionary(refs, ref_boxes), None: None}

    def forward(crops, boxes, actor):
        with torch.inference_mode():
            return small_model(crops, boxes, dictionaries[actor])

    requests = [(lq[0:1], boxes[0:1], "ann"), (lq[1:2], boxes[1:2], "ann"), (lq[2:3], boxes[2:3], None)]
    with BatchingRestorer(forward, batch_size=8, max_wait_s=0.5) as batcher:
        results = _concurrently(batcher, requests)
        counts = batcher.counts()
    for (crops, crop_boxes, actor), result in zip(requests, results):
        # Equal up to float32 rounding: convolution kernels are chosen per batch size.
        assert (result - forward(crops, crop_boxes, actor)).abs().max() < 1e-3
    assert counts["forward_passes"] == 2 and counts["mean_batch"] > counts["mean_request"]


def test_a_face_gives_the_same_bits_alone_or_with_others():
    """FaceRestorer's passes all have the batch's shape: a face's result does not depend on how many
    faces a pass merged (as it would: convolutions pick their method by batch size), so a chunk
    restored again after a lost worker gives the same bytes."""
    from film_restore.restore import FaceRestorer
    from tests.assets import TRAINED_MODEL

    restorer = FaceRestorer(TRAINED_MODEL, {}, batch=4)
    size = restorer.image_size
    crops = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[0.3, 0.35, 0.45, 0.5], [0.55, 0.35, 0.7, 0.5], [0.4, 0.45, 0.6, 0.6],
                              [0.35, 0.65, 0.65, 0.8]], np.float32) * size, (4, 1, 1))
    together = restorer.restore(crops, boxes, None)
    for face in range(4):
        np.testing.assert_array_equal(restorer.restore(crops[face:face + 1], boxes[face:face + 1], None)[0], together[face])
