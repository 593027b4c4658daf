"""`hepray run`: a job in; a trained, evaluated, exported model and metrics.json out."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ray.train import Checkpoint

from hepray.app.job_data import JobData, build_job_data, training_job
from hepray.app.reweight import reweight_table
from hepray.app.session import ensure_ray
from hepray.data.events import OUTPUT, WEIGHT, observer
from hepray.evaluate.baselines import Baselines
from hepray.evaluate.inference import MODEL_FILE, actor_pool, collect, load_model, predict, save_model
from hepray.evaluate.momentum import evaluate_track_momenta
from hepray.evaluate.report import evaluate_predictions
from hepray.models.export import export_onnx, onnx_max_difference
from hepray.spec import JobSpec, TrackMomenta, dump_job
from hepray.train.loop import CHECKPOINT_FILE
from hepray.train.tasks import Task
from hepray.train.trainer import build_trainer, check_scaling, selection_metric

ONNX_TOLERANCE = 1e-3  # largest output difference accepted between the export and the PyTorch model
HEADLINE = {"binary": "auc", "multiclass": "auc_macro", "regression": "iqr_rel"}


@dataclass
class Fit:
    """What training left: the best epoch's state and every epoch's metrics."""

    state: dict
    history: list[dict]
    best_epoch: int
    last: dict
    seconds: float
    reweight_metrics: dict[str, float]


def run_job(job: JobSpec, out_dir: str | Path, resume: bool = False) -> dict[str, float]:
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_job(job, out_dir / "job.yaml")
    if not resume:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    ensure_ray()
    check_scaling(job.scaling)
    data = build_job_data(job)
    return finish_run(job, data, train(job, data, out_dir), out_dir)


def run_from_checkpoints(
    job: JobSpec, checkpoints: Path, out_dir: str | Path, seconds: float, source: dict[str, float]
) -> dict[str, float]:
    """What run_job writes, without training: the checkpoints a Ray Train run of the same settings
    left in `checkpoints` (a search trial's, which keeps its best and its latest) are evaluated and
    exported as run_job would its own; `seconds`: how long that run trained; `source`: metrics
    naming that run (e.g. search_trial)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_job(job, out_dir / "job.yaml")
    ensure_ray()
    data = build_job_data(job)
    return finish_run(job, data, saved_fit(job, data, Path(checkpoints), out_dir, seconds), out_dir, source)


def saved_fit(job: JobSpec, data: JobData, checkpoints: Path, out_dir: Path, seconds: float) -> Fit:
    """The Fit a finished training run left in its checkpoint directories: the best by the job's
    selection metric, the history of the latest."""
    directories = [path for path in sorted(checkpoints.glob("checkpoint_*")) if path.is_dir()]
    states = [_load_state(Checkpoint.from_directory(path)) for path in directories]
    if not states:
        raise FileNotFoundError(f"{checkpoints}: no checkpoint of a finished run")
    metric, mode = selection_metric(job)
    latest = max(states, key=lambda state: state["epoch"])
    best = (max if mode == "max" else min)(states, key=lambda state: state["history"][-1][metric])
    last = {"epoch": latest["epoch"], "stopped_early": float(latest["epoch"] + 1 < job.train.epochs)}
    reweight_metrics = reweight_table(job, data, out_dir)[1] if job.data.reweight else {}
    return Fit(best, latest["history"], best["epoch"], last, seconds, reweight_metrics)


def finish_run(
    job: JobSpec, data: JobData, fit: Fit, out_dir: Path, source: dict[str, float] | None = None
) -> dict[str, float]:
    """A trained model's run directory: model.pt, model.onnx, the evaluations, metrics.json, history.json."""
    save_model(out_dir / MODEL_FILE, job, fit.state["model"])
    model, _ = load_model(out_dir / MODEL_FILE)
    onnx_difference = export_checked(job, model, out_dir)

    metrics = evaluate_all(job, data, out_dir, fit.history)
    if job.evaluate.permutation_importance:
        from hepray.evaluate.importance import collect_inputs, permutation_importance

        metrics.update(permutation_importance(job, model, collect_inputs(data.evaluations["test"])))
    skip_report = data.skip_report()
    final = fit.state["history"][-1] if fit.state["history"] else {}
    metrics.update({key: float(value) for key, value in final.items() if key != "epoch"})  # at the best epoch
    metrics.update(
        {
            "best_epoch": float(fit.best_epoch),
            "epochs_run": float(fit.last.get("epoch", fit.best_epoch) + 1),
            "stopped_early": float(fit.last.get("stopped_early", 0.0)),
            "events_read": float(data.plan.events),
            "train_seconds": fit.seconds,
            "parameters": float(sum(p.numel() for p in model.parameters())),
            "onnx_max_abs_difference": onnx_difference,
            **fit.reweight_metrics,
            **{k: v for k, v in skip_report.items() if k != "skipped"},
            **(source or {}),
        }
    )
    (out_dir / "metrics.json").write_text(json.dumps(_finite_or_null(metrics), indent=1, sort_keys=True))
    (out_dir / "history.json").write_text(json.dumps(fit.history, indent=1))
    if skip_report["skipped"]:
        (out_dir / "skipped.json").write_text(json.dumps(skip_report["skipped"], indent=1))
    return metrics


def train(job: JobSpec, data: JobData, out_dir: Path) -> Fit:
    """Ray Train over the train/val splits; the best checkpoint by the job's selection metric."""
    metric, mode = selection_metric(job)
    trained, weight_scale = training_job(job, data)
    table, reweight_metrics = reweight_table(job, data, out_dir) if job.data.reweight else (None, {})
    trainer = build_trainer(
        trained, data, out_dir, "checkpoints", out_dir / "tensorboard", weight_scale=weight_scale, reweight=table
    )
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    best = result.get_best_checkpoint(metric, mode)
    state = _load_state(best)
    best_epoch = next(m for c, m in result.best_checkpoints if c.path == best.path)["epoch"]
    return Fit(
        state, full_history(result.checkpoint, best, state), best_epoch, result.metrics or {}, seconds, reweight_metrics
    )


def _load_state(checkpoint) -> dict:
    """A checkpoint's state: tensors and plain containers only, so a run directory cannot run code."""
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def full_history(latest, best, best_state: dict) -> list[dict]:
    """Every epoch's metrics: the best checkpoint's history ends at the best epoch, the latest
    checkpoint's (Ray keeps it beside the best ones) runs to the last epoch trained."""
    if latest is None or latest.path == best.path:
        return best_state["history"]
    return _load_state(latest)["history"]


def export_checked(job: JobSpec, model: torch.nn.Module, out_dir: Path) -> float:
    """model.onnx, checked against ONNX Runtime on a batch: the largest output difference."""
    shapes = job.data.input_shapes()
    export_onnx(model, shapes, out_dir / "model.onnx")
    difference = onnx_max_difference(model, shapes, out_dir / "model.onnx")
    if difference > ONNX_TOLERANCE:
        raise RuntimeError(f"{out_dir / 'model.onnx'}: ONNX Runtime differs from PyTorch by {difference:.3g}")
    return difference


def evaluate_all(job: JobSpec, data: JobData, out_dir: Path, history: list[dict]) -> dict[str, float]:
    """The model and its baselines on the test split, each extra sample and each robustness check."""
    fitted = Baselines(job, collect(data.baseline_train) if data.baseline_train is not None else None)
    metrics: dict[str, float] = {}
    pool = actor_pool(job)  # the job's workers (and GPUs), as it trained
    for prefix, dataset in data.evaluations.items():
        events = collect(predict(dataset, out_dir / MODEL_FILE, pool, batch_size=job.train.batch_size))
        metrics.update(evaluate_events(job, prefix, events, fitted, out_dir, history))
    metrics.update(headline_changes(job, metrics, data.evaluations))
    return metrics


def evaluate_events(
    job: JobSpec, prefix: str, events: dict[str, np.ndarray], fitted: Baselines, out_dir: Path, history: list[dict]
) -> dict[str, float]:
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
        result = evaluate_track_momenta(
            job, events, evaluation_dir, history if is_test else None, unweighted=job.evaluate.unweighted
        )
    else:
        result = evaluate_predictions(
            job.task.kind,
            events[OUTPUT],
            events[task.truth_column],
            {name: events[observer(name)] for name in job.data.observers},
            job.data.class_names,
            job.evaluate.bins,
            evaluation_dir,
            # A norm changes the model's input only: its baselines would repeat the test split's.
            baselines={} if prefix.startswith("robust_norm_") else fitted.apply(events),
            energy=job.evaluate.energy,
            history=history if is_test else None,
            make_plots=job.evaluate.plots,
            weights=events.get(WEIGHT),
            unweighted=job.evaluate.unweighted,
        )
    if is_test:
        return result
    return {f"{prefix}_{key.removeprefix('test_')}": value for key, value in result.items()}


def headline_changes(job: JobSpec, metrics: dict[str, float], prefixes) -> dict[str, float]:
    """How the headline metric of each other evaluation differs from the test split's."""
    key = HEADLINE[job.task.kind]
    return {
        f"{prefix}_delta_{key}": metrics[f"{prefix}_{key}"] - metrics[f"test_{key}"]
        for prefix in prefixes
        if prefix != "test" and f"{prefix}_{key}" in metrics and f"test_{key}" in metrics
    }


def _finite_or_null(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: undefined metrics (e.g. AUC in a one-class bin) are written as null."""
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}
