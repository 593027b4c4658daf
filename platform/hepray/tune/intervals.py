"""Bootstrap intervals for the search report: each run's per-event test scores, its headline AUC's
interval and paired intervals of the gaps between two runs scoring the same events.

`hepray run` writes metrics, not per-event scores, so the report scores a finished run's test
events (or a separate evaluation sample's) again with its model.pt and keeps them beside it. Events are
identified by (file, entry[, object]): the split is a hash of file name and entry, so a binary job
on two of a multiclass job's files has exactly those classes' test events of the multiclass job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial, reduce
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from hepray.app.job_data import ensure_data
from hepray.data.events import ENTRY, FILE_KEY, LABEL, OBJECT, OUTPUT, WEIGHT
from hepray.data.pipeline import build_dataset
from hepray.data.root_source import EventReader, plan_reads
from hepray.evaluate.bootstrap import REPLICAS, Interval, interval, replica_aucs, replica_counts
from hepray.evaluate.inference import MODEL_FILE, actor_pool, collect, predict
from hepray.spec import DataSpec, JobSpec
from hepray.train.roc import safe_auc
from hepray.train.tasks import Task, pair_score

KEY_COLUMNS = (FILE_KEY, ENTRY, OBJECT)


def run_predictions(job: JobSpec, run_dir: Path, files: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """The run's model on its test split, or on all events of `files` (class -> globs, a separate
    evaluation sample; the job's own classes are read): key columns, label, weight and raw output.
    Cached in run_dir (predictions_test.npz, predictions_sample.npz) unless the model is newer."""
    run_dir = Path(run_dir)
    path, model = run_dir / f"predictions_{'sample' if files else 'test'}.npz", run_dir / MODEL_FILE
    if path.is_file() and path.stat().st_mtime >= model.stat().st_mtime:
        with np.load(path) as saved:
            if not files or saved.get("files_digest") == _digest(files):
                return {key: saved[key] for key in saved.files if key != "files_digest"}
    spec, split = (evaluation_data(job, files), None) if files else (job.data, "test")
    ensure_data(spec)
    plan = plan_reads(spec, EventReader(spec, None).branches())
    dataset = build_dataset(spec, split, plan, sparse=True, file_column=True)
    events = collect(predict(dataset, model, actor_pool(job), batch_size=job.train.batch_size))
    kept = {key: events[key] for key in (*KEY_COLUMNS, LABEL, WEIGHT, OUTPUT) if key in events}
    np.savez(path, **kept, **({"files_digest": _digest(files)} if files else {}))
    return kept


def evaluation_data(job: JobSpec, files: dict[str, list[str]]) -> DataSpec:
    """The job's data with its files replaced by the evaluation sample's (class -> globs), for the
    job's own classes."""
    return job.data.model_copy(update={"files": {name: files[name] for name in job.data.class_names}})


def _digest(files: dict[str, list[str]]) -> np.ndarray:
    return np.array(json.dumps(files, sort_keys=True))


def _keys(events: dict[str, np.ndarray]) -> np.ndarray:
    columns = [key for key in KEY_COLUMNS if key in events]
    keys = np.empty(len(events[ENTRY]), dtype=[(key, np.int64) for key in columns])
    for key in columns:
        keys[key] = events[key]
    return keys


def aligned_events(*runs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Each run's events restricted to those every run scored, all in the same order."""
    keys = [_keys(events) for events in runs]
    common = reduce(partial(np.intersect1d, assume_unique=True), keys)
    aligned = []
    for events, own in zip(runs, keys):
        _, _, positions = np.intersect1d(common, own, assume_unique=True, return_indices=True)
        aligned.append({key: value[positions] for key, value in events.items()})
    return aligned


@dataclass(frozen=True)
class Problems:
    """A model's AUC as (signal, score) problems on its events, averaged: one for a binary model
    or a class pair, one per class against the rest for a multiclass model's macro AUC."""

    problems: list[tuple[np.ndarray, np.ndarray]]

    def __add__(self, other: Problems) -> Problems:
        """Both models' problems averaged as one: e.g. the same model trained with two seeds."""
        return Problems(self.problems + other.problems)

    def point(self, weights: np.ndarray | None) -> float:
        return float(np.nanmean([safe_auc(signal, score, weights) for signal, score in self.problems]))


def headline_problems(job: JobSpec, events: dict[str, np.ndarray]) -> Problems:
    """test_auc (binary) or test_auc_macro (multiclass, softmax one-vs-rest) of metrics.json."""
    label, output = events[LABEL], np.asarray(events[OUTPUT], dtype=np.float64)
    if job.task.kind == "binary":
        return Problems([(label == 1, output[:, 0])])
    n_classes = len(job.data.class_names)
    probabilities = softmax(output[:, :n_classes], axis=1)  # pair heads' logits, if any, follow the classes'
    return Problems([(label == k, probabilities[:, k]) for k in range(n_classes)])


def pair_problems(job: JobSpec, events: dict[str, np.ndarray], signal: str, background: str) -> Problems:
    """One class against another: a binary job's own output, a multiclass model's logit difference
    (the softmax restricted to the pair) or, with pair heads, the pair's logit (positive for the
    pair's first class, so negated when the signal is the second), on the events of the two classes."""
    names = job.data.class_names
    label, output = events[LABEL], np.asarray(events[OUTPUT], dtype=np.float64)
    if job.task.kind == "binary":
        return Problems([(label == names.index(signal), output[:, 0])])
    s, b = names.index(signal), names.index(background)
    return Problems([(label == s, pair_score(output, len(names), s, b, job.task.pair_heads))])


def pair_events(job: JobSpec, events: dict[str, np.ndarray], classes: tuple[str, str]) -> dict[str, np.ndarray]:
    names = job.data.class_names
    keep = np.isin(events[LABEL], [names.index(name) for name in classes])
    return {key: value[keep] for key, value in events.items()}


def _finite(problems: Problems, weights: np.ndarray | None) -> tuple[Problems, np.ndarray | None]:
    """The events every problem scored (finite scores), weights subset alike."""
    keep = np.logical_and.reduce([np.isfinite(score) for _, score in problems.problems])
    kept = Problems([(signal[keep], score[keep]) for signal, score in problems.problems])
    return kept, None if weights is None else np.asarray(weights, dtype=np.float64)[keep]


def auc_of(problems: Problems, weights: np.ndarray | None, replicas: int = REPLICAS) -> Interval:
    """A model's (macro-averaged) AUC with its 68 % interval."""
    problems, w = _finite(problems, weights)
    return interval(problems.point(w), replica_aucs(problems.problems, w, replicas).mean(axis=0))


def gap_of(first: Problems, second: Problems, weights: np.ndarray | None, replicas: int = REPLICAS) -> Interval:
    """AUC(first) - AUC(second), both on the same events (aligned), with the paired interval."""
    split = len(first.problems)
    joined, w = _finite(Problems(first.problems + second.problems), weights)
    aucs = replica_aucs(joined.problems, w, replicas)
    a, b = Problems(joined.problems[:split]), Problems(joined.problems[split:])
    return interval(a.point(w) - b.point(w), aucs[:split].mean(axis=0) - aucs[split:].mean(axis=0))


def loss_of(job: JobSpec, events: dict[str, np.ndarray], replicas: int = REPLICAS, seed: int = 1) -> Interval:
    """The job's classification loss (its label smoothing, focal term, class and event weights) on
    these events, with the 68 % interval of a bootstrap over them: beside train_eval_loss, the
    train-to-unseen-events loss gap without the noise of a small validation split."""
    task = Task(job.task)
    output = torch.as_tensor(np.asarray(events[OUTPUT], dtype=np.float32))
    truth = torch.as_tensor(events[LABEL])
    losses, norm = (values.double().numpy() for values in task.class_weighted_losses(output, truth))
    weight = np.ones_like(losses) if events.get(WEIGHT) is None else np.asarray(events[WEIGHT], dtype=np.float64)
    keep = np.isfinite(losses)
    losses, norm, weight = losses[keep], norm[keep], weight[keep]
    counts = replica_counts(len(losses), replicas, np.random.default_rng(seed)) * weight
    return interval(
        float((weight * losses).sum() / (np.abs(weight) * norm).sum()),
        (counts * losses).sum(axis=1) / (np.abs(counts) * norm).sum(axis=1),
    )
