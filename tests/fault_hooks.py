"""Faults put into a run's Ray workers for the fault tests (tests/film_restore/test_faults.py).

run_with_hook joins RAY_ADDRESS's cluster (the tests' own) with a worker_process_setup_hook that
every worker of this run runs at start, then runs `python -m film_restore.run` in this process:
the pipeline's code is unchanged, only its workers misbehave.
"""
from __future__ import annotations


from tests.assets import REPO


def restore_out_of_memory() -> None:
    """The restorer raises MemoryError on every request, as a GPU or host out of memory does."""
    from film_restore.restore import FaceRestorer

    def restore(self, crops, boxes, actor):
        raise MemoryError("restore_out_of_memory: the test's hook")

    FaceRestorer.restore = restore


def run_with_hook(hook: str, arguments: list[str]) -> int:
    import ray

    from film_restore.run import main

    address = arguments[arguments.index("--address") + 1]
    ray.init(address=address, configure_logging=False, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": hook, "env_vars": {"PYTHONPATH": str(REPO)}})
    return main(arguments)
