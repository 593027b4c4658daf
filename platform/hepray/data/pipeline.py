"""From a data spec and a read plan to a streaming Ray dataset of one split."""

from __future__ import annotations

import ray

from hepray.data.root_source import EventReader, ReadPlan, RootDatasource
from hepray.spec import DataSpec


def build_dataset(
    spec: DataSpec,
    split: str | None,
    plan: ReadPlan,
    ledger_name: str | None = None,
    extra_columns: dict[str, str] | None = None,
    with_inputs: bool = True,
    seed: int | None = None,
    **reader_options,
) -> ray.data.Dataset:
    """A streaming dataset of one split (None: all events); nothing holds all events in memory.
    The train split is shuffled, anew each epoch (each execution of the dataset), seeded by
    (seed, epoch): pass train.seed (None: data.split.seed); the others are read in plan order.
    reader_options: further EventReader fields (sparse; flag_cut, file_column for `hepray predict`)."""
    reader = EventReader(
        spec,
        split,
        ledger_name,
        extra_columns or {},
        shuffle=split == "train",
        seed=seed,
        with_inputs=with_inputs,
        **reader_options,
    )
    return ray.data.read_datasource(RootDatasource(plan, reader), override_num_blocks=len(plan.tasks))


def streamed_to_trainers(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """A training or validation split, which is only read and split among the trainers: turns off
    Ray Data's per-operator resource reservation (half of its resources shared out among the
    operators), under which one read task ran at a time on two cores (benchmarks/RESULTS.md: mean
    concurrency 0.9-1.0; 1.4-1.5 and 25-30 % more events/s without it). Pipelines with an actor pool
    after the read (inference) keep it, so the read tasks cannot take the pool's CPUs."""
    dataset.context.op_resource_reservation_enabled = False
    return dataset
