"""Figures 1, 4 and 6: ROOT -> training-ready batches vs a bare uproot read; waits for the next
batch over an epoch of many files; object-store bytes per event, dense vs sparse images.

    python -m benchmarks.pipeline

Targets (issue 8): dataset rate >= 0.8 x bare read rate x cores; p99 wait <= 2 x median wait.
Both are taken as a Ray Train worker iterates (the trainer's DataConfig splits the dataset), and
again through the driver's own `ds.iterator()` for comparison.

Beside target 1, `serial_pipeline_over_read` bounds it: the same read tasks and densification run
back to back in one process, no Ray, no shuffle. That is the work per event any scheduling of this
pipeline must do on some core, so the dataset cannot reach more than this ratio x read x cores.

Beside the dataset, `weaver_style_dataloader` does the same work the way a weaver-style training
does it (issue 21's baseline): a plain PyTorch DataLoader over the same files, one worker process
per core, each reading its share of the files with uproot, applying the cut, rasterizing with the
same hepray.inputs kernel into dense images and shuffling them within each file, in batches of 256.
Target: hepray's dataset >= 2 x that, measured in the same run, their epochs taken in turn.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch
import uproot

from benchmarks.common import ROOT, bare_read_rate, branches, cores, electron_id_job, emit, load, start_ray
from hepray.data.batches import ModelBatch, shuffled_batches, to_tensors, window_events
from hepray.data.pipeline import streamed_to_trainers
from hepray.data.root_source import RASTER_EVENTS, EventReader, RootDatasource, labelled_files, plan_reads
from hepray.expr import Expression
from hepray.inputs import make_input
from hepray.spec import TrainSpec, load_job

BATCH = 256
# The electron-ID job's input shapes, read from its spec (no data needed).
SHAPES = load_job(ROOT / "jobs" / "electron_id.yaml").data.input_shapes()


def dataset(job, sparse: bool, **reader_options):
    """The job's events as `hepray run` streams its training split: entry-range read tasks, only
    the needed branches, shuffled within each task; every event (no split) so the bare read is
    a fair comparison."""
    import ray

    reader = EventReader(job.data, None, shuffle=True, sparse=sparse, **reader_options)
    plan = plan_reads(job.data, reader.branches())
    ds = ray.data.read_datasource(RootDatasource(plan, reader), override_num_blocks=len(plan.tasks))
    return streamed_to_trainers(ds), plan


def serial_rate(job) -> float:
    """Events/s of the pipeline's own work in one process: every read task (uproot read, cut,
    split, sparse rasterization, Arrow blocks) and then densification into batches of BATCH, warm,
    best of two passes."""
    reader = EventReader(job.data, None, sparse=True)
    plan = plan_reads(job.data, reader.branches())
    best = 0.0
    for _ in range(2):
        started, events = time.perf_counter(), 0
        for task in plan.tasks:
            for block in reader.read(task):
                for begin in range(0, block.num_rows, BATCH):
                    events += len(to_tensors(block.slice(begin, BATCH))["label"])
        best = max(best, events / (time.perf_counter() - started))
    return best


def training_iterator(ds):
    """The iterator a Ray Train worker of `hepray run` gets (one worker): the trainer's DataConfig
    (ordered ingest) splits the dataset, so the streaming executor runs in a split-coordinator actor,
    not in the process that trains."""
    from hepray.train.trainer import ordered_ingest

    return ordered_ingest().configure({"train": ds}, world_size=1, worker_handles=None, worker_node_ids=None)[0][
        "train"
    ]


def batches(iterator):
    """Training-ready batches exactly as the training loop gets them (dense, normalised tensors,
    mixed in the job's shuffle windows)."""
    return shuffled_batches(iterator, BATCH, window_events(TrainSpec().shuffle_buffer, SHAPES), (1, 0))


def ray_shuffle_buffer_batches(iterator):
    """The same batches mixed the way the training loop did before its shuffle windows: Ray's local
    shuffle buffer of 4096 events, which concatenates Arrow blocks and takes every event from them."""
    return iterator.iter_torch_batches(
        batch_size=BATCH, collate_fn=ModelBatch(), prefetch_batches=2, local_shuffle_buffer_size=4096
    )


def iteration_rate(iterator, epochs: int = 3, batches=batches) -> tuple[float, int]:
    """Events/s into training-ready batches over `epochs` passes after one warm-up pass (worker start-up)."""
    for _ in batches(iterator):
        pass
    started, events = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in batches(iterator):
            events += len(batch["label"])
    return events / (time.perf_counter() - started), events // epochs


def batch_waits(job, iterator) -> np.ndarray:
    """Seconds waited for each next batch while a small CNN trains on them (one epoch, all files),
    on one torch thread as a one-CPU Ray Train worker runs (Ray sets its OMP_NUM_THREADS to 1):
    more threads than cores left to the read tasks stall everything now and then, by up to 0.2 s."""
    from hepray.models import build_model

    torch.set_num_threads(1)

    small = job.model.model_copy(update={"filters": 8, "blocks": 2, "dense": 32})
    model = build_model(small, SHAPES, 1)
    optimizer = torch.optim.Adam(model.parameters())
    waits, batch_iterator = [], iter(batches(iterator))
    while True:
        started = time.perf_counter()
        batch = next(batch_iterator, None)
        waits.append(time.perf_counter() - started)
        if batch is None:
            break
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model({"image": batch["image"]})[:, 0], batch["label"].float()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return np.array(waits[1:-1])  # the first waits for start-up, the last only learns the epoch ended


class WeaverStyleFiles(torch.utils.data.IterableDataset):
    """A weaver-style loader's dataset: each DataLoader worker reads every `workers`-th file with
    uproot, keeps the events passing the cut, rasterizes them with the pipeline's own vectorized
    kernel (dense images, norm applied), shuffles them within the file and yields batches of BATCH."""

    def __init__(self, job):
        self.data = job.data
        self.files = labelled_files(job.data)
        self.spec = job.data.inputs["image"]
        self.cut = Expression(job.data.cut)
        self.names = branches(job)
        self.passes = 0  # per worker process: another shuffle each pass

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        self.passes += 1
        rng = np.random.default_rng([self.passes, worker])
        for path, label in self.files[worker::workers]:
            with uproot.open(path) as file:
                arrays = file[self.data.tree].arrays(self.names, how=dict)
            passed = np.asarray(self.cut.evaluate(arrays), dtype=bool)
            arrays = {name: array[passed] for name, array in arrays.items()}
            n = int(passed.sum())
            images = np.concatenate(
                [
                    make_input(self.spec, {k: v[begin : begin + RASTER_EVENTS] for k, v in arrays.items()})
                    for begin in range(0, n, RASTER_EVENTS)
                ]
            )[rng.permutation(n)]
            labels = np.full(n, label, dtype=np.int64)
            for begin in range(0, n, BATCH):
                yield {
                    "image": torch.from_numpy(images[begin : begin + BATCH]),
                    "label": torch.from_numpy(labels[begin : begin + BATCH]),
                }


def one_torch_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def weaver_style_loader(job, workers: int):
    """A plain PyTorch DataLoader over WeaverStyleFiles in `workers` persistent processes, started
    (and its files read once) by a warm-up pass."""
    loader = torch.utils.data.DataLoader(
        WeaverStyleFiles(job),
        batch_size=None,  # the dataset yields whole batches, as weaver's does after its collate
        num_workers=workers,
        persistent_workers=True,
        worker_init_fn=one_torch_thread,
    )
    for _ in loader:
        pass
    return loader


def interleaved_rates(loaders: dict, epochs: int = 3) -> dict[str, tuple[float, int]]:
    """Events/s of each loader (name -> a callable giving one epoch's batches) and its events per
    epoch, over `epochs` passes taken in turn (A B A B ...), so load drift on a shared machine falls
    on all of them alike."""
    seconds, events = dict.fromkeys(loaders, 0.0), dict.fromkeys(loaders, 0)
    for _ in range(epochs):
        for name, epoch in loaders.items():
            started = time.perf_counter()
            for batch in epoch():
                events[name] += len(batch["label"])
            seconds[name] += time.perf_counter() - started
    return {name: (events[name] / seconds[name], events[name] // epochs) for name in loaders}


def emit_training_rate(transport: str, job, plan, rate: float, events: int) -> None:
    emit(
        "dataset_iteration",
        transport=transport,
        ingest="training",
        events_per_task=job.data.events_per_task,
        read_tasks=len(plan.tasks),
        events_per_s=round(rate),
        events_per_epoch=events,
        cores=cores(),
        load=load(),
    )


def block_bytes(job, sparse: bool) -> tuple[float, float, float | None]:
    """Arrow bytes per event of the blocks read tasks put in the object store (whole block, image
    columns) and, for sparse images, the points per event."""
    reader = EventReader(job.data, None, sparse=sparse)
    plan = plan_reads(job.data, reader.branches())
    table = pa.concat_tables([block for task in plan.tasks[:2] for block in reader.read(task)])
    image = sum(table.column(name).nbytes for name in table.column_names if name.startswith("image"))
    points = table.column("image__value").combine_chunks().flatten() if sparse else None
    return table.nbytes / table.num_rows, image / table.num_rows, (len(points) / table.num_rows if sparse else None)


def main() -> None:
    # One torch thread, as Ray runs a one-CPU training worker (OMP_NUM_THREADS=1): to_tensors densifies
    # with torch ops, which on 2 threads beside the read tasks on 2 cores ran 10-30x slower here.
    torch.set_num_threads(1)
    n_cores = cores()
    job = electron_id_job()
    read = bare_read_rate(job)
    emit("bare_uproot_read", events_per_s_per_core=round(read), branches=branches(job), load=load())
    serial = serial_rate(job)
    emit(
        "serial_pipeline_over_read",
        serial_events_per_s_per_core=round(serial),
        ratio=round(serial / read, 3),
        meaning="ceiling of dataset_over_read_x_cores",
        load=load(),
    )

    for sparse in (False, True):
        total, image, points = block_bytes(job, sparse)
        emit(
            "object_store_bytes_per_event",
            image_kind="etaphi " + "x".join(map(str, SHAPES["image"])),
            transport="sparse" if sparse else "dense",
            bytes_per_event=round(total),
            image_bytes_per_event=round(image),
            **({"points_per_event": round(points, 1)} if sparse else {}),
        )

    weaver = weaver_style_loader(job, n_cores)  # before Ray: its workers fork this process
    start_ray(n_cores)
    dense_ds, dense_plan = dataset(job, sparse=False)
    dense_rate, events = iteration_rate(training_iterator(dense_ds))
    emit_training_rate("dense", job, dense_plan, dense_rate, events)
    ds, plan = dataset(job, sparse=True)
    iterator = training_iterator(ds)
    for _ in batches(iterator):  # warm-up: read-task workers start, files in the page cache
        pass
    measured = interleaved_rates({"weaver": lambda: weaver, "dataset": lambda: batches(iterator)})
    (weaver_rate, weaver_events), (sparse_rate, events) = measured["weaver"], measured["dataset"]
    rates = {False: dense_rate, True: sparse_rate}
    emit(
        "weaver_style_dataloader",
        events_per_s=round(weaver_rate),
        events_per_epoch=weaver_events,
        num_workers=n_cores,
        batch=BATCH,
        meaning="torch DataLoader, uproot + the same dense rasterization, shuffled within each file; "
        "its epochs alternate with the sparse dataset's",
        load=load(),
    )
    emit_training_rate("sparse", job, plan, sparse_rate, events)
    ds, _ = dataset(job, sparse=True)
    ray_buffer_rate, _ = iteration_rate(training_iterator(ds), batches=ray_shuffle_buffer_batches)
    emit(
        "dataset_iteration",
        transport="sparse",
        ingest="training",
        mixing="Ray's local shuffle buffer, 4096 events",
        events_per_s=round(ray_buffer_rate),
        shuffle_windows_over_it=round(rates[True] / ray_buffer_rate, 3),
        load=load(),
    )
    # Smaller read tasks: the first block of an epoch comes sooner (a task shuffles all its events
    # before yielding) and the last wave leaves fewer cores idle; a choice for small data on few cores.
    half = job.model_copy(
        update={"data": job.data.model_copy(update={"events_per_task": job.data.events_per_task // 2})}
    )
    ds, plan = dataset(half, sparse=True)
    half_rate, _ = iteration_rate(training_iterator(ds))
    emit(
        "dataset_iteration",
        transport="sparse",
        ingest="training",
        events_per_task=half.data.events_per_task,
        read_tasks=len(plan.tasks),
        events_per_s=round(half_rate),
        over_default_tasks=round(half_rate / rates[True], 3),
        load=load(),
    )
    driver_rate, _ = iteration_rate(dataset(job, sparse=True)[0].iterator())
    emit(
        "dataset_iteration",
        transport="sparse",
        ingest="driver",
        events_per_s=round(driver_rate),
        meaning="ds.iterator(): the streaming executor runs in the iterating process",
        load=load(),
    )
    emit(
        "dataset_over_read_x_cores",
        ratio=round(rates[True] / (read * n_cores), 3),
        target=0.8,
        dense_transport_ratio=round(rates[False] / (read * n_cores), 3),
        driver_ingest_ratio=round(driver_rate / (read * n_cores), 3),
        cores=n_cores,
    )
    emit(
        "dataset_over_weaver_style",
        ratio=round(rates[True] / weaver_rate, 3),
        target=2.0,
        dataset_events_per_s=round(rates[True]),
        weaver_style_events_per_s=round(weaver_rate),
        cores=n_cores,
    )

    for ingest in ("training", "driver"):
        ds, _ = dataset(job, sparse=True)
        waits = batch_waits(job, training_iterator(ds) if ingest == "training" else ds.iterator())
        median, p99 = np.percentile(waits, [50, 99])
        emit(
            "next_batch_wait",
            ingest=ingest,
            batches=len(waits),
            files=len(labelled_files(job.data)),
            median_ms=round(1e3 * median, 3),
            p99_ms=round(1e3 * p99, 3),
            max_ms=round(1e3 * waits.max(), 3),
            p99_over_median=round(p99 / median, 2),
            target=2.0,
            load=load(),
        )


if __name__ == "__main__":
    main()
