"""Batch jobs around the film pipeline: the nightly archive runner (`python -m jobs.nightly`)."""
