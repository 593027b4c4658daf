"""The ROC curve and its area, event-weighted: one definition for the per-epoch metrics (train)
and the evaluation (evaluate)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

NAN = float("nan")


def _defined(y: np.ndarray, w: np.ndarray | None) -> bool:
    """Both classes present (with weights: each with a positive total weight)."""
    if y.size == 0 or y.all() or not y.any():
        return False
    return w is None or (np.sum(w[y]) > 0 and np.sum(w[~y]) > 0)


def roc_points(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None):
    """(fpr, tpr) from sklearn (weighted with ``weights``), or None unless both classes are present."""
    y = np.asarray(y, dtype=bool)
    if not _defined(y, weights):
        return None
    fpr, tpr, _ = roc_curve(y, score, sample_weight=weights)
    return fpr, tpr


def roc_area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoid area under the ROC: sklearn's ``auc`` (= ``roc_auc_score``) without its check
    that FPR is monotone, which negative weights can break."""
    return float(np.trapezoid(tpr, fpr))


def safe_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC (weighted with ``weights``), NaN unless both classes are present."""
    roc = roc_points(y, score, weights)
    return NAN if roc is None else roc_area(*roc)
