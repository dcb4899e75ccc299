"""Shared fixtures."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray session (2 CPUs) for the test session, with its own feature cache: starting Ray takes seconds
    to a minute on a busy 2-core machine, so the modules that run sweeps in-process share one. Those modules run
    last (``pytest_collection_modifyitems``): no other test runs beside it (tests that start Ray drivers of their own
    in subprocesses, or check that nothing started Ray)."""
    import ray

    os.environ["MASKDM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.hookimpl(trylast=True)  # after -k and -m deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    """The modules with a test that uses ``ray_session`` move, whole and in their order, behind all others."""
    ray_modules = {item.module for item in items if "ray_session" in getattr(item, "fixturenames", ())}
    items[:] = [i for i in items if getattr(i, "module", None) not in ray_modules] + [
        i for i in items if getattr(i, "module", None) in ray_modules
    ]
