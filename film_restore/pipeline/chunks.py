"""Sending a stage's units of work (the film's chunks, or its scan) to the stage's workers, and again when they fail.

At most settings.CHUNKS_IN_FLIGHT_PER_WORKER units per worker are sent ahead of their results,
whatever the film's length: the next one goes when one comes back (back-pressure), so neither the
driver nor Ray's object store holds more than that. A unit whose attempt fails (its worker lost:
killed, out of memory, its node gone; or raising) is sent again after a pause that doubles each
time. A lost actor is restarted by Ray (and loads its models again); until it is back, nothing is
sent to it, so one loss costs the units it held one attempt each, not every attempt its restart
outlasts. A unit that failed settings.CHUNK_ATTEMPTS times ends the run in one line; one that no
attempt can mend (bad input, a folder not writable) ends it at once. Every failed attempt goes to
the run's log with the worker's traceback.
"""
from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Iterable

import ray

from film_restore.pipeline.cluster import WAIT_S, WORKER_RETURN_S, back
from film_restore.pipeline.failures import (
    ChunkFailed,
    FailureLog,
    InputError,
    NotWritable,
    cause_of,
    failure_line,
    in_ray,
)
from film_restore.settings import CHUNK_ATTEMPTS, CHUNKS_IN_FLIGHT_PER_WORKER

# The pause before a unit's second attempt; it doubles for each further one (1 s, 2 s, 4 s, ...).
RETRY_PAUSE_S = 1.0


@dataclass
class Stage:
    """One stage's units of work on its workers.

    name: the stage as the run's lines name it (scan, analyse, compose); workers: the stage's actors
    (each with a ready() method), or None per task slot (tasks go wherever Ray has room);
    submit(worker, unit) -> ObjectRef sends one attempt; describe(unit): "chunk 7 (frames 1120-1279)";
    state(): what the run has done so far, for the line that ends it ("6 of 40 chunks analysed");
    say: a progress line; log: the run's FailureLog.
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
        returning: dict = {}  # reference of back(actor) -> (worker number, since when) of actors lost
        load = [0] * len(self.workers)
        gone: set[int] = set()  # actors lost for good
        try:
            while waiting or due or in_flight:
                while due and due[0][0] <= time.monotonic():
                    waiting.appendleft(heapq.heappop(due)[2])
                self._send(waiting, in_flight, load, away={worker for worker, _ in returning.values()} | gone)
                if not in_flight and not returning:
                    time.sleep(max(0.0, min(WAIT_S, due[0][0] - time.monotonic())) if due else WAIT_S)
                    continue
                with in_ray():
                    ready, _ = ray.wait([*in_flight, *returning], num_returns=1, timeout=WAIT_S)
                for reference in ready:
                    if reference in returning:
                        self._returned(reference, returning, gone)
                        continue
                    unit, worker = in_flight.pop(reference)
                    load[worker] -= 1
                    try:
                        with in_ray():
                            result = ray.get(reference)
                    except ray.exceptions.RayError as error:
                        cause = cause_of(error)
                        pause = self._failed(unit, cause, failures)
                        heapq.heappush(due, (time.monotonic() + pause, next(order), unit))
                        actor = self.workers[worker]
                        if cause.kind == "lost" and actor is not None and worker not in gone and \
                                worker not in {w for w, _ in returning.values()}:
                            returning[back(actor)] = (worker, time.monotonic())
                        continue
                    finished(unit, result)
                self._overdue(returning, gone)
        finally:
            if in_flight and self.workers[0] is None:  # tasks stop with the run (actors are killed by their owner)
                for reference in in_flight:
                    ray.cancel(reference, force=True)

    def _send(self, waiting: deque, in_flight: dict, load: list, away: set) -> None:
        """Units to the least loaded workers that are there, up to in_flight_per_worker each."""
        while waiting:
            present = [worker for worker in range(len(self.workers)) if worker not in away]
            worker = min(present, key=load.__getitem__, default=None)
            if worker is None or load[worker] >= self.in_flight_per_worker:
                return
            unit = waiting.popleft()
            in_flight[self.submit(self.workers[worker], unit)] = (unit, worker)
            load[worker] += 1

    def _returned(self, reference, returning: dict, gone: set) -> None:
        worker, _ = returning.pop(reference)
        try:
            with in_ray():
                ray.get(reference)
        except ray.exceptions.RayError as error:
            gone.add(worker)
            self._check_workers_left(gone, cause_of(error).text)

    def _overdue(self, returning: dict, gone: set) -> None:
        """Actors lost longer than WORKER_RETURN_S are given up."""
        for reference, (worker, since) in list(returning.items()):
            if time.monotonic() - since > WORKER_RETURN_S:
                del returning[reference]
                gone.add(worker)
                self._check_workers_left(gone, f"worker lost and not back within {WORKER_RETURN_S} s")

    def _check_workers_left(self, gone: set, why: str) -> None:
        if len(gone) == len(self.workers):
            raise ChunkFailed(f"{self.film}: stage {self.name}: every worker is lost for good ({why}); "
                              f"{self.state()}: rerun with --resume")

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
