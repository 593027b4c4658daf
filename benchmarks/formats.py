"""TTree vs RNTuple on the same events: the electron-ID sample written both ways (same seed),
read bare with uproot and through hepray's dataset on Ray; and what planning costs.

    python -m benchmarks.formats      (HEPRAY_BENCH_EVENTS events per class, HEPRAY_BENCH_CORES cores)

Prints one JSON line per figure.
"""

from __future__ import annotations

import time

from benchmarks.common import EVENTS_PER_CLASS, HERE, bare_read_rate, cores, electron_id_job, emit, load, start_ray
from hepray.data.pipeline import build_dataset
from hepray.data.root_source import EventReader, labelled_files, plan_reads
from hepray.spec import JobSpec

FORMATS = ("ttree", "rntuple")


def format_jobs(events: int = EVENTS_PER_CLASS) -> dict[str, JobSpec]:
    """The electron-ID job on its TTree sample (shared with the other benchmarks) and on the same
    events written as RNTuple beside it."""
    out = HERE / ".data" / f"electron_id_{events}_rntuple"
    return {
        "ttree": electron_id_job(events),
        "rntuple": electron_id_job(
            events,
            f"data.generate.out={out}",
            "data.generate.format=rntuple",
            f"data.files.electron={out}/electron_*.root",
            f"data.files.fake={out}/fake_*.root",
        ),
    }


def planning(job: JobSpec) -> tuple[float, int]:
    """Seconds to plan the read tasks from file metadata, best of 3, and the number of tasks."""
    branches = EventReader(job.data, None).branches()
    best, tasks = float("inf"), 0
    for _ in range(3):
        started = time.perf_counter()
        tasks = len(plan_reads(job.data, branches).tasks)
        best = min(best, time.perf_counter() - started)
    return best, tasks


def dataset_rate(job: JobSpec, passes: int = 2, batch_size: int = 256) -> tuple[float, int]:
    """Events/s of every event (no split) into numpy batches through hepray's Ray dataset, after one
    warm-up pass (worker start-up and imports are not throughput)."""
    plan = plan_reads(job.data, EventReader(job.data, None).branches())
    dataset = build_dataset(job.data, None, plan)
    for _ in dataset.iter_batches(batch_size=batch_size):
        pass
    started, events = time.perf_counter(), 0
    for _ in range(passes):
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            events += len(batch["entry"])
    return events / (time.perf_counter() - started), events // passes


def main() -> None:
    n_cores = cores()
    jobs = format_jobs()
    read = {}
    for fmt, job in jobs.items():
        paths = [path for path, _ in labelled_files(job.data)]
        read[fmt] = bare_read_rate(job)
        seconds, tasks = planning(job)
        emit("format_bare_read", format=fmt, events_per_s_per_core=round(read[fmt]), files=len(paths), load=load())
        emit("format_planning", format=fmt, seconds=round(seconds, 4), read_tasks=tasks, files=len(paths))

    start_ray(n_cores)
    rates = {}
    for fmt, job in jobs.items():
        rates[fmt], events = dataset_rate(job)
        emit(
            "format_dataset_iteration",
            format=fmt,
            events_per_s=round(rates[fmt]),
            events_per_pass=events,
            cores=n_cores,
            load=load(),
        )
    emit(
        "format_rntuple_over_ttree",
        bare_read_ratio=round(read["rntuple"] / read["ttree"], 3),
        dataset_ratio=round(rates["rntuple"] / rates["ttree"], 3),
        cores=n_cores,
    )


if __name__ == "__main__":
    main()
