"""Figure 3: a Ray Train epoch (1 worker, CPU, small seed_cnn, hepray's own training loop fed by
its streaming dataset) vs a plain PyTorch loop over the same tensors already in memory.

    python -m benchmarks.train

Target (issue 8): Ray Train events/s >= 0.9 x plain loop events/s (same model, batch, threads).
Beside it, the same Ray Train epoch in channels-last memory (train.channels_last) over channels-first.
Each side's figure is its best epoch after the first (start-up): on this shared machine the same
plain loop ran anywhere from 1430 to 1960 events/s from one run to the next, and noise only slows.
"""

from __future__ import annotations

import tempfile
import time

import torch

from benchmarks.common import cores, electron_id_job, emit, load, start_ray
from hepray.app.job_data import build_job_data
from hepray.data.augment import augment
from hepray.data.batches import ModelBatch
from hepray.models import build_model
from hepray.train.loop import make_optimizer
from hepray.train.tasks import Task

EPOCHS = 3  # the first warms up (worker start-up, first read tasks); the best of the others is the figure
SMALL = [
    "model.filters=16",
    "model.blocks=2",
    "model.dense=32",
    "train.batch_size=128",
    f"train.epochs={EPOCHS}",
    "train.early_stopping=null",
    "scaling.num_workers=1",
    "scaling.use_gpu=false",
    "scaling.cpus_per_worker=1",
]  # Ray then runs the worker's torch on 1 thread (OMP_NUM_THREADS=1)
SMALL_MODEL = "seed_cnn filters=16 blocks=2 dense=32"


def ray_train_rate(job) -> tuple[float, float]:
    """The best train_events_per_s after the first epoch, as hepray's training loop reports it, and
    the last epoch's train_loss."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from hepray.train.loop import train_loop_per_worker
    from hepray.train.trainer import ordered_ingest, scaling_config

    data = build_job_data(job, splits=("train", "val"))
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "job": job.model_dump(mode="json", by_alias=True),
                "train_events": int(data.plan.events * 0.7),
            },
            scaling_config=scaling_config(job),
            datasets={"train": data.datasets["train"], "val": data.datasets["val"]},
            run_config=RunConfig(storage_path=storage, name="bench"),
            dataset_config=ordered_ingest(),  # the ingest `hepray run` trains with
        )
        result = trainer.fit()
    epochs = [metrics for _, metrics in result.best_checkpoints]  # the loop checkpoints every epoch
    return max(m["train_events_per_s"] for m in epochs if m["epoch"] >= 1), result.metrics["train_loss"]


def plain_rate(job) -> float:
    """The same model, optimizer, augmentation and batches, from a list of tensors in memory: events/s
    of its best epoch after the first."""
    torch.set_num_threads(int(job.scaling.cpus_per_worker))  # what Ray gives the training worker
    torch.manual_seed(job.train.seed)
    data = build_job_data(job, splits=("train",))
    batches = list(
        data.datasets["train"].iterator().iter_torch_batches(batch_size=job.train.batch_size, collate_fn=ModelBatch())
    )
    shapes = job.data.input_shapes()
    task = Task(job.task)
    model = build_model(job.model, shapes, job.n_outputs)
    optimizer = make_optimizer(job, model)
    generator = torch.Generator().manual_seed(job.train.seed)
    rates = []
    for _ in range(EPOCHS):
        started, seen = time.perf_counter(), 0
        for batch in batches:
            inputs = augment({name: batch[name] for name in shapes}, list(shapes), job.data.augment, generator)
            loss = task.loss(model(inputs), batch[task.truth_column])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
            seen += len(batch[task.truth_column])
        rates.append(seen / (time.perf_counter() - started))
    return max(rates[1:])


def main() -> None:
    job = electron_id_job()
    # 8 of the 20 files (40k events, 28k to train on): the figure is a ratio, not a long training.
    out = job.data.generate.out
    job = electron_id_job(
        job.data.generate.events,
        *SMALL,
        f"data.files.electron={out}/electron_00[0-3].root",
        f"data.files.fake={out}/fake_00[0-3].root",
    )
    start_ray(cores())
    plain = plain_rate(job)
    ray_rate, loss = ray_train_rate(job)
    emit(
        "ray_train_epoch_vs_plain_torch",
        model=SMALL_MODEL,
        batch_size=job.train.batch_size,
        torch_threads=int(job.scaling.cpus_per_worker),
        plain_events_per_s=round(plain),
        ray_train_events_per_s=round(ray_rate),
        ratio=round(ray_rate / plain, 3),
        target=0.9,
        last_epoch_train_loss=round(loss, 4),
        load=load(),
    )
    # The same Ray Train epoch with the model and images in channels-last memory (train.channels_last).
    layout = job.model_copy(update={"train": job.train.model_copy(update={"channels_last": True})})
    layout_rate, _ = ray_train_rate(layout)
    emit(
        "ray_train_channels_last",
        model=SMALL_MODEL,
        torch_threads=int(job.scaling.cpus_per_worker),
        channels_first_events_per_s=round(ray_rate),
        channels_last_events_per_s=round(layout_rate),
        ratio=round(layout_rate / ray_rate, 3),
        load=load(),
    )


if __name__ == "__main__":
    main()
