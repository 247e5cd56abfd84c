"""Shared test set-up: quiet, offline, reproducible; one local Ray per session for the study tests."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")          # no ~/.ray/auth_token for throwaway clusters
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("SYMSTUDY_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "data"))
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, not 2 per core
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A small local Ray (2 CPUs, 200 MB object store) shared by every study test (~4 s to start)."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()
