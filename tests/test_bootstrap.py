"""Bootstrap intervals of AUCs and paired AUC gaps (evaluate/bootstrap.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hepray.evaluate.bootstrap import auc_gap_interval, auc_interval, ranked_aucs, replica_counts


def scored_events(n: int, seed: int = 0, separation: float = 1.0):
    rng = np.random.default_rng(seed)
    signal = rng.random(n) < 0.4
    score = rng.normal(size=n) + separation * signal
    return signal, score


def test_ranked_auc_matches_sklearn_with_weights_and_ties():
    signal, score = scored_events(3000)
    score = np.round(score, 1)  # many tied scores
    weights = np.random.default_rng(1).uniform(0.2, 3.0, size=score.size)
    stacked = np.stack([np.ones(score.size), weights])
    aucs = ranked_aucs(signal, score, stacked)
    assert aucs[0] == pytest.approx(roc_auc_score(signal, score), abs=1e-12)
    assert aucs[1] == pytest.approx(roc_auc_score(signal, score, sample_weight=weights), abs=1e-12)
    # The point estimate is the evaluation's weighted AUC, the same number.
    interval = auc_interval(signal, score, weights, replicas=50)
    assert interval.value == pytest.approx(roc_auc_score(signal, score, sample_weight=weights), abs=1e-12)
    assert interval.low < interval.value < interval.high


def test_replicas_resample_every_event_count():
    counts = replica_counts(100, 7, np.random.default_rng(0))
    assert counts.shape == (7, 100) and (counts.sum(axis=1) == 100).all()
    assert len({tuple(row) for row in counts}) == 7  # each replica its own draw


def test_gap_of_identical_scores_is_exactly_zero():
    signal, score = scored_events(2000)
    gap = auc_gap_interval(signal, score, score.copy(), replicas=200)
    assert (gap.value, gap.low, gap.high) == (0.0, 0.0, 0.0)


def test_interval_shrinks_with_more_events_and_paired_gap_is_narrower():
    small = auc_interval(*scored_events(500), replicas=300)
    large = auc_interval(*scored_events(20000), replicas=300)
    assert large.width < 0.5 * small.width  # ~1/sqrt(40) as wide; 0.5 leaves room for noise
    assert 0.0 < large.width < 0.02
    # Two correlated models on the same events: the paired gap's interval is narrower than either AUC's.
    signal, score = scored_events(5000)
    other = score + 0.3 * np.random.default_rng(5).normal(size=score.size)
    gap = auc_gap_interval(signal, score, other, replicas=300)
    single = auc_interval(signal, score, replicas=300)
    assert gap.value == pytest.approx(roc_auc_score(signal, score) - roc_auc_score(signal, other), abs=1e-12)
    assert gap.low < gap.value < gap.high and gap.width < single.width


def test_nonfinite_scores_are_dropped_and_mismatched_inputs_refused():
    signal, score = scored_events(1000)
    broken = score.copy()
    broken[:10] = np.nan
    interval = auc_interval(signal, broken, replicas=20)
    assert interval.value == pytest.approx(roc_auc_score(signal[10:], score[10:]), abs=1e-12)
    with pytest.raises(ValueError, match="scores of"):
        auc_gap_interval(signal, score, score[:-1])
