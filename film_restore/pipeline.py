"""The film pipeline on Ray: scan, analyse, restore + compose + encode per chunk, join.

With no cluster address it starts an embedded local Ray; under `ray job submit` (or with
RAY_ADDRESS set) it joins that cluster unchanged. Actors are named by stage in the Ray
dashboard (`film_restore.analyse-0`, `film_restore.restore-0`, ...) and `ray.util.metrics`
counters report frames, faces and chunks done per film.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray

import dmdnet
from film_restore import report as reports
from film_restore.cast import Cast, CastStore
from film_restore.cast.store import pack_id
from film_restore.faces import FaceAnalyzer
from film_restore.guards import TrackGuard
from film_restore.models import find_pack
from film_restore.restore import FaceRestorer
from film_restore.stages import Analyser, ChunkResult, Composer, Scan, Scanner
from film_restore.video import VideoInfo, check_output, join, probe
from film_restore.workdir import (
    WorkFolder,
    chunks_from_json,
    chunks_to_json,
    digest,
    input_hash,
    shots_from_json,
    shots_to_json,
    tracks_from_json,
    tracks_to_json,
    write_json,
)

# Bumped when a stage's results would change for the same inputs and settings.
SCAN_VERSION, ANALYSIS_VERSION, COMPOSE_VERSION = 1, 1, 2


@dataclass(frozen=True)
class Job:
    """One film to restore, as the command line gives it."""

    input: Path
    cast: Path
    output: Path
    checkpoint: Path | None
    models: Path | None = None
    workdir: Path | None = None
    resume: bool = False
    codec: str = "auto"
    report: Path | None = None
    dry_run: bool = False
    chunk_frames: int = 250
    detector_size: int = 640
    restore_batch: int = 8
    strength: float | str = "auto"  # guards.parse_strength: share of the restoration, or auto (the guards decide per face)


class PipelineError(RuntimeError):
    """A run that could not complete; the message says which stage and why."""


def init_ray() -> None:
    """Joins the cluster named by RAY_ADDRESS (ray job submit sets it), else starts a local Ray."""
    if ray.is_initialized():
        return
    dashboard = os.environ.get("FILM_RESTORE_DASHBOARD", "1") != "0"
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=dashboard, log_to_driver=True,
             configure_logging=False)


class Progress:
    """Plain progress lines in logs; one rewritten line on a terminal."""

    def __init__(self, film: str):
        self.film = film
        self.terminal = sys.stderr.isatty()

    def say(self, message: str, final: bool = True) -> None:
        if self.terminal:
            print(f"\r\033[K{self.film}: {message}", end="\n" if final else "", file=sys.stderr, flush=True)
        else:  # a log (ray job logs, the dashboard): every step on a line of its own
            print(f"{self.film}: {message}", file=sys.stderr, flush=True)


def _counter(name: str, description: str):
    from ray.util.metrics import Counter

    return Counter(name, description=description, tag_keys=("film",))


@ray.remote
def _scan_task(path: str, chunk_frames: int, film: str) -> Scan:
    frames = _counter("film_restore_frames_decoded", "frames decoded by the scan")
    done = [0]

    def progress(count: int) -> None:
        frames.inc(count - done[0], tags={"film": film})
        done[0] = count

    return Scanner(chunk_frames).scan(Path(path), progress)


@ray.remote
class AnalyseActor:
    def __init__(self, models_dir, identifier, detector_size):
        self.analyser = Analyser(models_dir, identifier, detector_size)

    def analyse(self, path, chunk, frame_pts):
        return tracks_to_json(self.analyser.analyse(Path(path), chunk, frame_pts))


@ray.remote
class RestoreActor:
    def __init__(self, checkpoint, dictionaries, batch, film):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # Ray pins workers to one thread (OMP_NUM_THREADS=1); on a CPU node the restorer
            # is the bottleneck and the compose tasks mostly wait for it.
            torch.set_num_threads(os.cpu_count() or 1)
        self.restorer = FaceRestorer(checkpoint, dictionaries, device=device, batch=batch)
        self.faces = _counter("film_restore_faces_restored", "faces restored by DMDNet")
        self.film = film

    def restore(self, crops, boxes, actor):
        self.faces.inc(len(crops), tags={"film": self.film})
        return self.restorer.restore(crops, boxes, actor)


@ray.remote
def _compose_task(info: VideoInfo, codec: str, restorer, face_size: int, chunk, tracks_json, frame_pts, output: str, film: str,
                  guard_settings: dict):
    guard = TrackGuard.from_models_dir(**guard_settings)
    composer = Composer(info, codec, lambda crops, boxes, actor: ray.get(restorer.restore.remote(crops, boxes, actor)), face_size,
                        guard)
    result = composer.compose(chunk, tracks_from_json(tracks_json), frame_pts, Path(output))
    _counter("film_restore_chunks_done", "chunks restored and encoded").inc(1, tags={"film": film})
    _counter("film_restore_frames_done", "frames restored and encoded").inc(result.frames, tags={"film": film})
    return result


def _get(reference):
    """ray.get, raising a failed task's own exception (its one-line message) rather than Ray's wrapper."""
    try:
        return ray.get(reference)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, Exception):
            raise error.cause from None
        raise


def _absolute_paths(job: Job) -> Job:
    """Every path absolute: tasks on other nodes (and other working directories) get the same file.

    On a cluster the input, cast (and its .store), checkpoint, models, work folder and output
    must be on storage mounted at the same path on every node (see RUNBOOK.md).
    """
    fields = ("input", "cast", "output", "checkpoint", "models", "workdir", "report")
    return dataclasses.replace(job, **{f: Path(getattr(job, f)).expanduser().absolute()
                                       for f in fields if getattr(job, f) is not None})


def _restore_gpus() -> int:
    """How many restore actors ask for a GPU each: FILM_RESTORE_GPUS, else the cluster's GPUs now.

    FILM_RESTORE_GPUS is for autoscaling clusters whose GPU workers are not up yet: the actors'
    requests (num_gpus=1 each) make the autoscaler start them. 0 restores on CPU.
    """
    wanted = os.environ.get("FILM_RESTORE_GPUS", "").strip()
    if wanted:
        if not wanted.isdigit():
            raise PipelineError(f"FILM_RESTORE_GPUS={wanted!r}: expected a number of GPUs (0 or more)")
        return int(wanted)
    return int(ray.cluster_resources().get("GPU", 0))


def resolve_checkpoint(job: Job) -> Path:
    checkpoint = job.checkpoint or os.environ.get("FILM_RESTORE_CHECKPOINT")
    if not checkpoint:
        raise PipelineError("no DMDNet checkpoint: pass --checkpoint DMDNet.pth or set FILM_RESTORE_CHECKPOINT")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise PipelineError(
            f"no checkpoint file at {checkpoint}: download DMDNet.pth from the csxmli2016/DMDNet GitHub release v1"
        )
    return checkpoint


def run(job: Job) -> dict:
    """Restores one film (or analyses it, dry run); returns the report."""
    job = _absolute_paths(job)
    started = time.perf_counter()
    timings = {}
    film = job.input.name
    progress = Progress(film)
    if job.input.resolve() == job.output.resolve():
        raise PipelineError(f"the output {job.output} would overwrite the input: choose another -o")
    if not job.dry_run and not job.output.parent.is_dir():
        raise PipelineError(f"the output folder {job.output.parent} does not exist: create it or choose another -o")
    info = probe(job.input)
    if not job.dry_run:
        for warning in check_output(job.output, info, job.codec).warnings:
            progress.say(f"note: {warning}")
        checkpoint = resolve_checkpoint(job)
    cast = Cast.load(job.cast)
    pack = find_pack(job.models)
    face_models = pack_id(pack)
    store = CastStore(CastStore.default_folder(cast), FaceAnalyzer.from_models_dir(pack.directory), face_models)
    identifier = store.identifier(cast)
    cast_key = digest([(a.name, [str(r.sha256) for r in store.references(a).used]) for a in cast.actors], cast.match_threshold)
    dictionaries, fingerprint, face_size = {}, None, None
    if not job.dry_run:
        model = dmdnet.load(checkpoint)
        fingerprint, face_size = model.fingerprint, model.image_size
        for actor in cast.actors:
            dictionaries[actor.name], _ = store.dictionary(store.references(actor), model)
        del model
    timings["cast"] = time.perf_counter() - started

    workroot = job.workdir or job.output.parent / f".{job.output.name}.work"
    content = input_hash(job.input, workroot)
    work = WorkFolder(workroot, job.input, content)
    work.start(job.resume)
    init_ray()

    mark = time.perf_counter()
    scan = _scan(job, work, content, film, progress)
    timings["scan"] = time.perf_counter() - mark
    progress.say(f"{len(scan.frame_pts)} frames, {len(scan.shots)} shots, {len(scan.chunks)} chunks")

    mark = time.perf_counter()
    analysis_key = digest(content, SCAN_VERSION, ANALYSIS_VERSION, job.chunk_frames, job.detector_size, face_models, cast_key)
    tracks = _analyse(job, work, scan, analysis_key, pack, identifier, progress)
    timings["analyse"] = time.perf_counter() - mark

    results = []
    if not job.dry_run:
        mark = time.perf_counter()
        guard_settings = {"models_dir": str(pack.directory), "references": dict(zip(identifier.names, identifier.centroids)),
                          "strength": job.strength, "actor_strengths": cast.strengths}
        compose_key = digest(analysis_key, COMPOSE_VERSION, fingerprint, sorted(dictionaries.items()), job.codec,
                             job.strength, sorted(cast.strengths.items()))
        results, videos = _compose(job, work, info, scan, tracks, compose_key, checkpoint, face_size, dictionaries, progress,
                                   guard_settings)
        timings["restore_and_encode"] = time.perf_counter() - mark
        mark = time.perf_counter()
        join(videos, job.input, job.output, info, frame_pts=scan.frame_pts)
        timings["join"] = time.perf_counter() - mark
        work.remove_videos()
    timings["total"] = time.perf_counter() - started
    report = reports.build(job, info, scan, tracks, results, cast, fingerprint, timings, content)
    reports.write(report, job.report or reports.default_path(job))
    progress.say("dry run: report written" if job.dry_run else f"done -> {job.output}")
    return report


def _scan(job: Job, work: WorkFolder, content: str, film: str, progress: Progress) -> Scan:
    path = work.scan(digest(content, SCAN_VERSION, job.chunk_frames))
    if path.is_file():
        stored = json.loads(path.read_text())
        shots = shots_from_json(stored["shots"])
        return Scan(tuple(stored["frame_pts"]), tuple(shots), tuple(chunks_from_json(stored["chunks"], shots)))
    progress.say("scanning", final=False)
    scan = _get(_scan_task.options(name="film_restore.scan").remote(str(job.input), job.chunk_frames, film))
    write_json(path, {"frame_pts": list(scan.frame_pts), "shots": shots_to_json(scan.shots),
                      "chunks": chunks_to_json(scan.chunks)})
    return scan


def _workers(count_wanted: int) -> int:
    return max(1, min(count_wanted, int(ray.available_resources().get("CPU", 1))))


def _analyse(job, work, scan: Scan, key: str, pack, identifier, progress: Progress) -> dict[int, list]:
    tracks, pending = {}, {}
    missing = [c for c in scan.chunks if not work.analysis(c, key).is_file()]
    for chunk in scan.chunks:
        if chunk not in missing:
            tracks[chunk.index] = tracks_from_json(json.loads(work.analysis(chunk, key).read_text()))
    if missing:
        actors = [
            AnalyseActor.options(name=f"film_restore.analyse-{i}-{os.getpid()}").remote(
                str(pack.directory), identifier, job.detector_size
            )
            for i in range(_workers(len(missing)))
        ]
        for number, chunk in enumerate(missing):
            pending[actors[number % len(actors)].analyse.remote(str(job.input), chunk, scan.frame_pts)] = chunk
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(done[0])
            items = _get(done[0])
            write_json(work.analysis(chunk, key), items)
            tracks[chunk.index] = tracks_from_json(items)
            progress.say(f"analysed {len(tracks)}/{len(scan.chunks)} chunks", final=not pending)
        for actor in actors:
            ray.kill(actor)
    return tracks


def _compose(job, work, info, scan: Scan, tracks, key, checkpoint, face_size, dictionaries, progress: Progress, guard_settings):
    results, pending = {}, {}
    videos = [work.chunk_video(chunk, key) for chunk in scan.chunks]
    missing = [c for c, v in zip(scan.chunks, videos) if not (v.is_file() and v.with_suffix(".json").is_file())]
    for chunk, video in zip(scan.chunks, videos):
        if chunk not in missing:
            results[chunk.index] = ChunkResult(**json.loads(video.with_suffix(".json").read_text()))
    if missing:
        gpus = _restore_gpus()
        restorer_options = {"num_gpus": 1} if gpus else {}
        restorers = [
            RestoreActor.options(name=f"film_restore.restore-{i}-{os.getpid()}", **restorer_options).remote(
                str(checkpoint), {a: str(p) for a, p in dictionaries.items()}, job.restore_batch, job.input.name
            )
            for i in range(max(1, min(gpus, len(missing))))
        ]
        frames_done = sum(r.frames for r in results.values())
        for number, chunk in enumerate(missing):
            video = work.chunk_video(chunk, key)
            video.parent.mkdir(parents=True, exist_ok=True)
            reference = _compose_task.options(name=f"film_restore.compose-{chunk.index}").remote(
                info, job.codec, restorers[number % len(restorers)], face_size, chunk, tracks_to_json(tracks[chunk.index]),
                scan.frame_pts, str(video), job.input.name, guard_settings,
            )
            pending[reference] = chunk
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(done[0])
            result = _get(done[0])
            write_json(work.chunk_video(chunk, key).with_suffix(".json"), dataclasses.asdict(result))
            results[chunk.index] = result
            frames_done += result.frames
            progress.say(f"restored {len(results)}/{len(scan.chunks)} chunks, {frames_done}/{len(scan.frame_pts)} frames",
                         final=not pending)
        for restorer in restorers:
            ray.kill(restorer)
    return [results[c.index] for c in scan.chunks], videos
