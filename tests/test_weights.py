"""Event weights in training: the weighted loss, and a run with data.weight, task.balance and the
global weight norm on a real local Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hepray.app.run import run_job
from hepray.spec import JobSpec, TaskSpec
from hepray.train.tasks import Task
from rootfiles import etaphi_job, towers, write_tree

OUTPUTS = torch.tensor([[0.3], [-1.2], [2.0], [0.1]])
LABELS = torch.tensor([1, 0, 1, 0])


def test_weighted_loss_is_the_weighted_mean_of_event_losses():
    task = Task(TaskSpec(kind="binary"))
    losses = task.event_losses(OUTPUTS, LABELS)
    weight = torch.tensor([1.0, 2.0, 0.5, -0.5])
    expected = (weight * losses).sum() / weight.abs().sum()
    assert task.loss(OUTPUTS, LABELS, weight).item() == pytest.approx(expected.item(), rel=1e-6)
    # global norm: over batch size x the train split's mean |weight|
    assert task.loss(OUTPUTS, LABELS, weight, weight_scale=0.8).item() == pytest.approx(
        (weight * losses).sum().item() / (4 * 0.8), rel=1e-6
    )


def test_unit_weights_zero_weights_and_repeated_events():
    task = Task(TaskSpec(kind="binary"))
    plain = task.loss(OUTPUTS, LABELS).item()
    assert task.loss(OUTPUTS, LABELS, torch.ones(4)).item() == pytest.approx(plain, rel=1e-6)
    # an event of weight 0 changes nothing, whatever its output
    padded = task.loss(
        torch.cat([OUTPUTS, torch.tensor([[50.0]])]),
        torch.cat([LABELS, torch.tensor([0])]),
        torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]),
    ).item()
    assert padded == pytest.approx(plain, rel=1e-6)
    # weight 2 is the event twice
    doubled = task.loss(OUTPUTS, LABELS, torch.tensor([2.0, 1.0, 1.0, 1.0])).item()
    repeated = task.loss(torch.cat([OUTPUTS, OUTPUTS[:1]]), torch.cat([LABELS, LABELS[:1]])).item()
    assert doubled == pytest.approx(repeated, rel=1e-6)


def test_multiclass_class_and_event_weights_combine():
    task = Task(TaskSpec(kind="multiclass", class_weights=[1.0, 3.0]))
    outputs = torch.tensor([[0.2, -0.1], [1.0, 0.5], [-0.3, 0.8]])
    labels = torch.tensor([0, 1, 1])
    unweighted = torch.nn.functional.cross_entropy(outputs, labels, weight=torch.tensor([1.0, 3.0])).item()
    assert task.loss(outputs, labels).item() == pytest.approx(unweighted, rel=1e-6)
    assert task.loss(outputs, labels, torch.ones(3)).item() == pytest.approx(unweighted, rel=1e-6)


@pytest.mark.slow
def test_weighted_balanced_run(ray_session, tmp_path):
    """1:3 classes, weights from a branch (some negative, some zero): the run trains on them, says its
    numbers are weighted and reports the weighted test totals beside the event counts."""
    rng = np.random.default_rng(5)
    narrow, wide = towers(300, 0, seed=1, energy=4.0, spread=0.02), towers(900, 1000, seed=2, energy=2.0, spread=0.12)
    for events in (narrow, wide):
        n = len(events["evt"])
        events["w"] = np.where(rng.uniform(size=n) < 0.05, -0.5, rng.uniform(0.5, 2.0, n))
        events["w"][:10] = 0.0
    write_tree(tmp_path / "narrow.root", narrow)
    write_tree(tmp_path / "wide.root", wide)
    raw = etaphi_job(
        {"wide": str(tmp_path / "wide.root"), "narrow": str(tmp_path / "narrow.root")},
        weight="w",
        split={"val": 0.2, "test": 0.3, "seed": 1},
    )
    raw["task"] = {"kind": "binary", "balance": True}
    raw["train"] = {"epochs": 2, "batch_size": 64, "lr": 3e-3, "weight_norm": "global"}
    raw["evaluate"] = {"unweighted": True, "plots": False}
    metrics = run_job(JobSpec.model_validate(raw), tmp_path / "run")
    assert metrics["weighted"] == 1.0 and metrics["test_auc"] > 0.8
    assert metrics["test_unweighted_auc"] > 0.8 and metrics["test_unweighted_auc"] != metrics["test_auc"]
    assert 0 < metrics["test_weight_sum"] < metrics["test_events"] * 2
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["weighted"] == 1.0


def kinematic_classes(tmp_path):
    """Two classes whose x spectra differ (signal falling, background rising) beside the towers."""
    rng = np.random.default_rng(7)
    narrow, wide = towers(600, 0, seed=1, energy=4.0, spread=0.02), towers(1200, 1000, seed=2, energy=2.0, spread=0.12)
    narrow["x"] = rng.power(0.5, 600)  # piles up at low x
    wide["x"] = rng.power(3.0, 1200)  # piles up at high x
    write_tree(tmp_path / "narrow.root", narrow)
    write_tree(tmp_path / "wide.root", wide)
    return {"wide": str(tmp_path / "wide.root"), "narrow": str(tmp_path / "narrow.root")}


@pytest.mark.slow
def test_reweighting_flattens_the_train_split(ray_session, tmp_path):
    from hepray.app.job_data import build_job_data
    from hepray.app.reweight import reweight_table
    from hepray.evaluate.inference import collect
    from hepray.train.reweight import column

    edges = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    raw = etaphi_job(
        kinematic_classes(tmp_path),
        split={"val": 0.2, "test": 0.2, "seed": 1},
        reweight={"vars": ["x"], "bins": [edges], "target": "flat", "max_weight": 50},
    )
    job = JobSpec.model_validate(raw)
    data = build_job_data(job, splits=("train",))
    table, metrics = reweight_table(job, data, tmp_path / "run")
    assert (tmp_path / "run" / "plots" / "reweight_0.png").exists()
    assert (tmp_path / "run" / "plots" / "reweight_factors.png").exists()
    # Apply the factors to the train split's events as the worker does; the spectra come out flat.
    events = collect(
        data.baseline_train
        if data.baseline_train is not None
        else data.datasets["train"].select_columns(["label", column("x")])
    )
    factors = table.factors_for(torch.from_numpy(events["label"]), [torch.from_numpy(events[column("x")])]).numpy()
    for label in (0, 1):
        mine = events["label"] == label
        spectrum, _ = np.histogram(events[column("x")][mine], edges, weights=factors[mine])
        fractions = spectrum / spectrum.sum()
        assert np.all(np.abs(fractions - 0.2) < 0.2 * 0.05), fractions  # flat to 5 % in every bin
        assert factors[mine].sum() == pytest.approx(mine.sum(), rel=1e-4)  # the class keeps its total weight
    assert metrics["reweight_max_deviation"] < 0.05 and metrics["reweight_capped_fraction"] == 0.0


@pytest.mark.slow
def test_reweighted_run(ray_session, tmp_path):
    raw = etaphi_job(
        kinematic_classes(tmp_path),
        split={"val": 0.2, "test": 0.3, "seed": 1},
        reweight={"vars": ["x"], "bins": [[0, 0.25, 0.5, 0.75, 1.0]], "target": "narrow", "max_weight": 100},
    )
    raw["train"] = {"epochs": 1, "batch_size": 64}
    raw["evaluate"] = {"plots": False}
    metrics = run_job(JobSpec.model_validate(raw), tmp_path / "run")
    assert metrics["reweight_max_deviation"] < 0.05 and np.isfinite(metrics["val_loss"])
    assert metrics["test_auc"] > 0.7 and metrics["weighted"] == 0.0  # evaluation keeps the physics weights
