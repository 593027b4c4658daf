"""`hepray run`: a job in; a trained, evaluated, exported model and metrics.json out."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from hepray.data.pipeline import build_job_data, input_shapes
from hepray.evaluate.baselines import Baselines
from hepray.evaluate.inference import MODEL_FILE, collect, load_model, predict, save_model
from hepray.evaluate.momentum import evaluate_track_momenta
from hepray.evaluate.report import evaluate_predictions
from hepray.models.export import export_onnx, onnx_max_difference
from hepray.spec import JobSpec, TrackMomenta, dump_job
from hepray.train.loop import CHECKPOINT_FILE, train_loop_per_worker
from hepray.train.tasks import Task


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS, or start an embedded local Ray."""
    if not ray.is_initialized():
        ray.init(logging_level="WARNING", log_to_driver=True)


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


def run_job(job: JobSpec, out_dir: str | Path, resume: bool = False) -> dict[str, float]:
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_job(job, out_dir / "job.yaml")
    if not resume:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    ensure_ray()
    data = build_job_data(job)
    metric, mode = selection_metric(job)
    trainer = build_trainer(job, data, out_dir, "checkpoints", out_dir / "tensorboard")
    started = time.perf_counter()
    result = trainer.fit()
    train_seconds = time.perf_counter() - started

    best = result.get_best_checkpoint(metric, mode)
    with best.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    best_epoch = next(m for c, m in result.best_checkpoints if c.path == best.path)["epoch"]
    history = full_history(result.checkpoint, best, state)
    save_model(out_dir / MODEL_FILE, job, state["model"])
    model, _ = load_model(out_dir / MODEL_FILE)
    export_onnx(model, input_shapes(job.data), out_dir / "model.onnx")
    onnx_difference = onnx_max_difference(model, input_shapes(job.data), out_dir / "model.onnx")
    if onnx_difference > ONNX_TOLERANCE:
        raise RuntimeError(f"{out_dir / 'model.onnx'}: ONNX Runtime differs from PyTorch by {onnx_difference:.3g}")

    fitted = Baselines(job, collect(data.baseline_train) if data.baseline_train is not None else None)
    metrics: dict[str, float] = {}
    for prefix, dataset in data.evaluations.items():
        events = collect(predict(dataset, out_dir / MODEL_FILE, batch_size=job.train.batch_size))
        metrics.update(evaluate_events(job, prefix, events, fitted, out_dir, history))
    metrics.update(headline_changes(job, metrics, data.evaluations))
    if job.evaluate.permutation_importance:
        from hepray.evaluate.importance import collect_inputs, permutation_importance

        metrics.update(permutation_importance(job, model, collect_inputs(data.evaluations["test"])))
    skip_report = data.skip_report()
    final = state["history"][-1] if state["history"] else {}
    last = result.metrics or {}
    metrics.update({key: float(value) for key, value in final.items() if key != "epoch"})  # at the best epoch
    metrics.update({
        "best_epoch": float(best_epoch),
        "epochs_run": float(last.get("epoch", best_epoch) + 1),
        "stopped_early": float(last.get("stopped_early", 0.0)),
        "events_read": float(data.plan.events),
        "train_seconds": train_seconds,
        "parameters": float(sum(p.numel() for p in model.parameters())),
        "onnx_max_abs_difference": onnx_difference,
        **{k: v for k, v in skip_report.items() if k != "skipped"},
    })
    skipped = skip_report["skipped"]
    (out_dir / "metrics.json").write_text(json.dumps(_finite_or_null(metrics), indent=1, sort_keys=True))
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    if skipped:
        (out_dir / "skipped.json").write_text(json.dumps(skipped, indent=1))
    return metrics


ONNX_TOLERANCE = 1e-3  # largest output difference accepted between the export and the PyTorch model
HEADLINE = {"binary": "auc", "multiclass": "auc_macro", "regression": "iqr_rel"}


def full_history(latest, best, best_state: dict) -> list[dict]:
    """Every epoch's metrics: the best checkpoint's history ends at the best epoch, the latest
    checkpoint's (Ray keeps it beside the best ones) runs to the last epoch trained."""
    if latest is None or latest.path == best.path:
        return best_state["history"]
    with latest.as_directory() as directory:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["history"]


def evaluate_events(job: JobSpec, prefix: str, events: dict[str, np.ndarray], fitted: Baselines, out_dir: Path,
                    history: list[dict]) -> dict[str, float]:
    """Metrics of the model and its baselines on one evaluation's events. The test split's keep
    their `test_` / `baseline_` keys and its plots go to plots/; another evaluation's keys are
    prefixed by its name (`photon_auc`, `photon_baseline_calib_iqr_rel`) and its plots go to
    evaluations/<name>/plots/."""
    if not events:
        return {f"{prefix}_events": 0.0}
    task = Task(job.task)
    is_test = prefix == "test"
    evaluation_dir = out_dir if is_test else out_dir / "evaluations" / prefix
    if isinstance(job.data.target, TrackMomenta):
        result = evaluate_track_momenta(job, events, evaluation_dir, history if is_test else None)
    else:
        result = evaluate_predictions(
            job.task.kind, events["output"], events[task.truth_column],
            {name: events[f"obs_{name}"] for name in job.data.observers}, job.data.class_names,
            job.evaluate.bins, evaluation_dir,
            # A norm changes the model's input only: its baselines would repeat the test split's.
            baselines={} if prefix.startswith("robust_norm_") else fitted.apply(events), energy=job.evaluate.energy,
            history=history if is_test else None, make_plots=job.evaluate.plots,
        )
    if is_test:
        return result
    return {f"{prefix}_{key.removeprefix('test_')}": value for key, value in result.items()}


def headline_changes(job: JobSpec, metrics: dict[str, float], prefixes) -> dict[str, float]:
    """How the headline metric of each other evaluation differs from the test split's."""
    key = HEADLINE[job.task.kind]
    return {f"{prefix}_delta_{key}": metrics[f"{prefix}_{key}"] - metrics[f"test_{key}"]
            for prefix in prefixes if prefix != "test" and f"{prefix}_{key}" in metrics and f"test_{key}" in metrics}


def _finite_or_null(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: undefined metrics (e.g. AUC in a one-class bin) are written as null."""
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}
