"""A job's datasets: the sample data made if asked for, the files planned once, and one
streaming dataset per split, per extra sample and per robustness check."""

from __future__ import annotations

import glob
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray

from hepray.data.events import ENTRY, LABEL, WEIGHT
from hepray.data.pipeline import build_dataset, streamed_to_trainers
from hepray.data.root_source import SPLITS, EventReader, ReadPlan, SkipLedger, plan_reads
from hepray.data.rootio import DataError
from hepray.evaluate import baselines
from hepray.samples import generate, generated_events
from hepray.spec import DataSpec, JobSpec
from hepray.train import reweight


def ensure_data(spec: DataSpec) -> None:
    """Write the job's sample data when it says how and any of its files in `generate.out` is
    missing, or when fewer events per class than `generate.events` were generated there (so
    `--set data.generate.events=N` makes the data larger); larger existing data is used as it is.
    Files elsewhere (another directory, a URL) are never generated."""
    if spec.generate is None:
        return
    out = Path(spec.generate.out).resolve()
    groups = spec.files.values() if isinstance(spec.files, dict) else [spec.files]
    patterns = [p for group in groups for p in group if "://" not in p and out in Path(p).resolve().parents]
    if not patterns:
        return
    existing = generated_events(out)
    if all(glob.glob(p) for p in patterns):
        if existing is None or existing >= spec.generate.events:
            return
        print(
            f"hepray: {spec.generate.out} holds {existing} events per class, the job asks for "
            f"{spec.generate.events}: generating it again",
            flush=True,
        )
    generate(spec.generate.kind, spec.generate.out, spec.generate.events, spec.generate.seed, spec.generate.format)


@dataclass
class JobData:
    """The job's datasets per split, the read plans behind them and the skip ledger they report to.

    `evaluations` are the datasets the trained model is scored on, keyed by the prefix of their
    metrics: `test`, each extra sample of `evaluate.samples`, and the robustness checks.
    `baseline_train` is the train split without images, for fitting baselines."""

    datasets: dict[str, ray.data.Dataset]
    plan: ReadPlan
    ledger: ray.actor.ActorHandle | None
    evaluations: dict[str, ray.data.Dataset] = field(default_factory=dict)
    baseline_train: ray.data.Dataset | None = None
    sample_plans: list[ReadPlan] = field(default_factory=list)
    ledger_name: str | None = None

    def skip_report(self) -> dict[str, float | list]:
        """What the job skipped, from planning and from the read tasks: events_skipped (in files and
        ranges skipped whole, and single bad events), ranges_skipped (files and ranges skipped whole),
        the reasons (`skipped`, one per file, range, or range and reason of single events), and with
        a ledger (on_error: skip) observers_nonfinite: events kept with a NaN/inf observer."""
        skipped = [
            (path, events, reason) for plan in (self.plan, *self.sample_plans) for path, events, reason in plan.skipped
        ]
        report: dict[str, float | list] = {}
        if self.ledger is not None:
            skipped += [
                (path, stop - start, reason) for path, start, stop, reason in ray.get(self.ledger.skipped.remote())
            ]
        report["ranges_skipped"] = float(len(skipped))
        if self.ledger is not None:
            skipped += [
                (
                    path,
                    count,
                    f"{path}: entries [{start}, {stop}): {count} event{'s' * (count != 1)} skipped: "
                    f"{reason} (first at entry {first})",
                )
                for path, start, stop, reason, count, first in ray.get(self.ledger.skipped_events.remote())
            ]
            report["observers_nonfinite"] = float(ray.get(self.ledger.observers_nonfinite.remote()))
        report["events_skipped"] = float(sum(events for _, events, _ in skipped))
        report["skipped"] = [f"{reason}" for _, _, reason in skipped]
        return report


def with_norm(spec: DataSpec, norm: str) -> DataSpec:
    """The data spec with every image input normalised by `norm` instead."""
    inputs = {name: i.model_copy(update={"norm": norm}) if hasattr(i, "norm") else i for name, i in spec.inputs.items()}
    return spec.model_copy(update={"inputs": inputs})


def _planned(job: JobSpec) -> tuple[dict[str, str], ReadPlan, ray.actor.ActorHandle | None, str | None]:
    """The columns read beside the inputs, the read plan, and the skip ledger (on_error: skip)."""
    spec = job.data
    extra = baselines.columns(job)
    if spec.reweight is not None:  # the training worker looks each event's factor up from them
        extra |= {reweight.column(text): text for text in spec.reweight.vars}
    plan = plan_reads(spec, EventReader(spec, None, extra=extra).branches())
    ledger, ledger_name = None, None
    if spec.on_error == "skip":
        ledger_name = f"hepray-skips-{uuid.uuid4().hex[:12]}"
        ledger = SkipLedger.options(name=ledger_name).remote()
    return extra, plan, ledger, ledger_name


def _sample_dataset(
    sample: DataSpec, data: JobData, extra: dict[str, str], ledger_name: str | None
) -> ray.data.Dataset:
    """Every event of an evaluate.samples entry; its plan joins `data`'s, for the skip report."""
    data.sample_plans.append(plan_reads(sample, EventReader(sample, None, extra=extra).branches()))
    return build_dataset(sample, None, data.sample_plans[-1], ledger_name, extra, sparse=True)


def build_job_data(job: JobSpec, splits: tuple[str, ...] = SPLITS) -> JobData:
    spec = job.data
    ensure_data(spec)
    extra, plan, ledger, ledger_name = _planned(job)
    # Sparse images: ~8x fewer object-store bytes per event than dense ones (benchmarks/RESULTS.md).
    # train.seed orders the training split's tasks and shuffles their events anew each epoch
    datasets = {
        split: build_dataset(spec, split, plan, ledger_name, extra, sparse=True, seed=job.train.seed)
        for split in splits
    }
    for split in {"train", "val"} & datasets.keys():
        streamed_to_trainers(datasets[split])
    data = JobData(datasets, plan, ledger, ledger_name=ledger_name)
    if "test" in datasets:
        data.evaluations["test"] = datasets["test"]
    if baselines.needs_fit(job):
        data.baseline_train = build_dataset(spec, "train", plan, ledger_name, extra, with_inputs=False)
    for name, globs in job.evaluate.samples.items():
        sample = spec.model_copy(update={"files": globs})
        ensure_data(sample)
        data.evaluations[name] = _sample_dataset(sample, data, extra, ledger_name)
    robustness = job.evaluate.robustness
    if robustness and robustness.split_seed is not None:
        resplit = spec.model_copy(update={"split": spec.split.model_copy(update={"seed": robustness.split_seed})})
        data.evaluations["robust_split"] = build_dataset(resplit, "test", plan, ledger_name, extra, sparse=True)
    for norm in robustness.norms if robustness else []:
        data.evaluations[f"robust_norm_{norm}"] = build_dataset(
            with_norm(spec, norm), "test", plan, ledger_name, extra, sparse=True
        )
    return data


@dataclass
class TrainTotals:
    """Events, summed weight and summed |weight| per class label of the train split."""

    events: dict[int, int]
    weight: dict[int, float]
    abs_weight: dict[int, float]


def train_totals(job: JobSpec, data: JobData) -> TrainTotals:
    """One pass over the train split's labels and weights (no inputs read), summed per block in
    the read tasks' wake: only a few numbers per block reach the driver."""
    dataset = build_dataset(job.data, "train", data.plan, data.ledger_name, with_inputs=False)
    parts = dataset.map_batches(_block_totals, batch_format="numpy", batch_size=None).take_all()
    totals = TrainTotals({}, {}, {})
    for part in parts:
        label = int(part["label"])
        totals.events[label] = totals.events.get(label, 0) + int(part["events"])
        totals.weight[label] = totals.weight.get(label, 0.0) + float(part["weight"])
        totals.abs_weight[label] = totals.abs_weight.get(label, 0.0) + float(part["abs_weight"])
    return totals


def _block_totals(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    labels = batch[LABEL] if LABEL in batch else np.zeros(len(batch[ENTRY]), dtype=np.int64)
    weights = batch[WEIGHT].astype(np.float64) if WEIGHT in batch else np.ones(len(labels))
    present = np.unique(labels)
    index = np.searchsorted(present, labels)
    return {
        "label": present,
        "events": np.bincount(index, minlength=len(present)),
        "weight": np.bincount(index, weights, minlength=len(present)),
        "abs_weight": np.bincount(index, np.abs(weights), minlength=len(present)),
    }


def training_job(job: JobSpec, data: JobData) -> tuple[JobSpec, float | None]:
    """The job as the workers train it, and the weight scale of train.weight_norm: global.
    task.balance becomes class weights total / (classes * class total), from weighted totals."""
    if not job.task.balance and not (job.data.weight and job.train.weight_norm == "global"):
        return job, None
    totals = train_totals(job, data)
    scale = None
    if job.data.weight and job.train.weight_norm == "global":
        scale = sum(totals.abs_weight.values()) / max(1, sum(totals.events.values()))
    if job.task.balance:
        n_classes = len(job.data.class_names)
        missing = [job.data.class_names[c] for c in range(n_classes) if totals.weight.get(c, 0.0) <= 0]
        if missing:
            raise DataError(f"task.balance: the train split has no (positive) weight in class(es) {missing}")
        total = sum(totals.weight.get(c, 0.0) for c in range(n_classes))
        weights = [total / (n_classes * totals.weight[c]) for c in range(n_classes)]
        job = job.model_copy(update={"task": job.task.model_copy(update={"class_weights": weights, "balance": False})})
    return job, scale


def read_everything(job: JobSpec) -> tuple[int, dict[str, float | list]]:
    """`hepray validate --read`: every event of the job's files and of its evaluate.samples read and
    encoded once, as training would (no split, no shuffle, no model), with data.on_error: skip so
    that every problem is listed rather than the first stopping the read. Returns the number of
    examples read and the skip report."""
    skipping = job.model_copy(update={"data": job.data.model_copy(update={"on_error": "skip"})})
    extra, plan, ledger, ledger_name = _planned(skipping)
    data = JobData({}, plan, ledger, ledger_name=ledger_name)
    datasets = [build_dataset(skipping.data, None, plan, ledger_name, extra, sparse=True)]
    for globs in job.evaluate.samples.values():
        sample = skipping.data.model_copy(update={"files": globs})
        datasets.append(_sample_dataset(sample, data, extra, ledger_name))
    examples = sum(len(batch[ENTRY]) for dataset in datasets for batch in dataset.iter_batches(batch_format="numpy"))
    return examples, data.skip_report()
