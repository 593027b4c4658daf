"""Point clouds beside jet images (issue 19): events/s per core of a read task's work for study
003's jets, as `points` (64 constituents sorted by pT, 4 features) and as 33x33 `jet` images, on
the same files, and of turning what travelled into the model's tensor in the worker.

    python -m benchmarks.points

Both rates are one process reading the same files with EventReader (read, check, encode, cut
blocks), no Ray, so their ratio is the cost of one representation against the other.
"""

from __future__ import annotations

import time

import pyarrow as pa

from benchmarks.common import HERE, ROOT, emit, load
from hepray.app.job_data import ensure_data
from hepray.data.batches import to_tensors
from hepray.data.root_source import EventReader, plan_reads
from hepray.spec import JobSpec, load_job

EVENTS_PER_CLASS = 20000


def jets_job(name: str) -> JobSpec:
    out = HERE / ".data" / f"jets_{EVENTS_PER_CLASS}"
    job = load_job(
        ROOT / "jobs" / f"{name}.yaml",
        [
            f"data.generate.out={out}",
            f"data.generate.events={EVENTS_PER_CLASS}",
            f"data.files.qcd={out}/qcd_*.root",
            f"data.files.hbb={out}/hbb_*.root",
        ],
    )
    ensure_data(job.data)
    return job


def read_rate(job: JobSpec) -> tuple[float, list[pa.Table]]:
    """Events/s of one process doing every read task's work on the train split, best of two passes."""
    reader = EventReader(job.data, "train", shuffle=True, sparse=True)
    plan = plan_reads(job.data, reader.branches())
    best, blocks = 0.0, []
    for _ in range(2):
        started = time.perf_counter()
        blocks = [block for task in plan.tasks for block in reader.read(task)]
        best = max(best, sum(len(block) for block in blocks) / (time.perf_counter() - started))
    return best, blocks


def decode_rate(blocks: list[pa.Table], batch: int = 256) -> float:
    """Events/s of the worker's side: 256-event batches of the blocks to padded / dense tensors."""
    started, events = time.perf_counter(), 0
    for block in blocks:
        for begin in range(0, len(block), batch):
            events += len(to_tensors(block.slice(begin, batch))["label"])
    return events / (time.perf_counter() - started)


def main() -> None:
    figures = {}
    for name in ("jets_particlenet", "jets_cvn"):
        job = jets_job(name)
        read, blocks = read_rate(job)
        nbytes = sum(block.nbytes for block in blocks) / sum(len(block) for block in blocks)
        figures[name] = (read, decode_rate(blocks), nbytes)
    (points_read, points_decode, points_bytes), (image_read, image_decode, image_bytes) = figures.values()
    emit(
        "points_vs_jet_image_per_core",
        points="64 x (1 + 4), sorted by pT",
        image="jet 1x33x33 l1",
        points_read_events_per_s=round(points_read),
        image_read_events_per_s=round(image_read),
        points_over_image_read=round(points_read / image_read, 2),
        points_decode_events_per_s=round(points_decode),
        image_decode_events_per_s=round(image_decode),
        points_bytes_per_event=round(points_bytes),
        image_bytes_per_event=round(image_bytes),
        load=load(),
    )


if __name__ == "__main__":
    main()
