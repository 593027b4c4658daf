"""Task metrics (binary, multiclass, regression), overall and in bins of observers.

All functions return flat ``dict[str, float]``; a quantity that is undefined on the given
events (one class only, no events, failed fit) is ``nan`` — nothing here raises on a
degenerate bin. Key scheme (``<c>`` is a class name made key-safe by ``key_name``):

binary (outputs = one logit per event, p = sigmoid(logit), class 1 = signal)
    ``test_events``, ``test_events_<c>``, ``test_auc``, ``test_accuracy`` (p > 0.5),
    ``test_rej50``/``rej80``/``rej90``: background rejection 1/FPR at 50/80/90 % signal
    efficiency, FPR linearly interpolated on the ROC between the last point below and the
    first point at/above the efficiency, and capped as ``1/max(FPR, 1/N_bkg)`` so it is
    finite (≤ N_bkg). With a baseline score named ``<b>``: ``baseline_<b>_auc``,
    ``baseline_<b>_rej50/80/90``. With a baseline that is a cut (a boolean pass flag):
    ``baseline_<b>_eff`` (signal efficiency), ``baseline_<b>_rej`` (1/background efficiency)
    and ``test_rej_at_<b>``: the model's rejection at the cut's signal efficiency.
multiclass (outputs = K logits, p = softmax)
    ``test_events``, ``test_events_<c>``, ``test_accuracy`` (argmax), ``test_auc_<c>``
    (one-vs-rest on p_c), ``test_auc_macro`` (mean of the defined one-vs-rest AUCs),
    ``test_auc_<a>_vs_<b>`` for a < b (class index order) on events of class a or b only,
    score p_a/(p_a+p_b) (computed as the monotone-equivalent logit difference z_a - z_b,
    which is exact and overflow-free), positive class a; a model with pair heads (outputs
    = K class logits, then one logit per pair in that order: ``task.pair_heads``) is scored by
    the pair's own logit instead, every other number by the K class logits; ``test_confusion_<true>_<pred>``:
    row-normalised confusion matrix (fraction of true-class events predicted as ``pred``;
    NaN row when the bin has no event of that true class). With an [N, K] baseline score
    ``<b>``: ``baseline_<b>_auc_<c>``, ``baseline_<b>_auc_macro``.
regression (outputs = one prediction per event): ``test_events``, ``test_mse`` (in target
    units squared) and the response/resolution numbers of ``resolution.response_summary``
    with prefix ``test_``; with a baseline ``<b>`` the same with prefix ``baseline_<b>_`` and
    ``test_rIQR_vs_<b> = (iqr_rel_baseline - iqr_rel_model) / iqr_rel_baseline`` (> 0: model better).
    Each estimator also gets the Crystal Ball fit of its response (``resolution.crystal_ball_fit``:
    ``cb_mu``, ``cb_sigma`` relative, ``cb_sigma_err``, ``cb_beta``, ``cb_m``) and the model
    ``test_rCB_vs_<b> = 1 - cb_sigma_model / cb_sigma_baseline`` (study 004's 1 - sigma_cnn / sigma_calib).

Weights (``weights=``: one per event, negative allowed; ``None``: each event counts once and
every number is exactly the unweighted one): ROC curves are scikit-learn's ``roc_curve`` with
``sample_weight`` (cumulative weighted signal and background above each threshold) and the AUC
is the trapezoid under it, i.e. ``roc_auc_score(..., sample_weight=w)`` -- with negative
weights that formula still gives a number (the ROC may then step back; sklearn's ``auc``
would refuse such a curve, the trapezoid is taken as is) and the rejection reads the ROC with
TPR made non-decreasing; the rejection cap ``1/N_bkg`` becomes the FPR of the lightest
background event, ``min|w| / sum(w)`` over background. Accuracy, cut efficiencies and the
confusion matrix are weighted fractions (``confusion_matrix(..., sample_weight=w)``); a
fraction or AUC whose denominator (a class's total weight) is <= 0 is NaN. Regression: the
weighted mean squared error and ``resolution``'s weighted response and widths. Counts
(``test_events``, ``test_events_<c>``) stay event counts; with weights ``test_weight_sum``
(and for classification ``test_weight_sum_<c>``) give the weight totals.

Binned: every key above gets the suffix ``@<observer>[<lo>,<hi>)`` for events with
``lo <= observer < hi`` (edges printed with ``format_edge``: shortest round-trip decimal,
no trailing ``.0``, e.g. ``@ele_pt[10,30)``, ``@eta[-2.5,0)``, ``@E[500,inf)``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import softmax
from sklearn.metrics import confusion_matrix

from hepray.spec import class_pairs
from hepray.train.roc import roc_area, roc_points, safe_auc
from hepray.train.tasks import pair_score

from . import resolution

log = logging.getLogger(__name__)
NAN = float("nan")
EFFICIENCIES = (0.5, 0.8, 0.9)


# ------------------------------------------------------------------ naming


def key_name(name: str) -> str:
    """Class name as used in keys: anything outside [A-Za-z0-9_.+-] becomes '_'."""
    return re.sub(r"[^\w.+-]", "_", str(name))


def format_edge(x: float) -> str:
    x = float(x)
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return np.format_float_positional(x, trim="-")


def bin_suffix(observer: str, lo: float, hi: float) -> str:
    return f"@{observer}[{format_edge(lo)},{format_edge(hi)})"


# ------------------------------------------------------------------ ROC helpers


def background_count(y: np.ndarray, weights: np.ndarray | None) -> float:
    """The number of background events the FPR resolves, for the rejection cap: N_bkg, or with
    weights sum(w) / min|w| over background events (N_bkg again for equal weights; an integer
    weight counts as that many events)."""
    if weights is None:
        return int((~y).sum())
    w = weights[~y]
    w = w[w != 0]
    return float(np.sum(w) / np.min(np.abs(w))) if w.size and np.sum(w) > 0 else NAN


def rejection_at(fpr: np.ndarray, tpr: np.ndarray, eff, n_bkg: float) -> np.ndarray:
    """Background rejection 1/FPR at signal efficiency ``eff`` (scalar or array).

    ``tpr`` is non-decreasing (sklearn order, first point (0, 0); with negative weights it is
    made so by its running maximum). FPR at ``eff`` is linearly interpolated between the last
    ROC point with TPR < eff and the first with TPR >= eff (= that point's FPR when TPR == eff
    exactly); then capped: rejection = 1 / max(FPR, 1 / n_bkg) (``background_count``).
    """
    eff = np.atleast_1d(np.asarray(eff, dtype=np.float64))
    tpr = np.maximum.accumulate(tpr)
    idx = np.clip(np.searchsorted(tpr, eff, side="left"), 1, len(tpr) - 1)
    t0, t1, f0, f1 = tpr[idx - 1], tpr[idx], fpr[idx - 1], fpr[idx]
    dt = t1 - t0
    frac = np.where(dt > 0, (eff - t0) / np.where(dt > 0, dt, 1.0), 1.0)
    f = f0 + np.clip(frac, 0.0, 1.0) * (f1 - f0)
    return 1.0 / np.maximum(f, 1.0 / max(n_bkg, 1))


def _subset(w: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if w is None else w[mask]


def _weights(weights, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n:
        raise ValueError(f"weights have {w.size} values for {n} events")
    return w


def fraction(flag: np.ndarray, w: np.ndarray | None) -> float:
    """Mean of a boolean flag, weighted with ``w``; NaN without events or with total weight <= 0."""
    if flag.size == 0:
        return NAN
    if w is None:
        return float(np.mean(flag))
    total = np.sum(w)
    return float(np.sum(w * flag) / total) if total > 0 else NAN


def _binary_scores(prefix: str, y: np.ndarray, score: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    ok = np.isfinite(score)
    y, score, w = y[ok], score[ok], _subset(w, ok)
    roc = roc_points(y, score, w)
    if roc is None:
        out = {f"{prefix}_auc": NAN}
        rej = [NAN] * len(EFFICIENCIES)
    else:  # same as roc_auc_score (trapezoid on the full ROC), without sorting twice
        out = {f"{prefix}_auc": roc_area(*roc)}
        rej = rejection_at(*roc, EFFICIENCIES, n_bkg=background_count(y, w))
    for e, r in zip(EFFICIENCIES, rej):
        out[f"{prefix}_rej{round(100 * e)}"] = float(r)
    return out


def _event_counts(t: np.ndarray, names: Sequence[str], w: np.ndarray | None) -> dict[str, float]:
    """``test_events`` (and per class), and with weights ``test_weight_sum`` (and per class)."""
    out = {"test_events": float(t.size)}
    out.update({f"test_events_{name}": float(np.sum(t == i)) for i, name in enumerate(names)})
    if w is not None:
        out["test_weight_sum"] = float(np.sum(w))
        out.update({f"test_weight_sum_{name}": float(np.sum(w[t == i])) for i, name in enumerate(names)})
    return out


# ------------------------------------------------------------------ task metrics


def _cut_scores(
    name: str, y: np.ndarray, passed: np.ndarray, model_score: np.ndarray, w: np.ndarray | None = None
) -> dict[str, float]:
    """A cut-based selection's working point, and the model's rejection at the same efficiency."""
    n_bkg = background_count(y, w)
    eff = fraction(passed[y], _subset(w, y))
    fake = fraction(passed[~y], _subset(w, ~y))
    defined = np.isfinite(fake) and np.isfinite(n_bkg) and n_bkg > 0
    out = {
        f"baseline_{name}_eff": float(eff),
        f"baseline_{name}_rej": float(1.0 / max(fake, 1.0 / max(n_bkg, 1))) if defined else NAN,
        f"test_rej_at_{name}": NAN,
    }
    roc = roc_points(y, model_score, w)
    if roc is not None and np.isfinite(eff):
        out[f"test_rej_at_{name}"] = float(rejection_at(*roc, eff, n_bkg=n_bkg)[0])
    return out


def binary_metrics(
    logits: np.ndarray,
    truth: np.ndarray,
    class_names: Sequence[str],
    baselines: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    z = np.asarray(logits, dtype=np.float64)
    z = z[:, 0] if z.ndim == 2 else z
    t = np.asarray(truth).astype(np.int64)
    w = _weights(weights, t.size)
    y = t == 1
    out = _event_counts(t, [key_name(c) for c in class_names[:2]], w)
    out.update(_binary_scores("test", y, z, w))
    out["test_accuracy"] = fraction((z > 0) == y, w)
    for name, baseline in (baselines or {}).items():
        baseline = np.asarray(baseline).reshape(-1)
        if baseline.dtype == np.bool_:
            out.update(_cut_scores(name, y, baseline, z, w))
        else:
            out.update(_binary_scores(f"baseline_{name}", y, baseline.astype(np.float64), w))
    return out


def _ovr(
    prefix: str, t: np.ndarray, scores: np.ndarray, names: list[str], w: np.ndarray | None = None
) -> dict[str, float]:
    out = {}
    aucs = []
    for k, name in enumerate(names):
        ok = np.isfinite(scores[:, k])
        a = safe_auc(t[ok] == k, scores[ok, k], _subset(w, ok))
        out[f"{prefix}_auc_{name}"] = a
        aucs.append(a)
    aucs = np.asarray(aucs)
    out[f"{prefix}_auc_macro"] = float(np.mean(aucs[np.isfinite(aucs)])) if np.isfinite(aucs).any() else NAN
    return out


def confusion_fractions(t: np.ndarray, predicted: np.ndarray, n_cls: int, w: np.ndarray | None = None) -> np.ndarray:
    """Row-normalised (weighted) confusion matrix; NaN rows for true classes without (positive) weight."""
    if t.size:
        cm = confusion_matrix(t, predicted, labels=np.arange(n_cls), sample_weight=w).astype(np.float64)
    else:
        cm = np.zeros((n_cls, n_cls))
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)


def multiclass_metrics(
    logits: np.ndarray,
    truth: np.ndarray,
    class_names: Sequence[str],
    baselines: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(truth).astype(np.int64)
    w = _weights(weights, t.size)
    names = [key_name(c) for c in class_names]
    n_cls, pairs = len(names), class_pairs(len(names))
    if z.ndim != 2 or z.shape[1] not in (n_cls, n_cls + len(pairs)):
        raise ValueError(
            f"multiclass outputs must be [N, {n_cls}] (with pair heads [N, {n_cls + len(pairs)}]), got {z.shape}"
        )
    outputs, z = z, z[:, :n_cls]
    p = softmax(z, axis=1) if z.size else z
    out = _event_counts(t, names, w)
    out["test_accuracy"] = fraction(np.argmax(z, axis=1) == t, w) if t.size else NAN
    out.update(_ovr("test", t, p, names, w))
    for a, b in pairs:
        m = (t == a) | (t == b)
        out[f"test_auc_{names[a]}_vs_{names[b]}"] = safe_auc(
            t[m] == a, pair_score(outputs[m], n_cls, a, b, pair_heads=outputs.shape[1] > n_cls), _subset(w, m)
        )
    frac = confusion_fractions(t, np.argmax(z, axis=1) if t.size else t, n_cls, w)
    for i, ti in enumerate(names):
        for j, pj in enumerate(names):
            out[f"test_confusion_{ti}_{pj}"] = float(frac[i, j])
    for name, baseline in (baselines or {}).items():
        b = np.asarray(baseline, dtype=np.float64)
        if b.shape != z.shape:
            raise ValueError(f"multiclass baseline {name!r} must be [N, {n_cls}] scores, got {b.shape}")
        out.update(_ovr(f"baseline_{name}", t, b, names, w))
    return out


def _regression_block(prefix: str, est: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
    ok = np.isfinite(est) & np.isfinite(y)
    out = {f"{prefix}_mse": resolution.weighted_mean((est[ok] - y[ok]) ** 2, _subset(w, ok)) if ok.any() else NAN}
    for k, v in resolution.response_summary(est, y, w).items():
        out[f"{prefix}_{k}"] = float(v)
    ratio, rw = resolution.ratio_and_weights(est, y, w)
    out.update({f"{prefix}_{k}": v for k, v in resolution.crystal_ball_fit(ratio, weights=rw).items()})
    return out


def regression_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    baselines: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    y = np.asarray(truth, dtype=np.float64).reshape(-1)
    w = _weights(weights, y.size)
    pr = np.asarray(pred, dtype=np.float64)
    pr = pr[:, 0] if pr.ndim == 2 else pr
    out = {"test_events": float(y.size)}
    if w is not None:
        out["test_weight_sum"] = float(np.sum(w))
    out.update(_regression_block("test", pr, y, w))
    for name, baseline in (baselines or {}).items():
        out.update(_regression_block(f"baseline_{name}", np.asarray(baseline, dtype=np.float64).reshape(-1), y, w))
        ib, im = out[f"baseline_{name}_iqr_rel"], out["test_iqr_rel"]
        out[f"test_rIQR_vs_{name}"] = float((ib - im) / ib) if np.isfinite(ib) and ib > 0 else NAN
        cb, cm = out[f"baseline_{name}_cb_sigma"], out["test_cb_sigma"]
        out[f"test_rCB_vs_{name}"] = float(1 - cm / cb) if np.isfinite(cb) and cb > 0 else NAN
    return out


def task_metrics(
    task: str,
    outputs: np.ndarray,
    truth: np.ndarray,
    class_names: Sequence[str],
    baselines: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    if task == "binary":
        return binary_metrics(outputs, truth, class_names, baselines, weights)
    if task == "multiclass":
        return multiclass_metrics(outputs, truth, class_names, baselines, weights)
    if task == "regression":
        return regression_metrics(outputs, truth, baselines, weights)
    raise ValueError(f"unknown task {task!r}")


def clean_edges(edges: Sequence[float]) -> list[float]:
    e = np.unique(np.asarray(edges, dtype=np.float64))
    return [float(x) for x in e[~np.isnan(e)]]


def binned_metrics(
    task: str,
    outputs: np.ndarray,
    truth: np.ndarray,
    class_names: Sequence[str],
    observers: Mapping[str, np.ndarray],
    bins: Mapping[str, Sequence[float]],
    baselines: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """``task_metrics`` in each ``[lo, hi)`` bin of each observer, keys suffixed by ``bin_suffix``.
    Observers absent from ``observers`` are skipped with a warning; NaN observer values fall
    in no bin."""
    out: dict[str, float] = {}
    n = len(truth)
    w = _weights(weights, n)
    for obs, edges in bins.items():
        if obs not in observers:
            log.warning("bins: observer %r not available, skipped", obs)
            continue
        x = np.asarray(observers[obs], dtype=np.float64).reshape(-1)
        if x.size != n:
            raise ValueError(f"observer {obs!r} has {x.size} values for {n} events")
        e = clean_edges(edges)
        for lo, hi in zip(e[:-1], e[1:]):
            m = (x >= lo) & (x < hi)
            res = task_metrics(
                task,
                outputs[m],
                truth[m],
                class_names,
                {name: baseline[m] for name, baseline in (baselines or {}).items()},
                _subset(w, m),
            )
            sfx = bin_suffix(obs, lo, hi)
            out.update({k + sfx: v for k, v in res.items()})
    return out
