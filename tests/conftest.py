"""One real local Ray instance for the whole test session, started only by tests that ask for it."""

import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# One BLAS/OpenMP thread per process: on 2 shared cores, threaded GBDT fits and small convolutions
# in the test process spend more time contending than computing (55 s -> 0.8 s for one fit).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        object_store_memory=512 * 1024 * 1024,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


# Fixtures that start Ray: a test that uses one, directly or through another fixture, is in the slow tier.
# Tests that start Ray some other way (`ray start` subprocesses in test_cluster.py, a CLI run through
# CliRunner before any fixture) carry @pytest.mark.slow themselves.
RAY_FIXTURES = {"ray_session"}


def pytest_collection_modifyitems(config, items):
    """Quick tier: `pytest -m "not slow"`; plain `pytest` still runs everything."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
