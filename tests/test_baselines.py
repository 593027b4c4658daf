"""Baselines fitted on the train split: rectangular cuts, linear calibration, gradient-boosted trees."""

from __future__ import annotations

import numpy as np
import pytest

from hepray.evaluate import metrics
from hepray.evaluate.baselines import Baselines, column, tune_cuts
from hepray.spec import JobSpec
from rootfiles import etaphi_job


def test_cuts_reach_the_efficiency_with_the_least_background():
    rng = np.random.default_rng(3)
    # Signal small in both variables; background small in only one of them at a time.
    signal = rng.exponential([1.0, 1.0], (20_000, 2))
    background = np.concatenate([rng.exponential([1.0, 8.0], (10_000, 2)), rng.exponential([8.0, 1.0], (10_000, 2))])
    x = np.concatenate([signal, background])
    is_signal = np.repeat([True, False], [len(signal), len(background)])
    thresholds = tune_cuts(x, is_signal, 0.8)
    passed = (x <= thresholds).all(axis=1)
    assert passed[is_signal].mean() == pytest.approx(0.8, abs=0.01)
    # A cut on either variable alone at 80 % keeps about half the background; both together far less.
    single = (x[:, 0] <= np.quantile(signal[:, 0], 0.8))[~is_signal].mean()
    assert passed[~is_signal].mean() < 0.6 * single


def job_with(baselines: dict, task: str = "binary") -> JobSpec:
    raw = etaphi_job(
        {"a": "a.root", "b": "b.root"} if task == "binary" else ["a.root"],
        **({} if task == "binary" else {"target": "e_sum"}),
    )
    raw["evaluate"] = {"baselines": baselines}
    if task == "regression":
        raw["task"] = {"kind": "regression"}
    return JobSpec.model_validate(raw)


def test_fitted_baselines_apply_to_other_events():
    rng = np.random.default_rng(5)
    n = 4000
    label = rng.integers(0, 2, n)
    width = rng.normal(1.0 - 0.5 * label, 0.3)
    iso = rng.exponential(1.0 - 0.6 * label)
    batch = {"label": label, column("width"): width, column("iso"): iso, column("x"): rng.normal(size=n)}
    job = job_with(
        {
            "cuts": {"kind": "cuts", "vars": {"width": "below", "iso": "below"}, "efficiency": 0.9},
            "bdt": {"kind": "gbdt", "features": ["width", "iso"], "max_iter": 50},
            "x": "x",
        }
    )
    scores = Baselines(job, batch).apply(batch)
    assert scores["cuts"].dtype == np.bool_ and scores["cuts"][label == 1].mean() == pytest.approx(0.9, abs=0.01)
    result = metrics.binary_metrics(np.zeros((n, 1)), label, ["b", "s"], scores)
    assert result["baseline_bdt_auc"] > 0.85 and abs(result["baseline_x_auc"] - 0.5) < 0.05
    assert result["baseline_cuts_eff"] == pytest.approx(0.9, abs=0.01) and result["baseline_cuts_rej"] > 2
    # The model's rejection at the cut's efficiency is read off its own ROC.
    ideal = metrics.binary_metrics(label[:, None] * 10.0 - 5.0, label, ["b", "s"], {"cuts": scores["cuts"]})
    assert ideal["test_rej_at_cuts"] > 100


def test_linear_calibration_recovers_the_scale():
    rng = np.random.default_rng(7)
    truth = rng.uniform(10, 100, 3000)
    measured = (truth - 2.0) / 1.25 * (1 + 0.05 * rng.normal(size=truth.size))
    batch = {"target": truth, column("e_sum"): measured}
    job = job_with({"calib": {"kind": "linear", "expr": "e_sum"}}, task="regression")
    estimate = Baselines(job, batch).apply(batch)["calib"]
    assert np.median(estimate / truth) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"c": {"kind": "cuts", "vars": {"x": "below"}}}, "cuts need a binary task"),
        ({"l": {"kind": "linear", "expr": "x"}}, "needs a regression task"),
        (
            {"c": {"kind": "cuts", "vars": {"x": "sideways"}}},
            r"^job.yaml: invalid job\n  evaluate.baselines.c.vars.x: Input should be 'below' or 'above'$",
        ),
        ({"c": {"kind": "cut"}}, "evaluate.baselines.c: Input tag 'cut' found using"),
    ],
)
def test_baseline_spec_errors(bad, message):
    from hepray.spec import SpecError, validate_job

    raw = etaphi_job({"a": "a.root", "b": "b.root"}, target="e_sum")
    raw["task"] = {"kind": "regression"} if "cuts" in message else {"kind": "binary"}
    raw["evaluate"] = {"baselines": bad}
    with pytest.raises(SpecError, match=message):
        validate_job(raw, "job.yaml")
