"""Permutation importance of a model's scalar inputs (study 004's "minimal set of scalars").

Each column of each ``scalars`` input is shuffled across the test split's events, which
breaks its relation to the target and to the other inputs while keeping its distribution,
and the trained model is evaluated again. ``importance_<name>`` says how much the headline
metric gets worse, averaged over ``repeats`` seeded shuffles:

* regression: the relative growth of the IQR of pred/truth (``iqr_rel``): iqr_shuffled / iqr - 1;
* binary: the AUC lost, auc - auc_shuffled; multiclass: the macro one-vs-rest AUC lost.

``<name>`` is the branch a scalar expression reads (``log(e_acc / 50)`` -> ``e_acc``), or the
key-safe expression when that is ambiguous. Near zero: the model does not use the scalar (or
the others carry the same information); negative values are noise. With a ``weight`` column
among the events (the job's data.weight) the headline metric is weighted as ``metrics`` weights it.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from hepray.data.batches import to_tensors
from hepray.data.events import LABEL, TARGET, WEIGHT
from hepray.evaluate.metrics import key_name
from hepray.evaluate.resolution import ratio_and_weights, weighted_quantile
from hepray.expr import Expression
from hepray.spec import JobSpec
from hepray.train.roc import safe_auc

BATCH = 1024


def scalar_columns(job: JobSpec) -> list[tuple[str, int, str]]:
    """(input name, column, key name) of every scalar the model reads, in job order."""
    columns = [
        (name, k, text)
        for name, spec in job.data.inputs.items()
        if spec.kind == "scalars"
        for k, text in enumerate(spec.branches)
    ]
    reads = [sorted(Expression(text).branches) for _, _, text in columns]
    singles = [r[0] for r in reads if len(r) == 1]
    keys = []
    for (_, _, text), branches in zip(columns, reads):
        unique = len(branches) == 1 and singles.count(branches[0]) == 1
        keys.append(branches[0] if unique else key_name(text))
    return [(name, k, key) for (name, k, _), key in zip(columns, keys)]


def headline(task: str, outputs: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The metric whose loss is the importance: iqr_rel (regression, lower is better) or AUC
    (multiclass: the mean of the one-vs-rest AUCs), weighted with ``weights``."""
    if task == "regression":
        x, w = ratio_and_weights(outputs[:, 0], truth, weights)
        q25, q50, q75 = weighted_quantile(x, w, [0.25, 0.5, 0.75])
        return float((q75 - q25) / q50)
    if task == "binary":
        return safe_auc(truth == 1, outputs[:, 0], weights)
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    p = shifted / shifted.sum(axis=1, keepdims=True)
    return float(np.mean([safe_auc(truth == k, p[:, k], weights) for k in range(outputs.shape[1])]))


def collect_inputs(dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    """A (small) split's columns in the driver, images densified and normalised as for training."""
    parts: dict[str, list[np.ndarray]] = {}
    for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for key, value in to_tensors(table).items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def _outputs(model: torch.nn.Module, inputs: dict[str, np.ndarray], columns: int) -> np.ndarray:
    """The model's first `columns` outputs (a multiclass model's class logits: pair heads' follow)."""
    n = len(next(iter(inputs.values())))
    parts = []
    with torch.no_grad():
        for begin in range(0, n, BATCH):
            batch = {name: torch.as_tensor(values[begin : begin + BATCH]) for name, values in inputs.items()}
            parts.append(model(batch)[:, :columns].float().numpy())
    return np.concatenate(parts).astype(np.float64)


def permutation_importance(
    job: JobSpec, model: torch.nn.Module, events: dict[str, np.ndarray], repeats: int = 3, seed: int = 1
) -> dict[str, float]:
    """``importance_<name>`` for every scalar column, on ``events`` (the test split's model
    inputs and truth, from ``collect_inputs``); ``model`` in eval mode on the CPU."""
    task = job.task.kind
    truth = events[TARGET if task == "regression" else LABEL]
    weights = events.get(WEIGHT)
    inputs = {name: np.ascontiguousarray(events[name]) for name in job.data.inputs}
    columns = len(job.data.class_names) if task == "multiclass" else 1
    reference = headline(task, _outputs(model, inputs, columns), truth, weights)
    rng = np.random.default_rng(seed)
    out = {}
    for name, column, key in scalar_columns(job):
        scores = []
        for _ in range(repeats):
            shuffled = inputs[name].copy()
            shuffled[:, column] = rng.permutation(shuffled[:, column])
            scores.append(headline(task, _outputs(model, {**inputs, name: shuffled}, columns), truth, weights))
        score = float(np.mean(scores))
        out[f"importance_{key}"] = score / reference - 1 if task == "regression" else reference - score
    return out
