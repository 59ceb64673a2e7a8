"""The pipeline's stages on Ray: the cluster joined or started, stage actors and tasks, their metrics.

With no cluster address it starts an embedded local Ray; under `ray job submit` (or with
RAY_ADDRESS set, or --address) it joins that cluster unchanged. Actors are named by stage in the Ray
dashboard (`film_restore.analyse-0-PID`, `film_restore.restore-0-PID`, ...) and
`ray.util.metrics` counters report frames, faces and chunks done per film. A lost actor is
restarted by Ray and loads its models again; the work it held is sent again by the driver
(pipeline.chunks). Workers store their results in the work folder themselves.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import ray
from ray._private.utils import read_ray_address

from film_restore.batching import BatchingRestorer
from film_restore.compose import Composer, ComposeSettings
from film_restore.edits import ChunkEdits
from film_restore.finish.device import FinishSession
from film_restore.keys import RunKeys
from film_restore.pipeline.failures import InputError, NoCluster, StageFailed, cause_of, in_ray
from film_restore.records import Chunk, Scan, TrackOutline
from film_restore.restore import FaceRestorer
from film_restore.stages import FaceTracker, Scanner
from film_restore.video import VideoInfo
from film_restore.workdir import WorkFolder


# A cluster that does not accept a connection within this time is taken for dead.
JOIN_TIMEOUT_S = 20
# Restore requests one compose task may have in flight at once: two windows (the one being
# restored, the next one sent ahead) of up to two actors each get a thread of the restore
# actor; further requests wait in Ray's queue and are merged a pass later.
REQUESTS_IN_FLIGHT_PER_TASK = 4


def init_ray(address: str | None = None) -> None:
    """Joins the cluster asked for (address, else RAY_ADDRESS: ray job submit sets it), else starts a local Ray.

    Never the cluster Ray remembers from an earlier `ray start` (its address file): once that
    cluster is gone, joining it would wait forever. A cluster asked for that does not answer
    is a one-line error within JOIN_TIMEOUT_S.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        _check_answers(address)
    dashboard = os.environ.get("FILM_RESTORE_DASHBOARD", "1") != "0"
    caller_stops = signal.getsignal(signal.SIGTERM)
    with in_ray():
        ray.init(address=address, include_dashboard=dashboard, log_to_driver=True, configure_logging=False)
    if callable(caller_stops) and threading.current_thread() is threading.main_thread():
        # ray.init makes SIGTERM exit at once; a caller that stops cleanly on it (run.py) keeps its own.
        signal.signal(signal.SIGTERM, caller_stops)


def _check_answers(address: str) -> None:
    target = read_ray_address() if address == "auto" else address
    unreachable = (f"no Ray cluster answers at {address}: start it (ray start --head), correct --address or "
                   f"RAY_ADDRESS, or give neither to run on a local Ray")
    if not target:
        raise NoCluster(f"{unreachable} (no cluster was started on this machine)")
    parts = urlsplit(target if "://" in target else f"ray://{target}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise InputError(f"the Ray address {address!r} is not host:port (or ray://host:port): correct --address or RAY_ADDRESS")
    try:
        socket.create_connection((host, port), timeout=JOIN_TIMEOUT_S).close()
    except OSError as error:
        raise NoCluster(f"{unreachable} ({host}:{port}: {error.strerror or error})") from None


def counter(name: str, description: str):
    from ray.util.metrics import Counter

    return Counter(name, description=description, tag_keys=("film",))


# The longest the driver blocks in one of Ray's calls: a signal stops the run, and a retry falls due, on time.
WAIT_S = 1.0


def gathered(references: list) -> list:
    """ray.get of the references, waiting in short steps so that a signal stops the run meanwhile."""
    pending = list(references)
    while pending:
        with in_ray():
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_S)
    with in_ray():
        return ray.get(references)


def cpu_workers(wanted: int) -> int:
    return max(1, min(wanted, int(ray.available_resources().get("CPU", 1))))


def restore_gpus() -> int:
    """How many restore actors ask for a GPU each: FILM_RESTORE_GPUS, else the cluster's GPUs now.

    FILM_RESTORE_GPUS is for autoscaling clusters whose GPU workers are not up yet: the actors'
    requests (num_gpus=1 each) make the autoscaler start them. 0 restores on CPU.
    """
    wanted = os.environ.get("FILM_RESTORE_GPUS", "").strip()
    if wanted:
        if not wanted.isdigit():
            raise InputError(f"FILM_RESTORE_GPUS={wanted!r}: expected a number of GPUs (0 or more)")
        return int(wanted)
    return int(ray.cluster_resources().get("GPU", 0))


# Every stage's work is tried again when it fails, but by the driver (pipeline.chunks), which
# counts attempts per chunk, pauses between them and ends the run in one line: Ray itself retries
# no chunk. Actors come back however often their processes or nodes are lost over a night (a chunk
# that keeps failing is what ends a run), and a restarted actor loads its models again in __init__.
RESTARTING_ACTOR = {"max_restarts": -1, "max_task_retries": 0}
# How long a lost actor may take to come back (Ray restarts it, maybe after an autoscaler has
# started a node for it) before the work waiting for it counts it as lost for good.
WORKER_RETURN_S = 600


def back(actor):
    """A reference that resolves (to the actor's process id) once the actor is alive again: Ray sends the
    call again through every restart; ActorDiedError if it is gone for good."""
    return actor.ready.options(max_task_retries=-1).remote()


@ray.remote(max_retries=0)
def scan_task(path: str, chunk_frames: int, film: str) -> Scan:
    frames = counter("film_restore_frames_decoded", "frames decoded by the scan")
    done = [0]

    def progress(count: int) -> None:
        frames.inc(count - done[0], tags={"film": film})
        done[0] = count

    return Scanner(chunk_frames)(Path(path), progress)


@ray.remote(**RESTARTING_ACTOR)
class AnalyseActor:
    """Finds, tracks and identifies a chunk's faces and stores them in the work folder (work, under key)."""

    def __init__(self, models_dir: str, identifier, detector_size: int, field_order: str | None, path: str,
                 work: WorkFolder, key: str):
        cv2.setNumThreads(1)  # one CPU is this actor's (as compose_task)
        self.tracker = FaceTracker(models_dir, identifier, detector_size, field_order)
        self.path, self.work, self.key = Path(path), work, key

    def ready(self) -> int:
        return os.getpid()

    def analyse(self, chunk: Chunk, frame_pts: tuple[int, ...]) -> list[TrackOutline]:
        tracks = self.tracker(self.path, chunk, frame_pts)
        self.work.save_tracks(chunk, self.key, tracks)
        return [TrackOutline.of(track) for track in tracks]


@ray.remote(**RESTARTING_ACTOR)
class RestoreActor:
    def __init__(self, checkpoint: str, dictionaries: dict[str, str], batch: int, film: str, engine: str, precision: str):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # Ray pins workers to one thread (OMP_NUM_THREADS=1); on a CPU node the restorer
            # is the bottleneck and the compose tasks mostly wait for it.
            torch.set_num_threads(os.cpu_count() or 1)
        self.restorer = FaceRestorer(checkpoint, dictionaries, device=device, batch=batch, engine=engine, precision=precision)
        # Concurrent calls (the actor is threaded) from several compose tasks share forward passes.
        self.batcher = BatchingRestorer(self.restorer.restore, batch_size=batch)
        self.faces = counter("film_restore_faces_restored", "faces restored by DMDNet")
        self.film = film
        self.device = device
        self.sessions: dict[str, FinishSession] = {}  # a GPU's compose tasks' chunks, finished here

    def ready(self) -> int:
        return os.getpid()

    def restore(self, crops, boxes, actor):
        self.faces.inc(len(crops), tags={"film": self.film})
        return self.batcher.restore(crops, boxes, actor)

    def batching(self) -> dict:
        return self.batcher.counts()

    def engine(self) -> dict:
        """What runs DMDNet here and why: engine, precision, device, reason (dmdnet.engines.Engine.describe)."""
        return self.restorer.engine.describe()

    def finishes_on_device(self) -> bool:
        """Whether this actor finishes its faces on its device too (it holds a GPU: finish.device)."""
        return self.device == "cuda"

    def open_session(self, session: str, plan, settings) -> None:
        self.sessions[session] = FinishSession(self.restore, plan, settings, self.device)

    def finish(self, session: str, number: int, window):
        return self.sessions[session](number, window)

    def close_session(self, session: str):
        return self.sessions.pop(session).flush()


class RemoteRestore:
    """A restore actor as a Composer's restore function: sends the faces and returns at once with
    the request in flight; its result() waits for them (so the Composer prepares the next window
    while the accelerator works)."""

    def __init__(self, actor):
        self.actor = actor

    def __call__(self, crops, boxes, actor_name) -> "InFlight":
        return InFlight(self.actor.restore.remote(crops, boxes, actor_name))


class RemoteFinish(RemoteRestore):
    """A restore actor that finishes the faces on its GPU (finish.device): the Composer opens a
    session per chunk and sends it each window's faces and their surroundings, never whole frames."""

    def open_session(self, plan, settings):
        session = uuid.uuid4().hex
        InFlight(self.actor.open_session.remote(session, plan, settings)).result()
        return (lambda number, window: InFlight(self.actor.finish.remote(session, number, window)),
                lambda: InFlight(self.actor.close_session.remote(session)))


class InFlight:
    """A restore request in flight; result() waits for it. A failed request (the restore actor lost, or
    raising) fails the compose task with StageFailed, so that the driver names the restore stage."""

    def __init__(self, reference):
        self.reference = reference

    def result(self):
        try:
            return ray.get(self.reference)
        except ray.exceptions.RayError as error:
            raise StageFailed(cause_of(error, "restore")) from None


@ray.remote(max_retries=0)
def compose_task(info: VideoInfo, settings: ComposeSettings, restorer, chunk: Chunk, frame_pts: tuple[int, ...],
                 work: WorkFolder, keys: RunKeys, film: str, finish_on_restorer: bool = False, edits: ChunkEdits | None = None) -> int:
    """Restores, composes and encodes one chunk into the work folder from its stored tracks, with the edits of its
    tracks (under the chunk's key with them: keys.RunKeys.chunk_compose); returns its frames.

    Waits first for the restore actor to be alive: after a loss, the chunks sent again wait for its
    restart rather than failing against it."""
    try:
        ray.get(back(restorer), timeout=WORKER_RETURN_S)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
        raise StageFailed(cause_of(error, "restore")) from None
    # One CPU is this task's: OpenCV's own thread pool would take every core of the node (threads
    # that compete with the node's other tasks cost more CPU time in all than one thread).
    cv2.setNumThreads(1)
    tracks = work.load_tracks(chunk, keys.analysis)
    remote = RemoteFinish(restorer) if finish_on_restorer else RemoteRestore(restorer)
    key = keys.chunk_compose(edits)
    result = Composer(info, settings, remote)(chunk, tracks, frame_pts, work.chunk_video(chunk, key), edits)
    work.save_chunk_result(chunk, key, result)
    counter("film_restore_chunks_done", "chunks restored and encoded").inc(1, tags={"film": film})
    counter("film_restore_frames_done", "frames restored and encoded").inc(result.frames, tags={"film": film})
    return result.frames
