"""A job's scaling fits the cluster or stops at once saying why; training that starves the read
tasks of CPUs stops with that diagnosis instead of waiting forever (real local Ray, 2 CPUs)."""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from typer.testing import CliRunner

from hepray.cli import app
from hepray.evaluate.inference import ActorPool, actor_pool
from hepray.spec import ScalingSpec, validate_job
from hepray.train.trainer import ResourceError, check_scaling, worker_cpus
from hepray.train.watchdog import TrainingStopped, watched
from rootfiles import etaphi_job, towers, write_tree

pytestmark = pytest.mark.slow


def test_auto_leaves_one_cpu_for_reading(ray_session):
    assert worker_cpus(ScalingSpec(num_workers=2)) == 0.5
    assert worker_cpus(ScalingSpec(num_workers=1)) == 1.0
    assert check_scaling(ScalingSpec(num_workers=2)) == 0.5
    assert worker_cpus(ScalingSpec(num_workers=2, cpus_per_worker=0.25)) == 0.25


def test_a_request_that_cannot_fit_names_the_numbers(ray_session):
    with pytest.raises(
        ResourceError,
        match=r"scaling: 2 workers x 1 CPU leave no CPU for reading on a 2-CPU cluster; "
        r"set scaling.cpus_per_worker <= 0.5 or scaling.num_workers <= 1",
    ):
        check_scaling(ScalingSpec(num_workers=2, cpus_per_worker=1.0))
    with pytest.raises(ResourceError, match="add CPUs"):
        check_scaling(ScalingSpec(num_workers=4), trials=1, reserved=1.0)
    with pytest.raises(ResourceError, match="GPU"):
        check_scaling(ScalingSpec(num_workers=1, cpus_per_worker=0.5, use_gpu=True))


def test_evaluation_actors_follow_the_jobs_workers(ray_session):
    def pool(scaling: dict, **options) -> ActorPool:
        raw = etaphi_job({"a": "a.root", "b": "b.root"})
        return actor_pool(validate_job({**raw, "scaling": scaling}, "job.yaml"), **options)

    assert pool({"num_workers": 2}) == ActorPool(2, 0.5, 0.0)  # both workers, a CPU left for reading
    assert pool({"num_workers": 1}) == ActorPool(1, 1.0, 0.0)
    assert pool({"num_workers": 4, "cpus_per_worker": 0.5}) == ActorPool(2, 0.5, 0.0)  # as many as leave a CPU
    assert pool({"num_workers": 2, "gpus_per_worker": 0.5, "use_gpu": "auto"}).gpus == 0.0  # no GPU here
    assert pool({"num_workers": 2}, size=1, gpus=0.25) == ActorPool(1, 0.5, 0.25)  # predict's --concurrency, --num-gpus


def job_file(tmp_path, scaling: dict) -> str:
    write_tree(tmp_path / "a.root", towers(300, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(tmp_path / "b.root", towers(300, 1000, seed=2, energy=2.0, spread=0.12))
    raw = etaphi_job({"a": str(tmp_path / "a.root"), "b": str(tmp_path / "b.root")})
    raw["train"] = {"epochs": 1, "batch_size": 64}
    raw["scaling"] = scaling
    raw["evaluate"] = {"plots": False}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_cli_stops_at_once_when_workers_take_every_cpu(ray_session, tmp_path):
    started = time.monotonic()
    result = CliRunner().invoke(
        app, ["run", job_file(tmp_path, {"num_workers": 2, "cpus_per_worker": 1.0}), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2, result.output
    assert "error: scaling: 2 workers x 1 CPU leave no CPU for reading on a 2-CPU cluster" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 60


def test_as_many_workers_as_cpus_with_the_default_trains(ray_session, tmp_path):
    """The first contact that hung: num_workers equal to the cluster's CPUs, cpus_per_worker left out."""
    result = CliRunner().invoke(app, ["run", job_file(tmp_path, {"num_workers": 2}), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.json").exists()


def slow_batches(delay: float, count: int = 2):
    for number in range(count):
        time.sleep(delay)
        yield number


def test_watchdog_stops_when_no_cpu_is_free_for_reads(ray_session):
    @ray_session.remote(num_cpus=2)
    class HoldsEveryCpu:
        def ready(self) -> bool:
            return True

    holder = HoldsEveryCpu.remote()
    ray_session.get(holder.ready.remote())
    try:
        with pytest.raises(TrainingStopped, match=r"no training batch for \d+ s .*0 of the cluster's 2 CPUs are free"):
            list(watched(slow_batches(30.0), stall_seconds=1.0, what="training"))
    finally:
        ray_session.kill(holder)


def test_watchdog_waits_while_reads_can_run(ray_session):
    # Slow batches but a free CPU: not a stall, every batch arrives.
    assert list(watched(slow_batches(1.5), stall_seconds=1.0, what="training")) == [0, 1]


def test_watchdog_passes_errors_and_stops_its_thread():
    def failing():
        yield 1
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        list(watched(failing(), stall_seconds=10.0, what="failing"))
    threads = [t for t in threading.enumerate() if t.name == "hepray-failing-batches"]
    for thread in threads:
        thread.join(2)
    assert not any(thread.is_alive() for thread in threads)
