"""Epochs that mix: every read task holds each class in its overall proportion, the train split's
read tasks and the events within them come in another order each epoch (seeded by the training
seed and the epoch, so a rerun repeats them), and validation is read in one fixed order."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from ray.data import DataContext
from ray.data.block import BlockAccessor

from hepray.data.batches import shuffled_batches
from hepray.data.pipeline import build_dataset, streamed_to_trainers
from hepray.data.root_source import EventReader, RootDatasource, plan_reads
from hepray.spec import JobSpec, TrainSpec
from rootfiles import etaphi_job, towers

SIGNAL = [600, 500]  # events per signal file, in baskets of 128
BACKGROUND = [4000, 4000, 3000]  # events per background file, in baskets of 1000: 1:10 overall
EVENTS_PER_TASK = 2000
BATCH, WINDOW = 64, 20  # windows of 20 consecutive batches of 64 events
SEED = 7
TASK_BAND = 0.25  # every read task's signal fraction within +-25 % of the overall one (2 x root_source.SNAP)
WINDOW_BAND = 0.035  # every window's signal fraction within +-0.035 of the overall one (~0.091; ~4.4 sigma)


def write_baskets(path, data: dict, basket: int) -> None:
    """A TTree with one basket per `basket` entries."""
    types = {name: (value.type if isinstance(value, ak.Array) else value.dtype) for name, value in data.items()}
    n = len(data["evt"])
    with uproot.recreate(path) as file:
        file.mktree("events", types)
        for start in range(0, n, basket):
            file["events"].extend({name: value[start : start + basket] for name, value in data.items()})


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """1:10 signal to background: signal ids from 0, background ids from 100000."""
    root = tmp_path_factory.mktemp("mixing")
    first = 0
    for k, n in enumerate(SIGNAL):
        write_baskets(root / f"sig_{k}.root", towers(n, first, seed=10 + k, energy=4.0), basket=128)
        first += n
    first = 100_000
    for k, n in enumerate(BACKGROUND):
        write_baskets(root / f"bkg_{k}.root", towers(n, first, seed=20 + k), basket=1000)
        first += n
    return root


def sample_job(root) -> JobSpec:
    return JobSpec.model_validate(
        etaphi_job({"bkg": str(root / "bkg_*.root"), "sig": str(root / "sig_*.root")}, events_per_task=EVENTS_PER_TASK)
    )


def planned(root):
    job = sample_job(root)
    return job, plan_reads(job.data, EventReader(job.data, None).branches())


# ------------------------------------------------------------------ planning (no Ray)


def test_every_read_task_holds_the_overall_class_fractions(sample):
    """Not a stripe of one range per class (the signal would run out after the first tasks of a
    1:10 sample): each task takes its slice of every class."""
    _, plan = planned(sample)
    overall = sum(SIGNAL) / (sum(SIGNAL) + sum(BACKGROUND))
    sizes = np.array([sum(r.stop - r.start for r in task) for task in plan.tasks])
    signal = np.array([sum(r.stop - r.start for r in task if r.label == 1) for task in plan.tasks])
    assert len(plan.tasks) == round(plan.events / EVENTS_PER_TASK) == 6
    assert np.all(np.abs(signal / sizes / overall - 1) <= TASK_BAND), signal / sizes / overall
    assert np.all(np.abs(sizes / EVENTS_PER_TASK - 1) <= 0.25), sizes
    # Every entry in exactly one range; most background cuts on basket boundaries (1000s).
    for path, n in [
        *((sample / f"sig_{k}.root", n) for k, n in enumerate(SIGNAL)),
        *((sample / f"bkg_{k}.root", n) for k, n in enumerate(BACKGROUND)),
    ]:
        ranges = sorted((r.start, r.stop) for task in plan.tasks for r in task if r.path == str(path))
        assert ranges[0][0] == 0 and ranges[-1][1] == n and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    cuts = [r.stop for task in plan.tasks for r in task if r.label == 0]
    assert np.mean(np.mod(cuts, 1000) == 0) >= 0.5


def test_read_task_order_and_shuffle_change_per_execution(sample):
    """The epoch is the count of get_read_tasks calls that start an execution (those with a
    DataContext); looks at the plan (no DataContext) do not count. Training: another task order
    and another order within each task every epoch, the same for the same (seed, epoch)."""
    job, plan = planned(sample)
    train = RootDatasource(plan, EventReader(job.data, "train", shuffle=True, seed=SEED))
    first_inputs = [task.metadata.input_files for task in train.get_read_tasks(1)]
    assert [task.metadata.input_files for task in train.get_read_tasks(1)] == first_inputs and train.executions == 0
    by_epoch = []
    for epoch in range(2):
        tasks = train.get_read_tasks(1, data_context=DataContext.get_current())
        assert train.executions == epoch + 1
        by_epoch.append(
            [
                np.concatenate([BlockAccessor.for_block(block).to_numpy()["obs_evt"] for block in task()])
                for task in tasks
            ]
        )
    assert [task.metadata.input_files for task in RootDatasource(plan, train.reader).get_read_tasks(1)] == first_inputs
    zero, one = (np.concatenate(tasks) for tasks in by_epoch)
    assert np.array_equal(np.sort(zero), np.sort(one)) and not np.array_equal(zero, one)
    assert [task[0] for task in by_epoch[0]] != [task[0] for task in by_epoch[1]]
    # A task's events: the same set in another order each epoch, the same order for the same epoch.
    reader = train.reader
    task = plan.tasks[0]
    events = [BlockAccessor.for_block(next(reader.read(task, epoch))).to_numpy()["obs_evt"] for epoch in (0, 1, 0)]
    assert np.array_equal(events[0], events[2]) and not np.array_equal(events[0], events[1])
    assert np.array_equal(np.sort(events[0]), np.sort(events[1]))
    # Validation: plan order, every time.
    val = RootDatasource(plan, EventReader(job.data, "val"))
    orders = [
        [list(task.metadata.input_files) for task in val.get_read_tasks(1, data_context=DataContext.get_current())]
        for _ in range(3)
    ]
    assert orders[0] == orders[1] == orders[2] == [sorted({r.path for r in task}) for task in plan.tasks]


# ------------------------------------------------------------------ through Ray Data, as Ray Train reads


def epochs_as_trained(root, split: str, epochs: int, window: int, seed: int = SEED) -> list[dict]:
    """Each epoch's (obs_evt, label) in the order a Ray Train worker gets them: the dataset as
    job_data builds it, ordered ingest (trainer.ordered_ingest), streaming_split (a SplitCoordinator
    actor executes it once per epoch) and the loop's shuffle windows, seeded by (seed, epoch)."""
    from ray.train import DataConfig

    job, plan = planned(root)
    dataset = streamed_to_trainers(build_dataset(job.data, split, plan, sparse=True, seed=seed))
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    dataset.context.execution_options = options
    [shard] = dataset.streaming_split(1, equal=True)
    out = []
    for epoch in range(epochs):
        batches = list(shuffled_batches(shard, BATCH, window, (seed, epoch)))
        assert {len(batch["label"]) for batch in batches[:-1]} == {BATCH}
        out.append({key: np.concatenate([batch[key].numpy() for batch in batches]) for key in ("obs_evt", "label")})
    return out


@pytest.fixture(scope="module")
def trained(ray_session, sample):
    """Two epochs of two datasets built alike, and of one without the shuffle windows."""
    window = TrainSpec().shuffle_buffer
    return {
        "first": epochs_as_trained(sample, "train", 2, window),
        "again": epochs_as_trained(sample, "train", 2, window),
        "unwindowed": epochs_as_trained(sample, "train", 2, 0),
    }


def window_fractions(labels: np.ndarray) -> np.ndarray:
    """The signal fraction of every window of WINDOW consecutive batches of BATCH events."""
    events = WINDOW * BATCH
    sums = np.concatenate([[0], np.cumsum(labels)])
    starts = np.arange(0, len(labels) - events + 1, BATCH)
    return (sums[starts + events] - sums[starts]) / events


@pytest.mark.slow
def test_every_window_of_batches_holds_the_overall_class_fraction(trained):
    for name in ("first", "unwindowed"):
        for epoch in trained[name]:
            overall = epoch["label"].mean()
            fractions = window_fractions(epoch["label"])
            assert len(fractions) > 80 and 0.08 < overall < 0.10
            assert np.all(np.abs(fractions - overall) <= WINDOW_BAND), (name, fractions.min(), fractions.max(), overall)


@pytest.mark.slow
def test_epochs_differ_and_a_rebuilt_dataset_repeats_them(sample, trained):
    first, again = trained["first"], trained["again"]
    for one, other in zip(first, again):
        assert np.array_equal(one["obs_evt"], other["obs_evt"])
    zero, one = (epoch["obs_evt"] for epoch in first)
    assert np.array_equal(np.sort(zero), np.sort(one)) and not np.array_equal(zero, one)
    # The windows permute the stream within each window of shuffle_buffer events, no further.
    window = TrainSpec().shuffle_buffer
    for mixed, plain in zip(first, trained["unwindowed"]):
        assert not np.array_equal(mixed["obs_evt"], plain["obs_evt"])
        for begin in range(0, len(plain["obs_evt"]), window):
            stretch = slice(begin, begin + window)
            assert np.array_equal(np.sort(mixed["obs_evt"][stretch]), np.sort(plain["obs_evt"][stretch]))
    # Not just the windows: the read tasks arrive in another order, shuffled anew. Without the
    # windows, epoch e is exactly the reader's epoch e: its task order, each task shuffled for e
    # (the SplitCoordinator's copy of the datasource counted executions 0 and 1).
    job, plan = planned(sample)
    reader = EventReader(job.data, "train", shuffle=True, seed=SEED)
    for epoch, streamed in enumerate(trained["unwindowed"]):
        expected = [
            BlockAccessor.for_block(block).to_numpy()["obs_evt"]
            for index in reader.task_order(len(plan.tasks), epoch)
            for block in reader.read(plan.tasks[index], epoch)
        ]
        assert np.array_equal(streamed["obs_evt"], np.concatenate(expected)), epoch
    assert len(np.intersect1d(zero[:1000], one[:1000])) < 400


@pytest.mark.slow
def test_validation_order_is_the_same_every_epoch(ray_session, sample):
    epochs = epochs_as_trained(sample, "val", 2, 0)
    assert np.array_equal(epochs[0]["obs_evt"], epochs[1]["obs_evt"])
    job, plan = planned(sample)
    reader = EventReader(job.data, "val")
    expected = [
        BlockAccessor.for_block(block).to_numpy()["obs_evt"] for task in plan.tasks for block in reader.read(task)
    ]
    assert np.array_equal(epochs[0]["obs_evt"], np.concatenate(expected))
