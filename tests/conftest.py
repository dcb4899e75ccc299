"""Shared fixtures."""

import os

import pytest


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray session (2 CPUs) for a test module, with its own feature cache."""
    import ray

    os.environ["MASKDM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
