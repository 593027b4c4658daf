"""Baselines a model is compared with: expressions of branches, or simple models fitted on the
train split (rectangular cuts, a linear calibration, gradient-boosted trees).

The read tasks carry every expression a baseline needs as an extra column (`columns`); the
fitted baselines learn from the train split's columns (no images read) and are applied to
the test split's, so the model and its baselines are scored on the same events.

Event weights: when the train split's events carry a ``weight`` column (the job's
``data.weight``), the fitted baselines learn with it: the cuts' signal efficiency and
background fraction are weighted fractions and their thresholds weighted quantiles
(``resolution.weighted_quantile``); the linear calibration is a weighted least-squares line
(negative weights keep their sign); the trees get it as ``sample_weight``. Without it every
event counts once, as before. Scoring the baselines with the test split's weights is
``metrics``' business.
"""

from __future__ import annotations

from itertools import product

import numpy as np

from hepray.data.events import LABEL, TARGET, WEIGHT
from hepray.evaluate.resolution import weighted_quantile
from hepray.spec import CutsBaseline, GBDTBaseline, JobSpec, LinearBaseline

CUT_LEVELS = 21  # signal-efficiency levels tried per variable when tuning cuts


def _inputs_of(baseline) -> list[str]:
    if isinstance(baseline, str):
        return [baseline]
    if isinstance(baseline, CutsBaseline):
        return list(baseline.vars)
    if isinstance(baseline, LinearBaseline):
        return [baseline.expr]
    return list(baseline.features)


def column(expression: str) -> str:
    return f"baseline_input:{expression}"


def columns(job: JobSpec) -> dict[str, str]:
    """Column name -> expression for every input of every baseline of the job."""
    return {column(e): e for b in job.evaluate.baselines.values() for e in _inputs_of(b)}


def needs_fit(job: JobSpec) -> bool:
    return any(not isinstance(b, str) for b in job.evaluate.baselines.values())


def _matrix(baseline, batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(batch[column(e)], dtype=np.float64) for e in _inputs_of(baseline)], axis=1)


def _fraction(flag: np.ndarray, w: np.ndarray | None) -> float:
    if w is None:
        return flag.mean()
    total = w.sum()
    return float((w * flag).sum() / total) if total > 0 else np.nan


def tune_cuts(x: np.ndarray, signal: np.ndarray, efficiency: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Thresholds t (an event passes when x <= t on every column) giving at least `efficiency` of
    the signal with the least background: a grid over the signal efficiency of each variable but
    the last, whose threshold then brings the total to `efficiency`. With `weights`, efficiencies
    and background fractions are weighted fractions and the thresholds weighted quantiles."""
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    xs, xb = x[signal], x[~signal]
    ws, wb = (None, None) if w is None else (w[signal], w[~signal])
    if len(xs) == 0 or (ws is not None and not ws.sum() > 0):
        raise ValueError(
            "cuts baseline: the train split has no signal events" + ("" if ws is None else " of positive total weight")
        )
    best, best_fake = None, np.inf
    levels = np.linspace(efficiency, 1.0, CUT_LEVELS)
    for combo in product(levels, repeat=x.shape[1] - 1):
        if ws is None:
            first = np.quantile(xs[:, :-1], combo, axis=0).diagonal() if combo else np.empty(0)
        else:
            first = np.array([weighted_quantile(xs[:, j], ws, level) for j, level in enumerate(combo)])
        passed_signal = (xs[:, :-1] <= first).all(axis=1)
        kept = _fraction(passed_signal, ws)
        if not kept >= efficiency:
            continue
        last = weighted_quantile(
            xs[passed_signal, -1], None if ws is None else ws[passed_signal], min(1.0, efficiency / kept)
        )
        thresholds = np.append(first, last)
        fake = _fraction((xb <= thresholds).all(axis=1), wb) if len(xb) else 0.0
        if fake < best_fake:
            best, best_fake = thresholds, fake
    return best


def fit_line(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(slope, intercept) minimising sum w (y - slope x - intercept)^2: ``np.polyfit`` (with
    sqrt(w) for non-negative weights); with negative weights the signed normal equations."""
    if weights is None:
        return np.polyfit(x, y, 1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if (w >= 0).all():
        return np.polyfit(x, y, 1, w=np.sqrt(w))
    design = np.stack([x, np.ones_like(x)], axis=1)
    return np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * y))


class Baselines:
    """The job's baselines, fitted on train-split columns; `apply` scores other events."""

    def __init__(self, job: JobSpec, train: dict[str, np.ndarray] | None = None):
        self.job = job
        self.fitted: dict[str, object] = {}
        for name, baseline in job.evaluate.baselines.items():
            if isinstance(baseline, str):
                continue
            if train is None:
                raise ValueError(f"evaluate.baselines.{name}: a fitted baseline needs the train split")
            self.fitted[name] = self._fit(baseline, train)

    def _fit(self, baseline, train: dict[str, np.ndarray]):
        x = _matrix(baseline, train)
        truth = train[TARGET if self.job.task.kind == "regression" else LABEL]
        weights = train.get(WEIGHT)
        weights = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if isinstance(baseline, CutsBaseline):
            sign = np.array([1.0 if side == "below" else -1.0 for side in baseline.vars.values()])
            return sign, tune_cuts(x * sign, truth == 1, baseline.efficiency, weights)
        if isinstance(baseline, LinearBaseline):
            return fit_line(x[:, 0], truth, weights)
        return self._fit_gbdt(baseline, x, truth, weights)

    def _fit_gbdt(self, baseline: GBDTBaseline, x: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None):
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        rng = np.random.default_rng(self.job.train.seed)
        if len(x) > baseline.max_train_events:
            keep = rng.choice(len(x), baseline.max_train_events, replace=False)
            x, truth = x[keep], truth[keep]
            weights = None if weights is None else weights[keep]
        kind = HistGradientBoostingRegressor if self.job.task.kind == "regression" else HistGradientBoostingClassifier
        model = kind(max_iter=baseline.max_iter, early_stopping=True, random_state=self.job.train.seed)
        return model.fit(x, truth, sample_weight=weights)

    def apply(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """name -> per-event score (classifiers), pass flag (cuts) or target estimate (regression)."""
        out = {}
        for name, baseline in self.job.evaluate.baselines.items():
            x = _matrix(baseline, batch)
            if isinstance(baseline, str):
                out[name] = x[:, 0]
            elif isinstance(baseline, CutsBaseline):
                sign, thresholds = self.fitted[name]
                out[name] = (x * sign <= thresholds).all(axis=1)
            elif isinstance(baseline, LinearBaseline):
                out[name] = np.polyval(self.fitted[name], x[:, 0])
            elif self.job.task.kind == "regression":
                out[name] = self.fitted[name].predict(x)
            else:
                proba = self.fitted[name].predict_proba(x)
                out[name] = proba[:, 1] if self.job.task.kind == "binary" else proba
        return out
