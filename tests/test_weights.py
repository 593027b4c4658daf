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
        (weight * losses).sum().item() / (4 * 0.8), rel=1e-6)


def test_unit_weights_zero_weights_and_repeated_events():
    task = Task(TaskSpec(kind="binary"))
    plain = task.loss(OUTPUTS, LABELS).item()
    assert task.loss(OUTPUTS, LABELS, torch.ones(4)).item() == pytest.approx(plain, rel=1e-6)
    # an event of weight 0 changes nothing, whatever its output
    padded = task.loss(torch.cat([OUTPUTS, torch.tensor([[50.0]])]), torch.cat([LABELS, torch.tensor([0])]),
                       torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])).item()
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
    raw = etaphi_job({"wide": str(tmp_path / "wide.root"), "narrow": str(tmp_path / "narrow.root")},
                     weight="w", split={"val": 0.2, "test": 0.3, "seed": 1})
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
