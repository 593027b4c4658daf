"""Evaluation with the job's workers (issue 21): seconds for `hepray run`'s evaluation path to
score 100k events with the actor pool of a 2-worker job against one actor of one CPU (the pool
every evaluation used before).

    python -m benchmarks.evaluation

The electron-ID job's model with untrained weights (inference costs the same whatever the
weights) over every event of its benchmark data, read as a test split is (sparse blocks in plan
order) and collected in the driver. One pass each, the single actor first.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import cores, electron_id_job, emit, load, start_ray
from benchmarks.inference import make_run_dir
from hepray.data.pipeline import build_dataset
from hepray.data.root_source import EventReader, plan_reads
from hepray.evaluate.inference import MODEL_FILE, ActorPool, actor_pool, collect, predict

BATCH = 256  # the electron-ID job's batch size, which `hepray run` evaluates with


def evaluation_seconds(job, model_path: Path, pool: ActorPool) -> tuple[float, int]:
    plan = plan_reads(job.data, EventReader(job.data, None).branches())
    started = time.perf_counter()
    events = collect(predict(build_dataset(job.data, None, plan, sparse=True), model_path, pool, BATCH))
    return time.perf_counter() - started, len(events["label"])


def main() -> None:
    job = electron_id_job()
    two_workers = job.model_copy(update={"scaling": job.scaling.model_copy(update={"num_workers": 2})})
    start_ray(cores())
    pools = {"one_actor": ActorPool(1, 1.0, 0.0), "job_with_2_workers": actor_pool(two_workers)}
    with tempfile.TemporaryDirectory() as directory:
        make_run_dir(job, Path(directory))
        timed = {name: evaluation_seconds(job, Path(directory) / MODEL_FILE, pool) for name, pool in pools.items()}
    seconds = {name: round(elapsed, 1) for name, (elapsed, _) in timed.items()}
    emit(
        "evaluation_actor_pool",
        events=timed["one_actor"][1],
        pools={name: {"actors": pool.size, "cpus_each": pool.cpus} for name, pool in pools.items()},
        seconds=seconds,
        speedup=round(seconds["one_actor"] / seconds["job_with_2_workers"], 2),
        target=1.6,
        cores=cores(),
        load=load(),
    )


if __name__ == "__main__":
    main()
