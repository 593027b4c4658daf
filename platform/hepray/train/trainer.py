"""Ray Train set-up: a job's TorchTrainer over its train and validation datasets."""

from __future__ import annotations

import math
from pathlib import Path

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from hepray.spec import JobSpec, ScalingSpec, SpecError
from hepray.train.loop import train_loop_per_worker
from hepray.train.reweight import ReweightTable

READ_CPUS = 1.0  # a Ray Data read task's CPU: training must leave at least this much free


class ResourceError(SpecError):
    """The job's scaling cannot run on this cluster: the message names the numbers and what to set."""


def _cluster_cpus() -> tuple[float, int]:
    """The cluster's CPUs and its nodes that have CPUs."""
    nodes = [node for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
    return ray.cluster_resources().get("CPU", 0.0), max(1, len(nodes))


def _floor_twentieth(value: float) -> float:
    return math.floor(value * 20 + 1e-9) / 20


def worker_cpus(scaling: ScalingSpec, trials: int = 1, reserved: float = 0.0) -> float:
    """CPUs per Ray Train worker: `auto` gives each of `trials` runs' workers up to one CPU, leaving
    one CPU per node for reading (and `reserved` CPUs, e.g. Tune's trial drivers); may be <= 0."""
    if scaling.cpus_per_worker != "auto":
        return scaling.cpus_per_worker
    cpus, nodes = _cluster_cpus()
    return min(1.0, _floor_twentieth((cpus - READ_CPUS * nodes - reserved) / (trials * scaling.num_workers)))


def check_scaling(scaling: ScalingSpec, trials: int = 1, reserved: float = 0.0) -> float:
    """The CPUs per worker, or a ResourceError when the workers would leave no CPU for reading
    (Ray Data's read tasks would wait forever) or ask for GPUs the cluster does not have."""
    cpus, _ = _cluster_cpus()
    per_worker = worker_cpus(scaling, trials, reserved)
    workers = trials * scaling.num_workers
    if per_worker <= 0 or workers * per_worker + reserved > cpus - READ_CPUS:
        largest = _floor_twentieth((cpus - READ_CPUS - reserved) / workers)
        fewer = int((cpus - READ_CPUS - reserved) // min(per_worker, 1.0)) if per_worker > 0 else 0
        advice = f"set scaling.cpus_per_worker <= {largest:g}" if largest > 0 else "add CPUs to the cluster"
        per_run = fewer // trials
        if 1 <= per_run < scaling.num_workers:
            advice += f" or scaling.num_workers <= {per_run}"
        raise ResourceError(
            f"scaling: {workers} workers x {per_worker:g} CPU leave no CPU for reading on a {cpus:g}-CPU cluster; {advice}"
        )
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if scaling.use_gpu is True and workers * scaling.gpus_per_worker > gpus:
        raise ResourceError(
            f"scaling: {workers} workers x {scaling.gpus_per_worker:g} GPU ask for more than the "
            f"cluster's {gpus:g} GPUs; set scaling.use_gpu: auto or fewer workers"
        )
    return per_worker


def scaling_config(job: JobSpec) -> ScalingConfig:
    s = job.scaling
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0 if s.use_gpu == "auto" else s.use_gpu
    resources = {"CPU": worker_cpus(s), **({"GPU": s.gpus_per_worker} if use_gpu else {})}
    return ScalingConfig(num_workers=s.num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def torch_config(scaling: ScalingConfig) -> TorchConfig:
    """The process group, chosen here rather than left to Ray (whose default is also NCCL with GPUs,
    gloo without): with GPUs NCCL carries the CUDA tensors (DDP's gradients, SyncBatchNorm) and gloo
    the CPU ones (the loop's metric sums, gathered validation outputs), which NCCL cannot."""
    return TorchConfig(backend="cpu:gloo,cuda:nccl" if scaling.use_gpu else "gloo")


def ordered_ingest() -> DataConfig:
    """Blocks reach the workers in plan order and are dealt to them in that order, so the seed alone
    fixes what each worker trains on: the same metrics on TTree and RNTuple copies, or on a rerun.
    The cost is a wait on a slow read task instead of taking a later block first."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options=options)


def selection_metric(job: JobSpec) -> tuple[str, str]:
    rule = job.train.early_stopping
    return (rule.metric, rule.mode) if rule else ("val_loss", "min")


def build_trainer(
    job: JobSpec,
    data,
    storage_path: Path,
    name: str,
    tensorboard_dir: Path,
    callbacks: list | None = None,
    weight_scale: float | None = None,
    reweight: ReweightTable | None = None,
) -> TorchTrainer:
    """The job's TorchTrainer on its train/val datasets; Ray Train keeps runs in storage_path/name.
    weight_scale: the train split's mean |event weight| (train.weight_norm: global); reweight:
    the factors of data.reweight, applied to the training and validation losses."""
    split = job.data.split
    metric, mode = selection_metric(job)
    scaling = scaling_config(job)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": job.model_dump(mode="json", by_alias=True),
            "train_events": int(data.plan.events * (1 - split.val - split.test)),
            "tensorboard_dir": str(tensorboard_dir),
            "weight_scale": weight_scale,
            "reweight": reweight.as_config() if reweight is not None else None,
        },
        scaling_config=scaling,
        torch_config=torch_config(scaling),
        datasets={"train": data.datasets["train"], "val": data.datasets["val"]},
        dataset_config=ordered_ingest(),
        run_config=RunConfig(
            storage_path=str(storage_path),
            name=name,
            checkpoint_config=CheckpointConfig(
                num_to_keep=job.train.keep_checkpoints, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=FailureConfig(max_failures=job.scaling.max_failures),
            callbacks=callbacks,
        ),
    )
