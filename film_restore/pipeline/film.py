"""One film's run: the state its stages share (job, video facts, cast, models, keys, work folder)
and the stages in order: scan, analyse, restore + compose + encode per chunk, join, report.

The driver holds the film's index (the scan: one timestamp per frame, its shots and chunks), the
outline of each track for the report, and a bounded number of chunks in flight (pipeline.chunks);
tracks and restored chunks go from the workers to the work folder and from there to the next stage.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from pathlib import Path

import ray

import dmdnet
from film_restore import report as reports
from film_restore.cast import Cast, CastStore
from film_restore.faces import FaceAnalyzer
from film_restore.interlace import FIELDS_PER_FRAME, restored_field_order, whole_frames_note
from film_restore.compose import ComposeSettings
from film_restore.edits import ChunkEdits, Edits, ResolvedEdits
from film_restore.keys import job_keys
from film_restore.models import find_pack, pack_id, resolve_checkpoint
from film_restore.pipeline.chunks import Stage
from film_restore.pipeline.cluster import (
    REQUESTS_IN_FLIGHT_PER_TASK,
    AnalyseActor,
    RestoreActor,
    compose_task,
    cpu_workers,
    gathered,
    init_ray,
    restore_gpus,
    scan_task,
)
from film_restore.pipeline.failures import FailureLog, InputError, Interrupted, ModelError, NotWritable, in_ray
from film_restore.pipeline.job import Job
from film_restore.pipeline.progress import Progress
from film_restore.records import Chunk, Scan, TrackOutline
from film_restore.settings import CHUNKS_IN_FLIGHT_PER_WORKER
from film_restore.video import check_output, join, probe
from film_restore.video.formats import StorageError
from film_restore.workdir import DamagedResult, WorkFolder, failure_log


class FilmRun:
    """Everything known about one film before its stages run; each stage method adds its result."""

    def __init__(self, job: Job):
        started = time.perf_counter()
        self.job = job = job.absolute()
        self.film = job.input.name
        self.progress = Progress(self.film)
        self.log = FailureLog(failure_log(job.workroot, job.input))
        if job.input.resolve() == job.output.resolve():
            raise InputError(f"the output {job.output} would overwrite the input: choose another -o")
        if not job.dry_run:
            if not job.output.parent.is_dir():
                raise NotWritable(f"the output folder {job.output.parent} does not exist: create it or choose another -o")
            _check_writable(job.output.parent, "the output folder", "choose another -o")
        _check_writable(job.workroot, "the work folder", "choose another --workdir")
        self.info = probe(job.input)
        if not job.dry_run:
            for warning in check_output(job.output, self.info, job.codec).warnings:
                self.progress.say(f"note: {warning}")
        if whole_frames_note(self.info):
            self.progress.say(f"note: {whole_frames_note(self.info)}")
        # Resolved once (flag, environment, cache, shipped model); a dry run restores nothing and needs none.
        self.checkpoint = None if job.dry_run else resolve_checkpoint(job.checkpoint)
        if self.checkpoint is not None and self.checkpoint.note:
            self.progress.say(f"note: {self.checkpoint.note}")
        self.job = job = dataclasses.replace(job, checkpoint=self.checkpoint and self.checkpoint.path)
        self.cast = Cast.load(job.cast)
        # The edits file's own mistakes before Ray starts; its tracks and ranges once the film's tracks are known.
        self.edits = None if job.edits is None else Edits.load(job.edits, self.cast)
        self.edited: ResolvedEdits | None = None
        if self.edits is not None and not job.resume and not job.dry_run:
            self.progress.say("note: --edits without --resume: the work folder is cleared and every chunk restored again "
                              "(with --resume, only the chunks whose tracks the edits change)")
        init_ray(job.address)  # after the quick checks, before the slow preparations: a dead cluster fails now
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
        self.stage, self.analysed, self.restored = "scan", 0, None
        try:
            scan = self._timed("scan", self.scan)
            self.chunks = len(scan.chunks)
            self.progress.say(f"{len(scan.frame_pts)} frames, {len(scan.shots)} shots, {len(scan.chunks)} chunks")
            with in_ray():
                frame_pts = ray.put(scan.frame_pts)  # once for every worker of the run
            self.stage = "analysis"
            outlines = self._timed("analyse", lambda: self.analyse(scan, frame_pts))
            if self.edits is not None:  # before any chunk is composed: a mistake in it rewrites nothing
                self.edited = self.resolve_edits(scan, outlines)
            results = []
            if not self.job.dry_run:
                self.stage = "restore"
                self._timed("restore_and_encode", lambda: self.compose(scan, frame_pts))
                results = [self.work.load_chunk_result(chunk, self.chunk_key(chunk)) for chunk in scan.chunks]
                videos = [self.work.chunk_video(chunk, self.chunk_key(chunk)) for chunk in scan.chunks]
                self.stage = "join"
                self._timed("join", lambda: join(videos, self.job.input, self.job.output, self.info, frame_pts=scan.frame_pts))
                # The output's chunks stay for a rerun with edits (which joins the untouched ones again), unless dropped.
                self.work.remove_chunks(keep=() if self.job.drop_chunks else videos)
        except Interrupted as stop:
            raise Interrupted(stop.signum, f"{self.film}: {stop} during the {self.stage}; {self.state()}: "
                                           "rerun with --resume") from None
        except StorageError as error:  # the output's folder
            raise NotWritable(f"{self.film}: {error}; the restored chunks are kept: rerun with --resume once it is "
                              "writable") from None
        self.timings["total"] = time.perf_counter() - self._started
        report = reports.build(self, scan, outlines, results)
        reports.write(report, self.job.report_path)
        self.progress.say("dry run: report written" if self.job.dry_run else f"done -> {self.job.output}")
        return report

    def state(self) -> str:
        """How far the run got, for the line that ends it: "6 of 40 chunks analysed, 2 restored"."""
        if self.stage == "scan":
            return "the scan did not finish"
        restored = "" if self.restored is None else f", {self.restored} restored"
        return f"{self.analysed} of {self.chunks} chunks analysed{restored}"

    def _timed(self, stage: str, work):
        mark = time.perf_counter()
        result = work()
        self.timings[stage] = time.perf_counter() - mark
        return result

    def _stage(self, name: str, workers: list, submit) -> Stage:
        return Stage(name, self.film, workers, submit, _describe, self.state, self.progress.say, self.log)

    def _stored(self, load):
        """A stored result, or None when absent or damaged (said, and redone)."""
        try:
            return load()
        except DamagedResult as damage:
            self.progress.say(f"note: {damage}; doing it again")
            return None

    def scan(self) -> Scan:
        scan = self._stored(lambda: self.work.load_scan(self.keys.scan))
        if scan is None:
            self.progress.say("scanning")
            found = []
            submit = lambda _, film: scan_task.options(name="film_restore.scan").remote(
                str(self.job.input), self.job.chunk_frames, self.film)
            self._stage("scan", [None], submit).run([self.film], lambda _, result: found.append(result))
            scan = found[0]
            self.work.save_scan(self.keys.scan, scan)
        return scan

    def analyse(self, scan: Scan, frame_pts) -> dict[int, list[TrackOutline]]:
        """Each chunk's tracks stored in the work folder; their outlines by chunk for the report."""
        key = self.keys.analysis
        outlines, missing, frames_done = {}, [], 0
        for chunk in scan.chunks:
            tracks = self._stored(lambda: self.work.load_tracks(chunk, key))
            if tracks is None:
                missing.append(chunk)
            else:
                outlines[chunk.index] = [TrackOutline.of(track) for track in tracks]
                frames_done += len(chunk.frames)
        self.analysed = len(outlines)
        if not missing:
            return outlines
        actors = [
            AnalyseActor.options(name=f"film_restore.analyse-{i}-{os.getpid()}").remote(
                str(self.pack.directory), self.identifier, self.job.detector_size, restored_field_order(self.info),
                str(self.job.input), self.work, key)
            for i in range(cpu_workers(len(missing)))
        ]

        def finished(chunk: Chunk, chunk_outlines: list[TrackOutline]) -> None:
            nonlocal frames_done
            outlines[chunk.index] = chunk_outlines
            self.analysed += 1
            frames_done += len(chunk.frames)
            self.progress.frames("analysed", frames_done, len(scan.frame_pts))

        try:
            self._stage("analyse", actors, lambda actor, chunk: actor.analyse.remote(chunk, frame_pts)).run(missing, finished)
        finally:
            for actor in actors:
                ray.kill(actor)
        return outlines

    def resolve_edits(self, scan: Scan, outlines: dict[int, list[TrackOutline]]) -> ResolvedEdits:
        """The edits file against the film's tracks (EditsError for a track it lacks, a range outside the film or the
        track); says what it changes."""
        fields = restored_field_order(self.info) is not None  # tracks count fields
        pictures, unit_name = (len(scan.frame_pts) * FIELDS_PER_FRAME, "field") if fields else (len(scan.frame_pts), "frame")
        edited = self.edits.resolve(outlines, pictures, len(scan.shots), unit_name)
        for entry in self.edits.unused(outlines):
            frames = f" on {unit_name}s {entry.frames[0]}-{entry.frames[1]}" if entry.frames else ""
            self.progress.say(f"note: {self.edits.path.name}:{entry.lines['entry']}: no track of "
                              f"{entry.tracks_of or 'nobody (a stranger)'}{frames}: the entry changes nothing")
        tracks = sum(len(chunk_edits.tracks) for chunk_edits in edited.by_chunk.values())
        entries = len(self.edits.entries)
        self.progress.say(f"edits: {entries} {'entry' if entries == 1 else 'entries'} of {self.edits.path.name} "
                          f"{'changes' if entries == 1 else 'change'} {tracks} {'track' if tracks == 1 else 'tracks'} "
                          f"in {len(edited.by_chunk)} of {len(scan.chunks)} chunks")
        return edited

    def chunk_edits(self, chunk: Chunk) -> ChunkEdits | None:
        return None if self.edited is None else self.edited.by_chunk.get(chunk.index)

    def chunk_key(self, chunk: Chunk) -> str:
        """The key of the chunk's restored video: the run's, with the edits of its tracks."""
        return self.keys.chunk_compose(self.chunk_edits(chunk))

    def compose(self, scan: Scan, frame_pts) -> None:
        """Each chunk restored, composed and encoded into the work folder (its video and totals), unless stored
        under its key already; says how many were redone where some were kept or the run has edits."""
        missing, frames_done = [], 0
        for chunk in scan.chunks:
            result = self._stored(lambda: self.work.load_chunk_result(chunk, self.chunk_key(chunk)))
            if result is None:
                missing.append(chunk)
            else:
                frames_done += result.frames
        self.restored = self.chunks - len(missing)
        redone = self._redone(missing) if self.restored or self.edits is not None else None
        if missing:
            self._compose(missing, scan, frame_pts, frames_done)
        if redone:
            self.progress.say(redone)

    def _compose(self, missing: list[Chunk], scan: Scan, frame_pts, frames_done: int) -> None:
        """The missing chunks restored by this run's restore actors and compose tasks."""
        gpus = restore_gpus()
        count = max(1, min(gpus, len(missing)))
        slots = cpu_workers(len(missing))
        # Every request the compose tasks may have in flight at once gets a thread there.
        concurrency = REQUESTS_IN_FLIGHT_PER_TASK * -(-slots * CHUNKS_IN_FLIGHT_PER_WORKER // count) + 1
        restorers = [
            RestoreActor.options(name=f"film_restore.restore-{i}-{os.getpid()}", max_concurrency=concurrency,
                                 **({"num_gpus": 1} if gpus else {})).remote(
                str(self.job.checkpoint), {a: str(p) for a, p in self.dictionaries.items()}, self.job.restore_batch,
                self.film, self.job.engine, self.job.precision)
            for i in range(count)
        ]

        def finished(chunk: Chunk, frames: int) -> None:
            nonlocal frames_done
            self.restored += 1
            frames_done += frames
            self.progress.frames("restored", frames_done, len(scan.frame_pts))

        try:
            self.restore_engines = self._engines(restorers)
            finish_on_restorer = all(gathered([restorer.finishes_on_device.remote() for restorer in restorers]))
            settings = ComposeSettings(
                codec=self.job.codec, face_size=self.face_size, min_face=self.job.min_face, grain=self.job.grain, fusion=self.job.fusion,
                strength=self.job.strength, actor_strengths=self.cast.strengths, models_dir=str(self.pack.directory),
                references=dict(zip(self.identifier.names, self.identifier.centroids)),
            )
            submit = lambda _, chunk: compose_task.options(name=f"film_restore.compose-{chunk.index}").remote(
                self.info, settings, restorers[chunk.index % len(restorers)], chunk, frame_pts, self.work, self.keys,
                self.film, finish_on_restorer, self.chunk_edits(chunk))
            self._stage("compose", [None] * slots, submit).run(missing, finished)
            self.batching = _merged_counts(gathered([restorer.batching.remote() for restorer in restorers]))
        finally:
            for restorer in restorers:
                ray.kill(restorer)

    def _redone(self, missing: list[Chunk]) -> str:
        """What the compose stage did of the film's chunks: "redid 3 of 40 chunks (3 with edited tracks); 37 kept as
        they were"."""
        edited = sum(self.chunk_edits(chunk) is not None for chunk in missing)
        why = ([f"{edited} with edited tracks"] if edited else []) + \
              ([f"{len(missing) - edited} not stored"] if len(missing) > edited else [])
        because = f" ({', '.join(why)})" if why else ""
        return f"redid {len(missing)} of {self.chunks} chunks{because}; {self.chunks - len(missing)} kept as they were"

    def _engines(self, restorers) -> list[dict]:
        """What runs DMDNet in the restorers (distinct descriptions), each said once; a restorer that
        could not start is a ModelError with its reason."""
        try:
            described = gathered([restorer.engine.remote() for restorer in restorers])
        except ray.exceptions.RayActorError as error:
            # The error its constructor raised is the last "SomeError: message" line of Ray's text.
            raised = [line.strip() for line in str(error).splitlines() if re.match(r"\s*[\w.]*(Error|Exception|Unavailable): ", line)]
            raise ModelError(f"restore: the restore actor did not start: {raised[-1] if raised else ' '.join(str(error).split())[-300:]}"
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


def _describe(unit) -> str:
    if isinstance(unit, Chunk):
        return f"chunk {unit.index} (frames {unit.first_frame}-{unit.last_frame})"
    return "the scan (every frame decoded)"


def _check_writable(folder: Path, what: str, fix: str) -> None:
    """NotWritable now, rather than when the run's work is done, for a folder no file can be written into."""
    try:
        folder.mkdir(parents=True, exist_ok=True)  # the work folder is made when missing; the output's is checked before
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".film_restore-check-", suffix=".tmp"):
            pass
    except OSError as error:
        raise NotWritable(f"{what} {folder} is not writable ({error.strerror or error}): make it writable or {fix}") from None


def run(job: Job) -> dict:
    """Restores one film (or analyses it, dry run); returns the report."""
    return FilmRun(job).run()
