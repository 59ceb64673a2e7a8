"""One film's run: the state its stages share (job, video facts, cast, models, keys, work folder)
and the stages in order: scan, analyse, restore + compose + encode per chunk, join, report."""
from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import ray

import dmdnet
from film_restore import report as reports
from film_restore.cast import Cast, CastStore
from film_restore.faces import FaceAnalyzer
from film_restore.interlace import restored_field_order, whole_frames_note
from film_restore.compose import ComposeSettings
from film_restore.keys import job_keys
from film_restore.models import find_pack, pack_id, resolve_checkpoint
from film_restore.pipeline.cluster import (
    REQUESTS_IN_FLIGHT_PER_TASK,
    AnalyseActor,
    RestoreActor,
    as_completed,
    compose_task,
    cpu_workers,
    get,
    init_ray,
    restore_gpus,
    scan_task,
)
from film_restore.pipeline.job import Job, PipelineError
from film_restore.pipeline.progress import Progress
from film_restore.records import ChunkResult, Scan, Track
from film_restore.video import check_output, join, probe
from film_restore.workdir import WorkFolder


class FilmRun:
    """Everything known about one film before its stages run; each stage method adds its result."""

    def __init__(self, job: Job):
        started = time.perf_counter()
        self.job = job = job.absolute()
        self.film = job.input.name
        self.progress = Progress(self.film)
        if job.input.resolve() == job.output.resolve():
            raise PipelineError(f"the output {job.output} would overwrite the input: choose another -o")
        if not job.dry_run and not job.output.parent.is_dir():
            raise PipelineError(f"the output folder {job.output.parent} does not exist: create it or choose another -o")
        self.info = probe(job.input)
        if not job.dry_run:
            for warning in check_output(job.output, self.info, job.codec).warnings:
                self.progress.say(f"note: {warning}")
        if whole_frames_note(self.info):
            self.progress.say(f"note: {whole_frames_note(self.info)}")
        init_ray(job.address)  # before the slow preparations: a cluster that does not answer fails now
        # Resolved once (flag, environment, cache, shipped model); a dry run restores nothing and needs none.
        self.checkpoint = None if job.dry_run else resolve_checkpoint(job.checkpoint)
        if self.checkpoint is not None and self.checkpoint.note:
            self.progress.say(f"note: {self.checkpoint.note}")
        self.job = job = dataclasses.replace(job, checkpoint=self.checkpoint and self.checkpoint.path)
        self.cast = Cast.load(job.cast)
        self.pack = find_pack(job.models)
        face_models = pack_id(self.pack)
        store = CastStore(CastStore.default_folder(self.cast), FaceAnalyzer.from_models_dir(self.pack.directory), face_models)
        self.identifier = store.identifier(self.cast)
        self.dictionaries: dict[str, Path] = {}
        self.fingerprint = self.face_size = None
        self.batching = None  # the restorers' counts, once chunks were restored in this run
        self.restore_engines = None  # what ran DMDNet in the restorers and why, once they ran in this run
        if job.checkpoint is not None:
            model = dmdnet.load(job.checkpoint)
            self.fingerprint, self.face_size = model.fingerprint, model.image_size
            for actor in self.cast.actors:
                self.dictionaries[actor.name], _ = store.dictionary(store.references(actor), model)
        self.keys = job_keys(job, face_models, self.cast)
        self.work = WorkFolder(job.workroot, job.input, self.keys.parts["input_sha256"])
        self.timings = {"prepare": time.perf_counter() - started}  # checks, Ray, models, cast, dictionaries
        self._started = started

    def run(self) -> dict:
        """Restores the film (or analyses it, dry run); returns the report."""
        self.work.start(self.job.resume)
        scan = self._timed("scan", self.scan)
        self.progress.say(f"{len(scan.frame_pts)} frames, {len(scan.shots)} shots, {len(scan.chunks)} chunks")
        tracks = self._timed("analyse", lambda: self.analyse(scan))
        results = []
        if not self.job.dry_run:
            results = self._timed("restore_and_encode", lambda: self.compose(scan, tracks))
            self._timed("join", lambda: join([self.work.chunk_video(c, self.keys.compose) for c in scan.chunks],
                                             self.job.input, self.job.output, self.info, frame_pts=scan.frame_pts))
            self.work.remove_videos()
        self.timings["total"] = time.perf_counter() - self._started
        report = reports.build(self, scan, tracks, results)
        reports.write(report, self.job.report_path)
        self.progress.say("dry run: report written" if self.job.dry_run else f"done -> {self.job.output}")
        return report

    def _timed(self, stage: str, work):
        mark = time.perf_counter()
        result = work()
        self.timings[stage] = time.perf_counter() - mark
        return result

    def scan(self) -> Scan:
        scan = self.work.load_scan(self.keys.scan)
        if scan is None:
            self.progress.say("scanning")
            scan = get(scan_task.options(name="film_restore.scan").remote(str(self.job.input), self.job.chunk_frames, self.film))
            self.work.save_scan(self.keys.scan, scan)
        return scan

    def analyse(self, scan: Scan) -> dict[int, list[Track]]:
        key = self.keys.analysis
        tracks = _stored(scan, lambda chunk: self.work.load_tracks(chunk, key))
        missing = [chunk for chunk in scan.chunks if chunk.index not in tracks]
        if not missing:
            return tracks
        actors = [
            AnalyseActor.options(name=f"film_restore.analyse-{i}-{os.getpid()}").remote(
                str(self.pack.directory), self.identifier, self.job.detector_size, restored_field_order(self.info)
            )
            for i in range(cpu_workers(len(missing)))
        ]
        pending = {actors[number % len(actors)].analyse.remote(str(self.job.input), chunk, scan.frame_pts): chunk
                   for number, chunk in enumerate(missing)}
        for chunk, chunk_tracks in as_completed(pending):
            self.work.save_tracks(chunk, key, chunk_tracks)
            tracks[chunk.index] = chunk_tracks
            self.progress.frames("analysed", sum(len(c.frames) for c in scan.chunks if c.index in tracks), len(scan.frame_pts))
        for actor in actors:
            ray.kill(actor)
        return tracks

    def compose(self, scan: Scan, tracks: dict[int, list[Track]]) -> list[ChunkResult]:
        key = self.keys.compose
        results = _stored(scan, lambda chunk: self.work.load_chunk_result(chunk, key))
        missing = [chunk for chunk in scan.chunks if chunk.index not in results]
        if missing:
            gpus = restore_gpus()
            count = max(1, min(gpus, len(missing)))
            # Every request the compose tasks may have in flight at once gets a thread there.
            concurrency = REQUESTS_IN_FLIGHT_PER_TASK * -(-cpu_workers(len(missing)) // count) + 1
            restorers = [
                RestoreActor.options(name=f"film_restore.restore-{i}-{os.getpid()}", max_concurrency=concurrency,
                                     **({"num_gpus": 1} if gpus else {})).remote(
                    str(self.job.checkpoint), {a: str(p) for a, p in self.dictionaries.items()}, self.job.restore_batch,
                    self.film, self.job.engine, self.job.precision)
                for i in range(count)
            ]
            self.restore_engines = self._engines(restorers)
            finish_on_restorer = all(get(restorer.finishes_on_device.remote()) for restorer in restorers)
            settings = ComposeSettings(
                codec=self.job.codec, face_size=self.face_size, min_face=self.job.min_face, grain=self.job.grain,
                strength=self.job.strength, actor_strengths=self.cast.strengths, models_dir=str(self.pack.directory),
                references=dict(zip(self.identifier.names, self.identifier.centroids)),
            )
            pending = {}
            for number, chunk in enumerate(missing):
                video = self.work.chunk_video(chunk, key)
                video.parent.mkdir(parents=True, exist_ok=True)
                reference = compose_task.options(name=f"film_restore.compose-{chunk.index}").remote(
                    self.info, settings, restorers[number % len(restorers)], chunk, tracks[chunk.index], scan.frame_pts,
                    str(video), self.film, finish_on_restorer)
                pending[reference] = chunk
            frames_done = sum(r.frames for r in results.values())
            for chunk, result in as_completed(pending):
                self.work.save_chunk_result(chunk, key, result)
                results[chunk.index] = result
                frames_done += result.frames
                self.progress.frames("restored", frames_done, len(scan.frame_pts))
            self.batching = _merged_counts([get(restorer.batching.remote()) for restorer in restorers])
            for restorer in restorers:
                ray.kill(restorer)
        return [results[chunk.index] for chunk in scan.chunks]


    def _engines(self, restorers) -> list[dict]:
        """What runs DMDNet in the restorers (distinct descriptions), each said once; a restorer that
        could not start is a PipelineError with its reason."""
        try:
            described = [get(restorer.engine.remote()) for restorer in restorers]
        except ray.exceptions.RayActorError as error:
            # The error its constructor raised is the last "SomeError: message" line of Ray's text.
            raised = [line.strip() for line in str(error).splitlines() if re.match(r"\s*[\w.]*(Error|Exception|Unavailable): ", line)]
            raise PipelineError(f"restore: the restore actor did not start: {raised[-1] if raised else ' '.join(str(error).split())[-300:]}"
                                ) from None
        distinct = [d for i, d in enumerate(described) if d not in described[:i]]
        for engine in distinct:
            self.progress.say(f"restore: {engine['engine']} {engine['precision']} on {engine['device']} ({engine['reason']})")
        return distinct


def _merged_counts(counts: list[dict]) -> dict:
    """The restorers' batching counts as one: forward passes, faces, requests, mean batch and request size."""
    total = {name: sum(c[name] for c in counts) for name in ("forward_passes", "faces", "requests")}
    return {**total, "mean_batch": round(total["faces"] / max(total["forward_passes"], 1), 2),
            "mean_request": round(total["faces"] / max(total["requests"], 1), 2)}


def _stored(scan: Scan, load) -> dict:
    """The results the work folder already holds (a resumed run's), by chunk index."""
    found = {chunk.index: load(chunk) for chunk in scan.chunks}
    return {index: result for index, result in found.items() if result is not None}


def run(job: Job) -> dict:
    """Restores one film (or analyses it, dry run); returns the report."""
    return FilmRun(job).run()
