"""Evaluation of a track-momentum regression (data.target: {tracks, px, py, pz}).

Per track, over every slot of every event: the predicted transverse momentum pT = hypot(px, py)
against the true one, scored by `evaluate_predictions` as a regression of one number per track
(the quantity of the per-track job drift_chamber_track_momentum, so the keys compare:
`test_iqr_rel`, `test_resolution_iqr`, `test_response_median`, the Crystal Ball fit, ...;
`test_events` counts tracks there). Its observers are the job's per-event observers, repeated
per slot, and per track `track_pt`, `track_p` (true pT and p, GeV) and `track_slot` (0, 1, ...),
which `evaluate.bins` can bin by. Per component: `test_track_rmse_px`, `_py`, `_pz` (GeV).

Per event: `test_imbalance_mean`, the mean over events of |sum over slots of the predicted
(px, py, pz) - task.initial_momentum| in GeV (the true momenta give 0), and
`test_imbalance_pt_mean`, the same for its transverse part; `test_event_count` events.

With a `weight` column (the job's data.weight) every track carries its event's weight: the
regression numbers are weighted (`evaluate_predictions(weights=...)`), the RMSEs are weighted
root-mean-squares over tracks and the imbalance means weighted means over events.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hepray.data.events import OUTPUT, WEIGHT, observer
from hepray.evaluate.report import evaluate_predictions
from hepray.spec import JobSpec

COMPONENTS = ("px", "py", "pz")


def track_observers(job: JobSpec, events: dict[str, np.ndarray], truth: np.ndarray) -> dict[str, np.ndarray]:
    """One value per track, events' tracks in slot order: the job's observers and the tracks' truth."""
    n_events, tracks = truth.shape[:2]
    observers = {name: np.repeat(events[observer(name)], tracks) for name in job.data.observers}
    observers.update(
        track_pt=np.hypot(truth[..., 0], truth[..., 1]).ravel(),
        track_p=np.linalg.norm(truth, axis=2).ravel(),
        track_slot=np.tile(np.arange(tracks, dtype=np.float64), n_events),
    )
    return observers


def _mean(x: np.ndarray, weights: np.ndarray | None) -> float:
    if weights is None:
        return float(x.mean())
    total = weights.sum()
    return float((weights * x).sum() / total) if total > 0 else float("nan")


def evaluate_track_momenta(
    job: JobSpec, events: dict[str, np.ndarray], out_dir: Path, history: Sequence[dict] | None, unweighted: bool = False
) -> dict[str, float]:
    """The module's metrics on one evaluation's events (`output`, `target`, `obs_*` and, if the
    job has one, `weight` columns); plots and evaluation.json go to out_dir as for any regression.
    `unweighted`: as for `evaluate_predictions`."""
    truth = np.asarray(events["target"], dtype=np.float64)  # (events, tracks, 3)
    prediction = np.asarray(events[OUTPUT], dtype=np.float64).reshape(truth.shape)
    observers = track_observers(job, events, truth)
    weights = events.get(WEIGHT)
    weights = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    per_track = None if weights is None else np.broadcast_to(weights[:, None], truth.shape[:2])  # (events, tracks)
    error = prediction - truth
    imbalance = prediction.sum(axis=1) - np.asarray(job.task.initial_momentum)
    added = {
        f"test_track_rmse_{name}": float(np.sqrt(_mean(error[..., k] ** 2, per_track)))
        for k, name in enumerate(COMPONENTS)
    }
    added.update(
        test_event_count=float(len(truth)),
        test_imbalance_mean=_mean(np.linalg.norm(imbalance, axis=1), weights),
        test_imbalance_pt_mean=_mean(np.hypot(imbalance[:, 0], imbalance[:, 1]), weights),
    )
    return evaluate_predictions(
        "regression",
        np.hypot(prediction[..., 0], prediction[..., 1]).reshape(-1, 1),
        observers["track_pt"],
        observers,
        [],
        job.evaluate.bins,
        out_dir,
        energy=job.evaluate.energy,
        history=history,
        make_plots=job.evaluate.plots,
        extra_metrics=added,
        weights=None if per_track is None else per_track.ravel(),
        unweighted=unweighted,
    )
