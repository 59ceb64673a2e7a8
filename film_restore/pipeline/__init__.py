"""The film pipeline on Ray: scan, analyse, restore + compose + encode per chunk, join, report.

    job.py       Job: one film and its settings
    film.py      FilmRun: the film's shared state and its stages in order; run(job)
    chunks.py    Stage: a stage's chunks on its workers, bounded in flight, tried again when they fail
    cluster.py   Ray: joining or starting a cluster, the stage actors and tasks, metrics
    failures.py  how a run ends: PipelineError and its classes, exit codes, causes, the failure log
    progress.py  progress lines for terminals and logs
"""
from film_restore.pipeline.cluster import init_ray
from film_restore.pipeline.failures import PipelineError
from film_restore.pipeline.film import FilmRun, run
from film_restore.pipeline.job import Job

__all__ = ["FilmRun", "Job", "PipelineError", "init_ray", "run"]
