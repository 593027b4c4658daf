"""The evaluation entry point called by training: metrics (flat floats) + plots.

``evaluate_predictions`` returns the flat metric dict (see ``metrics`` and ``resolution`` for
the key scheme and exact definitions); the caller merges it into metrics.json. It also
writes ``out_dir/evaluation.json`` (the same metrics with NaN as null, the bin edges
actually used, the per-energy-bin resolution table behind the fit, and the list of plots)
and, with ``make_plots``, ``out_dir/plots/*.png``.

Weights: with ``weights`` (one per event, e.g. the job's ``data.weight``; negative allowed)
every number is weighted -- AUCs, rejections, accuracy, confusion fractions, score
histograms, quantiles, widths, fits, energy scans, baselines, every observer bin (see
``metrics`` and ``resolution`` for the definitions, negative weights and NaN rules); event
counts stay counts and ``test_weight_sum`` (per class ``test_weight_sum_<c>``) is added.
Events with a zero weight are left out (they change no number, ``test_events`` included);
a non-finite weight makes the event non-finite. ``weights=None``: every event counts once and
the numbers are exactly the unweighted ones.

``weighted`` is 1.0 when ``weights`` were given, else 0.0 (it says which numbers the ``test_``
and ``baseline_`` keys are). With ``weights`` and ``unweighted=True`` the unweighted numbers
(on the same finite events, zero-weight ones included) are added too, under the same key with
``unweighted_`` inserted after its first word: ``test_auc`` -> ``test_unweighted_auc``,
``test_auc@eta[0,1.5)`` -> ``test_unweighted_auc@eta[0,1.5)``, ``baseline_b_rej50`` ->
``baseline_unweighted_b_rej50``; ``test_events_nonfinite`` and ``extra_metrics`` are not
repeated. Without ``weights`` ``unweighted`` adds nothing (the numbers already are).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics, resolution

log = logging.getLogger(__name__)
DEFAULT_ENERGY_BINS = 8


def _json_safe(v):
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_safe(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _scan_table(sc: resolution.EnergyScan) -> dict:
    return {
        "edges": sc.edges,
        "energy_mean": sc.energy,
        "events": sc.events,
        "response_median": sc.response_median,
        "resolution_sigma": sc.sigma_rel,
        "resolution_sigma_err": sc.sigma_rel_err,
        "resolution_iqr": sc.iqr_rel68,
        "resolution_rms": sc.rms_rel,
        "fit": sc.fit,
        **({} if sc.weight_sum is None else {"weight_sum": sc.weight_sum}),
    }


def _checked_inputs(task, outputs, truth, observers, baselines, weights):
    """outputs [N, K] float64, truth [N], baselines, observers and weights as arrays, each checked against N:
    a shape mismatch is a caller's bug, so it raises rather than evaluating misaligned events."""
    truth = np.asarray(truth).reshape(-1)
    n = truth.size
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.shape[0] != n:
        raise ValueError(f"outputs have {outputs.shape[0]} rows for {n} truth values")
    if task != "multiclass" and outputs.shape[1] != 1:
        raise ValueError(f"{task} outputs must be [N, 1], got {outputs.shape}")
    checked = {}
    for name, baseline in (baselines or {}).items():
        baseline = np.asarray(baseline)
        if baseline.shape[0] != n:
            raise ValueError(f"baseline {name!r} has {baseline.shape[0]} rows for {n} events")
        checked[name] = baseline if task == "multiclass" else baseline.reshape(n, -1)[:, 0]
    obs = {}
    for k, v in observers.items():
        v = np.asarray(v).reshape(-1)
        if v.size != n:
            raise ValueError(f"observer {k!r} has {v.size} values for {n} events")
        obs[k] = v
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if weights.size != n:
            raise ValueError(f"weights have {weights.size} values for {n} events")
    return outputs, truth, checked, obs, weights


@dataclass
class Events:
    """The evaluated events' arrays, all aligned."""

    outputs: np.ndarray
    truth: np.ndarray
    baselines: dict[str, np.ndarray]
    obs: dict[str, np.ndarray]
    weights: np.ndarray | None = None

    def select(self, keep: np.ndarray, weights: bool = True) -> Events:
        return Events(
            self.outputs[keep],
            self.truth[keep],
            {k: v[keep] for k, v in self.baselines.items()},
            {k: v[keep] for k, v in self.obs.items()},
            self.weights[keep] if weights and self.weights is not None else None,
        )


def _finite_events(ev: Events) -> tuple[Events, int]:
    """Drop events with a non-finite output, truth or weight, so one bad event does not turn every
    metric into NaN; returns the events and how many were dropped."""
    n = ev.truth.size
    ok = np.isfinite(ev.outputs).all(axis=1) & np.isfinite(ev.truth.astype(np.float64))
    if ev.weights is not None:
        ok &= np.isfinite(ev.weights)
    n_bad = int(n - ok.sum())
    if n_bad:
        log.warning("evaluate: %d of %d events have non-finite outputs, truth or weight and are dropped", n_bad, n)
        ev = ev.select(ok)
    return ev, n_bad


def _energy_scans(ev: Events, energy, used_bins):
    """Regression: resolution and response vs the true energy, for the model and each baseline,
    and their a/sqrt(E) (+) b (+) c/E fits as metrics. Bins are ``used_bins[energy]`` or, if
    absent, equal-population (equal-weight) bins, recorded in ``used_bins`` so the ``@energy[...)``
    keys use them too."""
    scans: dict[str, resolution.EnergyScan] = {}
    fits: dict[str, float] = {}
    if energy not in ev.obs:
        log.warning("evaluate: energy observer %r not available, no resolution-vs-energy fit", energy)
        return scans, fits
    e = ev.obs[energy].astype(np.float64)
    edges = used_bins.get(energy) or resolution.quantile_edges(e, DEFAULT_ENERGY_BINS, weights=ev.weights)
    used_bins[energy] = edges
    estimators = {"test": ("model", ev.outputs[:, 0])}
    estimators.update({f"baseline_{name}": (name, b) for name, b in ev.baselines.items()})
    for prefix, (label, est) in estimators.items():
        sc = resolution.energy_scan(est, ev.truth, e, edges, ev.weights)
        scans[label] = sc
        fits.update({f"{prefix}_{k}": float(v) for k, v in sc.fit.items()})
    return scans, fits


def _all_metrics(task, ev: Events, class_names, used_bins, energy):
    """Task, energy-scan and binned metrics of ``ev`` (weighted when ``ev.weights`` is set)."""
    result = metrics.task_metrics(task, ev.outputs, ev.truth, class_names, ev.baselines, ev.weights)
    scans: dict[str, resolution.EnergyScan] = {}
    if task == "regression" and energy:
        scans, fits = _energy_scans(ev, energy, used_bins)
        result.update(fits)
    result.update(
        metrics.binned_metrics(task, ev.outputs, ev.truth, class_names, ev.obs, used_bins, ev.baselines, ev.weights)
    )
    return result, scans


def unweighted_key(key: str) -> str:
    """``unweighted_`` after the key's first word: ``test_auc`` -> ``test_unweighted_auc``."""
    first, _, rest = key.partition("_")
    return f"{first}_unweighted_{rest}"


def evaluate_predictions(
    task: str,
    outputs: np.ndarray,
    truth: np.ndarray,
    observers: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    bins: Mapping[str, Sequence[float]],
    out_dir: Path,
    baselines: Mapping[str, np.ndarray] | None = None,
    energy: str | None = None,
    history: Sequence[Mapping] | None = None,
    make_plots: bool = True,
    extra_metrics: Mapping[str, float] | None = None,
    weights: np.ndarray | None = None,
    unweighted: bool = False,
) -> dict[str, float]:
    """Evaluate test-set predictions; returns a flat ``{key: float}`` dict (NaN where undefined).

    ``outputs``: [N, 1] logits (binary), [N, K] logits (multiclass; with pair heads [N, K + K(K-1)/2],
    the pair logits after the class logits), [N, 1] predictions
    (regression); ``truth``: int labels or float targets [N]; ``observers``: per-event arrays
    used by ``bins`` (edges per observer, ``[lo, hi)`` bins) and ``energy`` (regression: the
    true energy in GeV for resolution vs energy and the a/sqrt(E) (+) b (+) c/E fit; binned
    by ``bins[energy]`` or, if absent, 8 equal-population bins with 3-significant-digit edges,
    which are then also used for the ``@energy[...)`` keys). Events with a non-finite output or
    truth are dropped and counted in ``test_events_nonfinite``. Shape mismatches raise;
    degenerate bins and missing observers do not (NaN / warning). ``extra_metrics`` (a caller's
    own numbers on the same events) join the result and evaluation.json. ``weights`` [N] and
    ``unweighted``: see the module doc.
    """
    if task not in ("binary", "multiclass", "regression"):
        raise ValueError(f"unknown task {task!r}")
    out_dir = Path(out_dir)
    ev, n_bad = _finite_events(Events(*_checked_inputs(task, outputs, truth, observers, baselines, weights)))
    if task != "regression":
        ev.truth = ev.truth.astype(np.int64)
    every = ev
    if ev.weights is not None:
        ev = ev.select(ev.weights != 0)

    used_bins = {k: metrics.clean_edges(v) for k, v in bins.items()}
    result: dict[str, float] = {"test_events_nonfinite": float(n_bad), "weighted": float(weights is not None)}
    measured, scans = _all_metrics(task, ev, class_names, used_bins, energy)
    result.update(measured)
    if unweighted and weights is not None:
        plain, _ = _all_metrics(task, every.select(slice(None), weights=False), class_names, used_bins, energy)
        result.update({unweighted_key(k): v for k, v in plain.items()})
    result.update(extra_metrics or {})
    result = {k: float(v) for k, v in result.items()}

    written: list[str] = []
    if make_plots:
        written = _make_plots(task, ev, class_names, out_dir / "plots", scans, history)

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "task": task,
        "class_names": list(class_names),
        "bins": used_bins,
        "energy": energy,
        "weighted": weights is not None,
        "energy_scans": {k: _scan_table(v) for k, v in scans.items()},
        "plots": written,
        "metrics": result,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(_json_safe(summary), indent=1))
    return result


def _make_plots(task, ev: Events, class_names, plot_dir: Path, scans, history) -> list[str]:
    from . import plots  # matplotlib only imported when plotting

    plot_dir.mkdir(parents=True, exist_ok=True)
    outputs, truth, baselines, w = ev.outputs, ev.truth, ev.baselines, ev.weights
    jobs = []
    if task == "binary":
        scores = {name: b for name, b in baselines.items() if b.dtype != np.bool_}  # cuts are points, not curves
        jobs += [
            ("roc.png", plots.roc, (outputs[:, 0], truth, scores, w)),
            ("score_hist.png", plots.score_hist, (outputs[:, 0], truth, class_names, w)),
        ]
    elif task == "multiclass":
        logits = outputs[:, : len(class_names)]  # the class logits; pair heads' logits follow them
        jobs += [
            ("roc_ovr.png", plots.roc_ovr, (logits, truth, class_names, w)),
            ("confusion.png", plots.confusion, (logits, truth, class_names, w)),
        ]
    else:
        jobs += [
            ("pred_vs_true.png", plots.pred_vs_true, (outputs[:, 0], truth, "target", w)),
            ("response.png", plots.response, (outputs[:, 0], truth, baselines, w)),
        ]
        if scans:
            jobs += [
                ("resolution_vs_energy.png", plots.resolution_vs_energy, (scans,)),
                ("response_vs_energy.png", plots.response_vs_energy, (scans,)),
            ]
    if history:
        jobs.append(("loss.png", plots.loss, (history,)))
        keys = plots.metric_keys(history)
        if keys:
            jobs.append(("metric.png", plots.metric, (history, keys)))
    written = []
    for name, fn, args in jobs:
        try:
            fn(plot_dir / name, *args)
            written.append(name)
        except Exception:  # a broken plot must not lose the metrics of a finished training
            log.exception("evaluate: plot %s failed", name)
    return written
