"""Bootstrap intervals over test events: an AUC's, and a paired one for the gap between two
models scoring the same events (each replica resamples the events once and scores both models on
them, so what the events have in common cancels in the gap).

A replica is a multiplicity per event (how often the resampled indices drew it), so an event's
weight in a replica is its weight times that count; the AUC of every replica in a chunk comes
from one sort of the scores, by ranks with tied scores counted half, which is the trapezoid area
of the weighted ROC (`train.roc.safe_auc`, sklearn's roc_auc_score). The point estimate is
`train.roc.safe_auc` on all events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hepray.train.roc import safe_auc

CONFIDENCE = 0.68  # central interval: the 16th to 84th percentile of the replicas
REPLICAS = 500
CHUNK_ELEMENTS = 4_000_000  # replicas x events resampled at once: ~32 MB of int64 indices


@dataclass(frozen=True)
class Interval:
    value: float  # the point estimate on all events
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def replica_counts(n: int, replicas: int, rng: np.random.Generator) -> np.ndarray:
    """(replicas, n) multiplicities: each row resamples n event indices with replacement."""
    indices = rng.integers(0, n, size=(replicas, n))
    offsets = (np.arange(replicas) * n)[:, None]
    return np.bincount((indices + offsets).ravel(), minlength=replicas * n).reshape(replicas, n)


def ranked_aucs(signal: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC per row of `weights` (replicas x events): sum over tied-score groups of the group's
    signal weight times (background weight below it + half the group's own), over the totals."""
    order = np.argsort(score, kind="stable")
    sorted_score, sorted_signal = score[order], signal[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    positive = np.add.reduceat(np.where(sorted_signal, w, 0.0), starts, axis=1)
    negative = np.add.reduceat(np.where(sorted_signal, 0.0, w), starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative
    area = np.sum(positive * (below + 0.5 * negative), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return area / (positive.sum(axis=1) * negative.sum(axis=1))


def replica_aucs(
    problems: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray | None, replicas: int = REPLICAS, seed: int = 1
) -> np.ndarray:
    """(problems, replicas) AUCs of (signal, score) problems on the same events (a model's, or
    one class against the rest of a multiclass model): every problem on the same resampled events."""
    n = problems[0][0].size
    base = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    out = np.empty((len(problems), replicas))
    for start in range(0, replicas, chunk):
        stop = min(replicas, start + chunk)
        resampled = replica_counts(n, stop - start, rng) * base
        for k, (signal, score) in enumerate(problems):
            out[k, start:stop] = ranked_aucs(signal, score, resampled)
    return out


def interval(value: float, replicas: np.ndarray) -> Interval:
    """The point estimate with the central 68 % of its replicas (NaN without a defined value)."""
    finite = replicas[np.isfinite(replicas)]
    if not np.isfinite(value) or finite.size == 0:
        return Interval(float(value), float("nan"), float("nan"))
    tail = 50 * (1 - CONFIDENCE)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


def finite_events(signal, scores, weights) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
    """The events every model scored (finite scores), as float arrays; 2-D scores keep their columns."""
    signal = np.asarray(signal)
    scores = [np.asarray(score, dtype=np.float64) for score in scores]
    if any(len(score) != len(signal) for score in scores):
        raise ValueError(f"scores of {[len(s) for s in scores]} events for {len(signal)} labels")
    keep = np.logical_and.reduce([np.isfinite(score.reshape(len(signal), -1)).all(axis=1) for score in scores])
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    return signal[keep], [score[keep] for score in scores], w


def auc_interval(signal, score, weights=None, replicas: int = REPLICAS, seed: int = 1) -> Interval:
    """The (weighted) AUC of `score` for `signal` events against the rest, with its 68 % interval."""
    signal, (score,), w = finite_events(np.asarray(signal, dtype=bool), [np.ravel(score)], weights)
    return interval(safe_auc(signal, score, w), replica_aucs([(signal, score)], w, replicas, seed)[0])


def auc_gap_interval(signal, score_a, score_b, weights=None, replicas: int = REPLICAS, seed: int = 1) -> Interval:
    """AUC(score_a) - AUC(score_b) on the same events, with its paired 68 % interval."""
    signal, (a, b), w = finite_events(np.asarray(signal, dtype=bool), [np.ravel(score_a), np.ravel(score_b)], weights)
    aucs = replica_aucs([(signal, a), (signal, b)], w, replicas, seed)
    return interval(safe_auc(signal, a, w) - safe_auc(signal, b, w), aucs[0] - aucs[1])
