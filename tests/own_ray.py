"""A Ray of a test's own: `ray.init(address="local")` with its own temp folder and ports.

Without an address, `ray.init()` joins the newest cluster that Ray's address file names (a
`ray start` on this machine, a run going on beside the tests), and with num_cpus it then fails:
"When connecting to an existing cluster, num_cpus and num_gpus must not be provided". Tests that
need a Ray start theirs with own_ray (tests/film_restore/test_ray_address.py proves it with a
cluster running); tests that need a cluster use conftest.ray_head.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile


@contextlib.contextmanager
def own_ray(**options):
    """A local Ray for the block (options: ray.init's, e.g. num_cpus), shut down and its temp folder removed after."""
    import ray

    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(address="local", _temp_dir=temp, include_dashboard=False, configure_logging=False, **options)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
