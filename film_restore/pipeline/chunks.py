"""Sending a stage's units of work (the film's chunks, or its scan) to the stage's workers, and again when they fail.

At most settings.CHUNKS_IN_FLIGHT_PER_WORKER units per worker are sent ahead of their results,
whatever the film's length: the next one goes when one comes back (back-pressure), so neither the
driver nor Ray's object store holds more than that. A unit whose attempt fails (its worker lost:
killed, out of memory, its node gone; or raising) is sent again after a pause that doubles each
time, to whichever worker is free (Ray restarts a lost actor, which loads its models again). A unit
that failed settings.CHUNK_ATTEMPTS times ends the run in one line; one that no attempt can mend
(bad input, a folder not writable) ends it at once. Every failed attempt goes to the run's log with
the worker's traceback.
"""
from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Iterable

import ray

from film_restore.pipeline.failures import (
    ChunkFailed,
    FailureLog,
    InputError,
    NotWritable,
    cause_of,
    failure_line,
)
from film_restore.settings import CHUNK_ATTEMPTS, CHUNKS_IN_FLIGHT_PER_WORKER

# The pause before a unit's second attempt; it doubles for each further one (1 s, 2 s, 4 s, ...):
# long enough for Ray to restart a lost actor or declare a node dead, short against a chunk's work.
RETRY_PAUSE_S = 1.0
# How long the driver blocks in one wait for results, so that a retry falls due on time.
WAIT_S = 1.0


@dataclass
class Stage:
    """One stage's units of work on its workers.

    name: the stage as the run's lines name it (scan, analyse, compose); workers: the stage's actors,
    or None per task slot (tasks go wherever Ray has room); submit(worker, unit) -> ObjectRef sends one
    attempt; describe(unit): "chunk 7 (frames 1120-1279)"; state(): what the run has done so far, for
    the line that ends it ("6 of 40 chunks analysed"); say: a progress line; log: the run's FailureLog.
    """

    name: str
    film: str
    workers: list
    submit: Callable
    describe: Callable
    state: Callable[[], str]
    say: Callable[[str], None]
    log: FailureLog
    attempts: int = CHUNK_ATTEMPTS
    in_flight_per_worker: int = CHUNKS_IN_FLIGHT_PER_WORKER

    def run(self, units: Iterable, finished: Callable) -> None:
        """Calls finished(unit, result) for each unit as it completes; raises the run's end on a failure."""
        waiting = deque(units)
        due: list[tuple[float, int, object]] = []  # (when, order, unit) of units waiting for their next attempt
        order = itertools.count()
        failures: Counter = Counter()
        in_flight: dict = {}  # reference -> (unit, worker number)
        load = [0] * len(self.workers)
        try:
            while waiting or due or in_flight:
                while due and due[0][0] <= time.monotonic():
                    waiting.appendleft(heapq.heappop(due)[2])
                while waiting and min(load) < self.in_flight_per_worker:
                    worker = load.index(min(load))
                    unit = waiting.popleft()
                    in_flight[self.submit(self.workers[worker], unit)] = (unit, worker)
                    load[worker] += 1
                if not in_flight:
                    time.sleep(max(0.0, min(WAIT_S, due[0][0] - time.monotonic())))
                    continue
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
                for reference in ready:
                    unit, worker = in_flight.pop(reference)
                    load[worker] -= 1
                    try:
                        result = ray.get(reference)
                    except ray.exceptions.RayError as error:
                        pause = self._failed(unit, cause_of(error), failures)
                        heapq.heappush(due, (time.monotonic() + pause, next(order), unit))
                        continue
                    finished(unit, result)
        finally:
            if in_flight and self.workers[0] is None:  # tasks stop with the run (actors are killed by their owner)
                for reference in in_flight:
                    ray.cancel(reference, force=True)

    def _failed(self, unit, cause, failures: Counter) -> float:
        """Logs a failed attempt; the pause before the next one, or the run's end."""
        failures[unit] += 1
        attempt = failures[unit]
        stage = cause.stage or self.name
        where = f"{self.film}: {self.describe(unit)}, stage {stage}"
        self.log.write(f"{where}, attempt {attempt} of {self.attempts}: {cause.text}", cause.detail)
        if cause.kind == "input":
            raise InputError(f"{where}: {cause.text}")
        if cause.kind == "storage":
            raise NotWritable(f"{where}: {cause.text}; {self.state()}: rerun with --resume once it is writable")
        if attempt >= self.attempts:
            raise ChunkFailed(f"{where}: {failure_line(cause, attempt)}; {self.state()}: rerun with --resume")
        pause = RETRY_PAUSE_S * 2 ** (attempt - 1)
        self.say(f"{self.describe(unit)}, stage {stage}: {failure_line(cause, 1)}; trying again in {pause:g} s "
                 f"(attempt {attempt + 1} of {self.attempts})")
        return pause
