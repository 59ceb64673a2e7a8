"""The film pipeline on Ray: scan, analyse, restore + compose + encode per chunk, join, report.

    job.py       Job: one film and its settings; PipelineError
    film.py      FilmRun: the film's shared state and its stages in order; run(job)
    cluster.py   Ray: joining or starting a cluster, the stage actors and tasks, metrics
    progress.py  progress lines for terminals and logs
"""
from film_restore.pipeline.cluster import init_ray
from film_restore.pipeline.film import FilmRun, run
from film_restore.pipeline.job import Job, PipelineError

__all__ = ["FilmRun", "Job", "PipelineError", "init_ray", "run"]
