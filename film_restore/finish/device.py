"""A chunk's finishing steps beside its restorer, on the restorer's device (a GPU node).

The compose task places each window's faces (their alignments) and sends them with the frame
around each face (never whole frames) to a FinishSession; the session warps their crops, restores
them and runs the steps to AddGrain there, in torch on the device, and gives back only each face's
region in its frame (RGB layer and matte). The compose task blends those into its frames and
encodes them (`Finish` is its step). CPU nodes keep every step in the compose task, in numpy and
OpenCV; the two give the same frames within a code value (tests/film_restore/test_device_finish.py).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from film_restore.finish import ops, steps
from film_restore.finish.paste import FaceRegion
from film_restore.finish.window import FaceKey, Window
from film_restore.records import ChunkResult


@dataclass
class FinishedRegions:
    """One window's faces as the session finished them: per face, its frame rectangle, RGB layer and matte (numpy)."""

    number: int
    regions: dict[FaceKey, tuple[tuple[slice, slice], np.ndarray, np.ndarray]] = field(default_factory=dict)


class FinishSession:
    """One chunk's steps from Restore to AddGrain on a device. restore(crops, boxes, actor) -> restored
    crops (the actor's restorer); device: a torch device ("cuda", or "cpu" for torch on the CPU).
    Windows are given in the order they are numbered; each call gives back the windows finished."""

    def __init__(self, restore: Callable, plan: steps.FacePlan, settings, device: str):
        """settings: the chunk's compose.ComposeSettings."""
        import torch

        self.result = ChunkResult(0, 0, 0)
        finishing, self.guard = steps.finishing(restore, plan, settings, self.result, on=torch.zeros(1, device=device))
        self.chain = steps.Chain(finishing)
        self.numbers: dict[int, int] = {}  # id(window) -> its number
        self.next_number = 0
        self.turn = threading.Condition()  # a threaded actor may run a session's calls at once: one at a time, in order

    def __call__(self, number: int, window: Window) -> list[FinishedRegions]:
        with self.turn:
            self.turn.wait_for(lambda: self.next_number == number)
            self.numbers[id(window)] = number
            done = self._finished(self.chain(window))
            self.next_number += 1
            self.turn.notify_all()
            return done

    def flush(self) -> tuple[list[FinishedRegions], ChunkResult, dict]:
        """The windows still held; what the steps counted; each track's guarded parts (numpy)."""
        with self.turn:
            done = self._finished(self.chain.flush())
        return done, self.result, dict(self.guard.parts)

    def _finished(self, windows: list[Window]) -> list[FinishedRegions]:
        finished = []
        for window in windows:
            regions = FinishedRegions(self.numbers.pop(id(window)))
            for key, face in window.faces.items():
                if face.region is not None:
                    regions.regions[key] = (face.region.region, ops.to_numpy(face.region.face), ops.to_numpy(face.region.alpha))
                face.surround.sent = None  # its device copy: no step reads this face's frame again (a track's last face is kept)
            finished.append(regions)
        return finished


class LocalDevice:
    """A restorer whose chunks are finished on a torch device in this process (where the compose
    task and the restorer share a machine, and for tests): open_session gives what Finish needs."""

    def __init__(self, restore: Callable, device: str):
        self.restore, self.device = restore, device

    def open_session(self, plan: steps.FacePlan, settings) -> tuple[Callable, Callable]:
        session = FinishSession(self.restore, plan, settings, self.device)
        return session, session.flush


class Finish(steps.Step):
    """The compose task's step that has its windows' faces finished by a FinishSession elsewhere: each
    window is sent (its faces and their surroundings, not its frames) before the previous answer is
    waited for, and given on once its faces' regions are back.

    send(number, window) -> the session's answer, or a request in flight whose result() gives it;
    flush() -> (answer, ChunkResult counts, guarded parts), or such a request."""

    def __init__(self, send: Callable, flush: Callable, result: ChunkResult):
        self.send, self.flush_session, self.result = send, flush, result
        self.waiting: dict[int, Window] = {}
        self.in_flight = None
        self.sent = 0
        self.parts: dict = {}

    def __call__(self, window: Window) -> list[Window]:
        number, self.sent = self.sent, self.sent + 1
        self.waiting[number] = window
        stripped = Window([], window.shape, window.faces)
        previous, self.in_flight = self.in_flight, self.send(number, stripped)
        for face in window.faces.values():
            self.result.faces_by_actor[face.actor or ""] = self.result.faces_by_actor.get(face.actor or "", 0) + 1
        return [] if previous is None else self._placed(_answer(previous))

    def flush(self) -> list[Window]:
        done = [] if self.in_flight is None else self._placed(_answer(self.in_flight))
        self.in_flight = None
        answer, counts, self.parts = _answer(self.flush_session())
        self.result.faces_held_still += counts.faces_held_still
        return done + self._placed(answer)

    def _placed(self, answer: list[FinishedRegions]) -> list[Window]:
        windows = []
        for finished in answer:
            window = self.waiting.pop(finished.number)
            for key, (region, layer, alpha) in finished.regions.items():
                window.faces[key].region = FaceRegion(region, layer, alpha, 0)
            windows.append(window)
        return windows


def _answer(reply):
    return reply.result() if hasattr(reply, "result") else reply
