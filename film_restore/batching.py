"""Merging concurrent restore requests into full forward passes.

Several compose tasks each send a window of faces to the same restore actor. Run one by
one, each request is a small forward pass and the accelerator idles between them. A
`BatchingRestorer` queues requests from any number of threads (a threaded Ray actor's
concurrent calls, or coroutines through `restore_async`), and one worker thread runs
`forward(crops, boxes, actor)` on up to `batch_size` faces of one actor at a time: requests
of the same actor are merged (a large request is split across passes), a pass starts as
soon as it is full or when its oldest request has waited `max_wait_s`. Faces of different
actors never share a pass (each actor has its own dictionary), so a result equals what
the request alone would have got: to the bit where `forward` gives every pass one shape, as
restore.FaceRestorer does.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from film_restore.settings import RESTORE_BATCH

# Long enough for the other compose tasks' requests to arrive, short against a forward pass.
DEFAULT_MAX_WAIT_S = 0.02


def _concatenate(parts):
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else torch.cat(parts)


@dataclass(eq=False)  # compared by identity: the pending queue removes requests by `is`
class _Request:
    crops: object
    boxes: object
    actor: str | None
    arrived: float
    future: Future = field(default_factory=Future)
    taken: int = 0  # faces already placed in a pass
    results: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.crops)


class BatchingRestorer:
    """Thread-safe front of `forward(crops, boxes, actor) -> restored` that batches across callers.

    counts() gives forward passes, faces, requests, and the mean batch and request sizes
    (a mean batch above the mean request size shows requests were merged).
    """

    def __init__(self, forward: Callable, batch_size: int = RESTORE_BATCH, max_wait_s: float = DEFAULT_MAX_WAIT_S):
        if batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"batch_size must be >= 1 and max_wait_s >= 0, got {batch_size} and {max_wait_s}")
        self.forward, self.batch_size, self.max_wait_s = forward, batch_size, max_wait_s
        self._pending: collections.deque[_Request] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._passes = self._faces = self._requests = 0
        self._worker = threading.Thread(target=self._run, name="film_restore-batching", daemon=True)
        self._worker.start()

    def submit(self, crops, boxes, actor: str | None) -> Future:
        """Queues a request; its future gives the restored faces in the request's order."""
        if len(crops) != len(boxes):
            raise ValueError(f"restore request has {len(crops)} crops but {len(boxes)} box sets: one per face")
        request = _Request(crops, boxes, actor, time.monotonic())
        with self._ready:
            if self._closed:
                raise RuntimeError("this BatchingRestorer is closed: create a new one")
            self._requests += 1
            if request.size == 0:
                request.future.set_result(crops)
                return request.future
            self._pending.append(request)
            self._ready.notify()
        return request.future

    def restore(self, crops, boxes, actor: str | None):
        """Blocking: the restored faces of this request (merged with others' while it waits)."""
        return self.submit(crops, boxes, actor).result()

    async def restore_async(self, crops, boxes, actor: str | None):
        """For async Ray actor methods: awaits the request without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(crops, boxes, actor))

    def counts(self) -> dict[str, float]:
        with self._ready:
            passes, faces, requests = self._passes, self._faces, self._requests
        return {
            "forward_passes": passes,
            "faces": faces,
            "requests": requests,
            "mean_batch": faces / passes if passes else 0.0,
            "mean_request": faces / requests if requests else 0.0,
        }

    def close(self) -> None:
        """Finishes the queued requests, then stops the worker."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._worker.join()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def _waiting_faces(self, actor) -> int:
        return sum(r.size - r.taken for r in self._pending if r.actor == actor)

    def _next_pass(self) -> list[tuple[_Request, int, int]] | None:
        """Slices (request, start, stop) of the next pass, waiting for it to fill; None once closed and empty."""
        with self._ready:
            while not self._pending:
                if self._closed:
                    return None
                self._ready.wait()
            oldest = self._pending[0]
            deadline = oldest.arrived + self.max_wait_s
            while not self._closed and self._waiting_faces(oldest.actor) < self.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            slices, room = [], self.batch_size
            for request in [r for r in self._pending if r.actor == oldest.actor]:
                take = min(room, request.size - request.taken)
                slices.append((request, request.taken, request.taken + take))
                request.taken += take
                room -= take
                if request.taken == request.size:
                    self._pending.remove(request)
                if room == 0:
                    break
            return slices

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as error:  # a bug here must fail the callers, not leave them waiting
            with self._ready:
                self._closed = True
                for request in self._pending:
                    if not request.future.done():
                        request.future.set_exception(error)
            raise

    def _serve(self) -> None:
        while (slices := self._next_pass()) is not None:
            crops = _concatenate([request.crops[start:stop] for request, start, stop in slices])
            boxes = _concatenate([request.boxes[start:stop] for request, start, stop in slices])
            try:
                restored = self.forward(crops, boxes, slices[0][0].actor)
            except Exception as error:  # the callers of this pass get the error, the worker goes on
                for request, _, _ in slices:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            with self._ready:
                self._passes += 1
                self._faces += len(crops)
            offset = 0
            for request, start, stop in slices:
                request.results.append(restored[offset : offset + stop - start])
                offset += stop - start
                if stop == request.size and not request.future.done():
                    request.future.set_result(_concatenate(request.results))
