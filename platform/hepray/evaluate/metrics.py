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
    which is exact and overflow-free), positive class a; ``test_confusion_<true>_<pred>``:
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

Binned: every key above gets the suffix ``@<observer>[<lo>,<hi>)`` for events with
``lo <= observer < hi`` (edges printed with ``format_edge``: shortest round-trip decimal,
no trailing ``.0``, e.g. ``@ele_pt[10,30)``, ``@eta[-2.5,0)``, ``@E[500,inf)``).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
from scipy.special import softmax
from sklearn.metrics import auc, confusion_matrix, roc_auc_score, roc_curve

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


def safe_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, NaN unless both classes are present."""
    y = np.asarray(y, dtype=bool)
    if y.size == 0 or y.all() or not y.any():
        return NAN
    return float(roc_auc_score(y, score))


def roc_points(y: np.ndarray, score: np.ndarray):
    """(fpr, tpr) from sklearn, or None unless both classes are present."""
    y = np.asarray(y, dtype=bool)
    if y.size == 0 or y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def rejection_at(fpr: np.ndarray, tpr: np.ndarray, eff, n_bkg: int) -> np.ndarray:
    """Background rejection 1/FPR at signal efficiency ``eff`` (scalar or array).

    ``tpr`` is non-decreasing (sklearn order, first point (0, 0)). FPR at ``eff`` is
    linearly interpolated between the last ROC point with TPR < eff and the first with
    TPR >= eff (= that point's FPR when TPR == eff exactly); then capped:
    rejection = 1 / max(FPR, 1 / n_bkg).
    """
    eff = np.atleast_1d(np.asarray(eff, dtype=np.float64))
    idx = np.clip(np.searchsorted(tpr, eff, side="left"), 1, len(tpr) - 1)
    t0, t1, f0, f1 = tpr[idx - 1], tpr[idx], fpr[idx - 1], fpr[idx]
    dt = t1 - t0
    frac = np.where(dt > 0, (eff - t0) / np.where(dt > 0, dt, 1.0), 1.0)
    f = f0 + np.clip(frac, 0.0, 1.0) * (f1 - f0)
    return 1.0 / np.maximum(f, 1.0 / max(int(n_bkg), 1))


def _binary_scores(prefix: str, y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(score)
    y, score = y[ok], score[ok]
    roc = roc_points(y, score)
    if roc is None:
        out = {f"{prefix}_auc": NAN}
        rej = [NAN] * len(EFFICIENCIES)
    else:  # same as roc_auc_score (trapezoid on the full ROC), without sorting twice
        out = {f"{prefix}_auc": float(auc(*roc))}
        rej = rejection_at(*roc, EFFICIENCIES, n_bkg=int((~y).sum()))
    for e, r in zip(EFFICIENCIES, rej):
        out[f"{prefix}_rej{round(100 * e)}"] = float(r)
    return out


# ------------------------------------------------------------------ task metrics


def _cut_scores(name: str, y: np.ndarray, passed: np.ndarray, model_score: np.ndarray) -> dict[str, float]:
    """A cut-based selection's working point, and the model's rejection at the same efficiency."""
    n_sig, n_bkg = int(y.sum()), int((~y).sum())
    eff = passed[y].mean() if n_sig else NAN
    fake = passed[~y].mean() if n_bkg else NAN
    out = {f"baseline_{name}_eff": float(eff),
           f"baseline_{name}_rej": float(1.0 / max(fake, 1.0 / max(n_bkg, 1))) if n_bkg else NAN,
           f"test_rej_at_{name}": NAN}
    roc = roc_points(y, model_score)
    if roc is not None and np.isfinite(eff):
        out[f"test_rej_at_{name}"] = float(rejection_at(*roc, eff, n_bkg=n_bkg)[0])
    return out


def binary_metrics(logits: np.ndarray, truth: np.ndarray, class_names: Sequence[str],
                   baselines: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    z = np.asarray(logits, dtype=np.float64)
    z = z[:, 0] if z.ndim == 2 else z
    t = np.asarray(truth).astype(np.int64)
    y = t == 1
    out = {"test_events": float(t.size)}
    for i, name in enumerate(class_names[:2]):
        out[f"test_events_{key_name(name)}"] = float(np.sum(t == i))
    out.update(_binary_scores("test", y, z))
    out["test_accuracy"] = float(np.mean((z > 0) == y)) if t.size else NAN
    for name, baseline in (baselines or {}).items():
        baseline = np.asarray(baseline).reshape(-1)
        if baseline.dtype == np.bool_:
            out.update(_cut_scores(name, y, baseline, z))
        else:
            out.update(_binary_scores(f"baseline_{name}", y, baseline.astype(np.float64)))
    return out


def _ovr(prefix: str, t: np.ndarray, scores: np.ndarray, names: list[str]) -> dict[str, float]:
    out = {}
    aucs = []
    for k, name in enumerate(names):
        ok = np.isfinite(scores[:, k])
        a = safe_auc(t[ok] == k, scores[ok, k])
        out[f"{prefix}_auc_{name}"] = a
        aucs.append(a)
    aucs = np.asarray(aucs)
    out[f"{prefix}_auc_macro"] = float(np.mean(aucs[np.isfinite(aucs)])) if np.isfinite(aucs).any() else NAN
    return out


def multiclass_metrics(logits: np.ndarray, truth: np.ndarray, class_names: Sequence[str],
                       baselines: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(truth).astype(np.int64)
    names = [key_name(c) for c in class_names]
    n_cls = len(names)
    if z.ndim != 2 or z.shape[1] != n_cls:
        raise ValueError(f"multiclass outputs must be [N, {n_cls}], got {z.shape}")
    p = softmax(z, axis=1) if z.size else z
    out = {"test_events": float(t.size)}
    for k, name in enumerate(names):
        out[f"test_events_{name}"] = float(np.sum(t == k))
    out["test_accuracy"] = float(np.mean(np.argmax(z, axis=1) == t)) if t.size else NAN
    out.update(_ovr("test", t, p, names))
    for a, b in combinations(range(n_cls), 2):
        m = (t == a) | (t == b)
        out[f"test_auc_{names[a]}_vs_{names[b]}"] = safe_auc(t[m] == a, z[m, a] - z[m, b])
    if t.size:
        cm = confusion_matrix(t, np.argmax(z, axis=1), labels=np.arange(n_cls)).astype(np.float64)
    else:
        cm = np.zeros((n_cls, n_cls))
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    for i, ti in enumerate(names):
        for j, pj in enumerate(names):
            out[f"test_confusion_{ti}_{pj}"] = float(frac[i, j])
    for name, baseline in (baselines or {}).items():
        b = np.asarray(baseline, dtype=np.float64)
        if b.shape != z.shape:
            raise ValueError(f"multiclass baseline {name!r} must be [N, {n_cls}] scores, got {b.shape}")
        out.update(_ovr(f"baseline_{name}", t, b, names))
    return out


def regression_metrics(pred: np.ndarray, truth: np.ndarray,
                       baselines: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    y = np.asarray(truth, dtype=np.float64).reshape(-1)
    pr = np.asarray(pred, dtype=np.float64)
    pr = pr[:, 0] if pr.ndim == 2 else pr
    out = {"test_events": float(y.size)}

    def block(prefix: str, est: np.ndarray) -> None:
        ok = np.isfinite(est) & np.isfinite(y)
        out[f"{prefix}_mse"] = float(np.mean((est[ok] - y[ok]) ** 2)) if ok.any() else NAN
        for k, v in resolution.response_summary(est, y).items():
            out[f"{prefix}_{k}"] = float(v)
        out.update({f"{prefix}_{k}": v for k, v in resolution.crystal_ball_fit(resolution.valid_ratio(est, y)).items()})

    block("test", pr)
    for name, baseline in (baselines or {}).items():
        block(f"baseline_{name}", np.asarray(baseline, dtype=np.float64).reshape(-1))
        ib, im = out[f"baseline_{name}_iqr_rel"], out["test_iqr_rel"]
        out[f"test_rIQR_vs_{name}"] = float((ib - im) / ib) if np.isfinite(ib) and ib > 0 else NAN
        cb, cm = out[f"baseline_{name}_cb_sigma"], out["test_cb_sigma"]
        out[f"test_rCB_vs_{name}"] = float(1 - cm / cb) if np.isfinite(cb) and cb > 0 else NAN
    return out


def task_metrics(task: str, outputs: np.ndarray, truth: np.ndarray, class_names: Sequence[str],
                 baselines: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    if task == "binary":
        return binary_metrics(outputs, truth, class_names, baselines)
    if task == "multiclass":
        return multiclass_metrics(outputs, truth, class_names, baselines)
    if task == "regression":
        return regression_metrics(outputs, truth, baselines)
    raise ValueError(f"unknown task {task!r}")


def clean_edges(edges: Sequence[float]) -> list[float]:
    e = np.unique(np.asarray(edges, dtype=np.float64))
    return [float(x) for x in e[~np.isnan(e)]]


def binned_metrics(task: str, outputs: np.ndarray, truth: np.ndarray, class_names: Sequence[str],
                   observers: Mapping[str, np.ndarray], bins: Mapping[str, Sequence[float]],
                   baselines: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """``task_metrics`` in each ``[lo, hi)`` bin of each observer, keys suffixed by ``bin_suffix``.
    Observers absent from ``observers`` are skipped with a warning; NaN observer values fall
    in no bin."""
    out: dict[str, float] = {}
    n = len(truth)
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
            res = task_metrics(task, outputs[m], truth[m], class_names,
                               {name: baseline[m] for name, baseline in (baselines or {}).items()})
            sfx = bin_suffix(obs, lo, hi)
            out.update({k + sfx: v for k, v in res.items()})
    return out
