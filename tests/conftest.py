"""Shared fixtures."""

import os

import pytest

RAY_USERS = pytest.StashKey[set]()  # the node ids of the collected tests that use ``ray_session``


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray session (2 CPUs) for the test session, with its own feature cache: starting Ray takes seconds
    to a minute on a busy 2-core machine, so the modules that run sweeps in-process share one. It is shut down
    after the last test that uses it (``pytest_runtest_teardown``), so that the tests after it, which start Ray
    drivers of their own in subprocesses, do not run beside an idle one."""
    import ray

    os.environ["MASKDM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.hookimpl(trylast=True)  # after -k and -m deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    config.stash[RAY_USERS] = {item.nodeid for item in items if "ray_session" in getattr(item, "fixturenames", ())}


@pytest.hookimpl(wrapper=True)  # after the test's own fixtures were torn down
def pytest_runtest_teardown(item, nextitem):
    result = yield
    users = item.config.stash.get(RAY_USERS, set())
    users.discard(item.nodeid)
    if not users and "ray_session" in getattr(item, "fixturenames", ()):
        import ray

        ray.shutdown()  # the last user is done (the session fixture's own shutdown then finds nothing to stop)
    return result
