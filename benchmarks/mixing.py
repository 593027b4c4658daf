"""What epoch mixing costs (issue 18): events/s of the training split as a Ray Train worker gets
it, read in plan order with no shuffle windows, against the training default (read tasks in a new
order and shuffled within each task every epoch, worker's shuffle windows of `train.shuffle_buffer` events).

    python -m benchmarks.mixing

The settings alternate epoch by epoch in one run (A B A B ...), each on its own dataset, so load
drift on a shared machine falls on both alike; each rate is the median over its epochs.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import cores, electron_id_job, emit, load, start_ray
from hepray.data.batches import shuffled_batches, window_events
from hepray.data.pipeline import streamed_to_trainers
from hepray.data.root_source import EventReader, RootDatasource, plan_reads
from hepray.train.trainer import ordered_ingest

BATCH = 256
EPOCHS = 4

SETTINGS = {  # name -> (shuffle the read tasks, shuffle window in events)
    "plan_order": (False, 0),
    "tasks_shuffled": (True, 0),
    "mixing_default": (True, None),  # None: the job's train.shuffle_buffer
}


def training_iterator(job, shuffle: bool):
    """The train split through the trainer's DataConfig, as one Ray Train worker iterates it."""
    import ray

    reader = EventReader(job.data, "train", shuffle=shuffle, seed=job.train.seed, sparse=True)
    plan = plan_reads(job.data, reader.branches())
    ds = ray.data.read_datasource(RootDatasource(plan, reader), override_num_blocks=len(plan.tasks))
    ds = streamed_to_trainers(ds)
    return ordered_ingest().configure({"train": ds}, world_size=1, worker_handles=None, worker_node_ids=None)[0][
        "train"
    ]


def epoch_rate(iterator, window: int) -> float:
    started, events = time.perf_counter(), 0
    for batch in shuffled_batches(iterator, BATCH, window, (1, 0)):
        events += len(batch["label"])
    return events / (time.perf_counter() - started)


def main() -> None:
    job = electron_id_job()
    start_ray(cores())
    default = window_events(job.train.shuffle_buffer, job.data.input_shapes())  # the window the training loop uses
    windows = {name: default if window is None else window for name, (_, window) in SETTINGS.items()}
    iterators = {name: training_iterator(job, shuffle) for name, (shuffle, _) in SETTINGS.items()}
    for name, iterator in iterators.items():
        epoch_rate(iterator, windows[name])  # warm-up: worker start-up, files in the page cache
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(EPOCHS):
        for name, iterator in iterators.items():
            rates[name].append(epoch_rate(iterator, windows[name]))
    median = {name: statistics.median(values) for name, values in rates.items()}
    emit(
        "epoch_mixing_cost",
        job="electron_id",
        events_per_s={name: round(value) for name, value in median.items()},
        shuffle_window_events=default,
        mixing_over_plan_order=round(median["mixing_default"] / median["plan_order"], 3),
        tasks_shuffled_over_plan_order=round(median["tasks_shuffled"] / median["plan_order"], 3),
        epochs_each=EPOCHS,
        cores=cores(),
        load=load(),
    )


if __name__ == "__main__":
    main()
