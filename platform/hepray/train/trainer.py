"""Ray Train set-up: a job's TorchTrainer over its train and validation datasets."""

from __future__ import annotations

from pathlib import Path

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from hepray.spec import JobSpec
from hepray.train.loop import train_loop_per_worker


def scaling_config(job: JobSpec) -> ScalingConfig:
    s = job.scaling
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0 if s.use_gpu == "auto" else s.use_gpu
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if use_gpu else {})}
    return ScalingConfig(num_workers=s.num_workers, use_gpu=use_gpu, resources_per_worker=resources)


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


def build_trainer(job: JobSpec, data, storage_path: Path, name: str, tensorboard_dir: Path,
                  callbacks: list | None = None) -> TorchTrainer:
    """The job's TorchTrainer on its train/val datasets; Ray Train keeps runs in storage_path/name."""
    split = job.data.split
    metric, mode = selection_metric(job)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": job.model_dump(mode="json", by_alias=True),
            "train_events": int(data.plan.events * (1 - split.val - split.test)),
            "tensorboard_dir": str(tensorboard_dir),
        },
        scaling_config=scaling_config(job),
        datasets={"train": data.datasets["train"], "val": data.datasets["val"]},
        dataset_config=ordered_ingest(),
        run_config=RunConfig(
            storage_path=str(storage_path),
            name=name,
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.keep_checkpoints,
                                               checkpoint_score_attribute=metric, checkpoint_score_order=mode),
            failure_config=FailureConfig(max_failures=job.scaling.max_failures),
            callbacks=callbacks,
        ),
    )
