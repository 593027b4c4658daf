"""Events/s of a bare uproot read of the electron-ID job's branches vs iterating hepray's dataset.

    python -m benchmarks.pipeline [--events N]   (events per class; data cached in benchmarks/.data)

Prints one JSON line per figure. The target (issue 8) is dataset rate >= 0.8 x read rate x cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import uproot

from hepray.data.pipeline import build_dataset, ensure_data
from hepray.data.root_source import EventReader, labelled_files, plan_reads
from hepray.spec import load_job

HERE = Path(__file__).parent


def electron_id_job(events: int):
    out = HERE / ".data" / f"electron_id_{events}"
    return load_job(HERE.parent / "jobs" / "electron_id.yaml", [
        f"data.generate.out={out}", f"data.generate.events={events}",
        f"data.files.electron={out}/electron_*.root", f"data.files.fake={out}/fake_*.root",
    ])


def bare_read_rate(job, branches: list[str]) -> float:
    """Single-process uproot read of the same branches, warm (files read once before timing)."""
    paths = [path for path, _ in labelled_files(job.data)]
    for path in paths:
        uproot.open(path)[job.data.tree].arrays(branches)
    started, events = time.perf_counter(), 0
    for path in paths:
        events += len(uproot.open(path)[job.data.tree].arrays(branches))
    return events / (time.perf_counter() - started)


def dataset_rate(job, cores: int, batch_size: int = 256) -> tuple[float, int]:
    import ray

    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    reader = EventReader(job.data, None)
    plan = plan_reads(job.data, reader.branches())
    dataset = build_dataset(job.data, None, plan)
    for _ in dataset.limit(batch_size).iter_batches(batch_size=batch_size):
        pass  # start-up (workers, imports) is not throughput
    started, events = time.perf_counter(), 0
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        events += len(batch["entry"])
    rate = events / (time.perf_counter() - started)
    ray.shutdown()
    return rate, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=25000, help="events per class")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()
    job = electron_id_job(args.events)
    ensure_data(job.data)
    branches = sorted(EventReader(job.data, None).branches())
    read = bare_read_rate(job, branches)
    print(json.dumps({"figure": "bare_uproot_read", "events_per_s_per_core": round(read), "branches": branches}))
    rate, events = dataset_rate(job, args.cores)
    print(json.dumps({"figure": "hepray_dataset_iteration", "events_per_s": round(rate), "events": events, "cores": args.cores}))
    print(json.dumps({"figure": "dataset_over_read_x_cores", "ratio": round(rate / (read * args.cores), 3), "target": 0.8}))


if __name__ == "__main__":
    main()
