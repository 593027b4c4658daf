"""From a job's data spec to streaming Ray datasets: one per split, planned once."""

from __future__ import annotations

import glob
import uuid
from dataclasses import dataclass

import ray

from hepray.data.root_source import EventReader, ReadPlan, RootDatasource, SkipLedger, plan_reads, SPLITS
from hepray.spec import DataSpec, JobSpec


def ensure_data(spec: DataSpec) -> None:
    """Write the job's sample data when any of its local files is missing and it says how."""
    if spec.generate is None:
        return
    patterns = [p for group in (spec.files.values() if isinstance(spec.files, dict) else [spec.files]) for p in group]
    if all(glob.glob(p) for p in patterns if "://" not in p):
        return
    from hepray.data.samples import generate

    generate(spec.generate.kind, spec.generate.out, spec.generate.events, spec.generate.seed)


def input_shapes(spec: DataSpec) -> dict[str, tuple[int, ...]]:
    return {name: tuple(input_spec.shape()) for name, input_spec in spec.inputs.items()}


@dataclass
class JobData:
    """The job's datasets per split, the read plan behind them and the skip ledger they report to."""

    datasets: dict[str, ray.data.Dataset]
    plan: ReadPlan
    ledger: ray.actor.ActorHandle | None

    def skip_report(self) -> dict[str, float | list]:
        """events_skipped / files_skipped and the reasons, from planning and from the read tasks."""
        skipped = [(path, events, reason) for path, events, reason in self.plan.skipped]
        if self.ledger is not None:
            skipped += [(path, stop - start, reason) for path, start, stop, reason in ray.get(self.ledger.skipped.remote())]
        return {
            "events_skipped": float(sum(events for _, events, _ in skipped)),
            "ranges_skipped": float(len(skipped)),
            "skipped": [f"{reason}" for _, _, reason in skipped],
        }


def build_dataset(spec: DataSpec, split: str | None, plan: ReadPlan, ledger_name: str | None = None,
                  extra_columns: dict[str, str] | None = None) -> ray.data.Dataset:
    """A streaming dataset of one split (None: all events); nothing holds all events in memory."""
    reader = EventReader(spec, split, ledger_name, extra_columns or {}, shuffle=split == "train")
    return ray.data.read_datasource(RootDatasource(plan, reader), override_num_blocks=len(plan.tasks))


def build_job_data(job: JobSpec, splits: tuple[str, ...] = SPLITS) -> JobData:
    spec = job.data
    ensure_data(spec)
    extra = {"baseline": job.evaluate.baseline} if job.evaluate.baseline else {}
    plan = plan_reads(spec, EventReader(spec, None, extra=extra).branches())
    ledger, ledger_name = None, None
    if spec.on_error == "skip":
        ledger_name = f"hepray-skips-{uuid.uuid4().hex[:12]}"
        ledger = SkipLedger.options(name=ledger_name).remote()
    datasets = {split: build_dataset(spec, split, plan, ledger_name, extra) for split in splits}
    return JobData(datasets, plan, ledger)
