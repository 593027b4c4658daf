"""What the benchmark modules share: the electron-ID job on benchmark-sized data, a local Ray,
the bare uproot read every ratio is taken against, and one JSON line per figure."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import uproot

from hepray.app.job_data import ensure_data
from hepray.data.root_source import EventReader, labelled_files
from hepray.spec import JobSpec, load_job

HERE = Path(__file__).parent
ROOT = HERE.parent
EVENTS_PER_CLASS = int(os.environ.get("HEPRAY_BENCH_EVENTS", 50000))  # 20 files of 5000 events


def electron_id_job(events: int = EVENTS_PER_CLASS, *overrides: str) -> JobSpec:
    """jobs/electron_id.yaml on its own generated data in benchmarks/.data (made once, then reused)."""
    out = HERE / ".data" / f"electron_id_{events}"
    job = load_job(
        ROOT / "jobs" / "electron_id.yaml",
        [
            f"data.generate.out={out}",
            f"data.generate.events={events}",
            f"data.files.electron={out}/electron_*.root",
            f"data.files.fake={out}/fake_*.root",
            *overrides,
        ],
    )
    ensure_data(job.data)
    return job


def branches(job: JobSpec) -> list[str]:
    return sorted(EventReader(job.data, None).branches())


def bare_read_rate(job: JobSpec, repeats: int = 3) -> float:
    """Events/s of one process reading the job's branches with plain uproot (`tree.arrays`), warm
    (the files are read once first), best of `repeats` passes."""
    paths = [path for path, _ in labelled_files(job.data)]
    names = branches(job)
    best = 0.0
    for _ in range(repeats + 1):
        started, events = time.perf_counter(), 0
        for path in paths:
            with uproot.open(path) as file:
                events += len(file[job.data.tree].arrays(names))
        best = max(best, events / (time.perf_counter() - started))
    return best


def start_ray(cores: int, **options) -> None:
    import ray

    for attempt in range(3):  # on a loaded machine the raylet can miss Ray's fixed 30 s start-up wait
        try:
            ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False, **options)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    ray.data.DataContext.get_current().enable_progress_bars = False


def cores() -> int:
    return int(os.environ.get("HEPRAY_BENCH_CORES", os.cpu_count()))


def emit(figure: str, **values) -> dict:
    """Print one figure as a JSON line (what `python -m benchmarks` collects)."""
    line = {"figure": figure, **values}
    print(json.dumps(line), flush=True)
    return line


def load() -> float:
    """The 1-minute load average: the machine is shared, so every figure says what it ran beside."""
    return round(os.getloadavg()[0], 2)
