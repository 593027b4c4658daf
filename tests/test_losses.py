"""Classifier losses: label smoothing and focal loss (task.label_smoothing, task.focal_gamma)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hepray.spec import SpecError, TaskSpec, validate_job
from hepray.train.tasks import Task

torch.manual_seed(0)
LOGITS = torch.randn(64, 3) * 2
LABELS = torch.randint(0, 3, (64,))


def losses(kind: str, outputs, truth, **task) -> torch.Tensor:
    return Task(TaskSpec(kind=kind, **task)).event_losses(outputs, truth)


def test_multiclass_label_smoothing_matches_torch_and_focal_gamma_zero_is_cross_entropy():
    smoothed = F.cross_entropy(LOGITS, LABELS, reduction="none", label_smoothing=0.1)
    assert torch.allclose(losses("multiclass", LOGITS, LABELS, label_smoothing=0.1), smoothed)
    assert not torch.allclose(smoothed, F.cross_entropy(LOGITS, LABELS, reduction="none"))
    # The focal formula itself at gamma -> 0 is cross-entropy (smoothed or not).
    tiny = losses("multiclass", LOGITS, LABELS, focal_gamma=1e-9, label_smoothing=0.1)
    assert torch.allclose(tiny, smoothed, atol=1e-6)


def test_multiclass_focal_loss_is_the_textbook_formula():
    p = torch.softmax(LOGITS, dim=1).gather(1, LABELS[:, None])[:, 0]
    expected = -((1 - p) ** 2) * torch.log(p)
    focal = losses("multiclass", LOGITS, LABELS, focal_gamma=2.0)
    assert torch.allclose(focal, expected, atol=1e-6)
    # Well-classified events count less than under cross-entropy, every event no more.
    plain = F.cross_entropy(LOGITS, LABELS, reduction="none")
    assert (focal <= plain + 1e-7).all() and focal[p > 0.9].sum() < 0.05 * plain[p > 0.9].sum()


def test_binary_losses_are_the_two_class_case():
    logit, truth = LOGITS[:, :1], (LABELS > 0).long()
    target = truth.float() * 0.8 + 0.1
    smoothed = F.binary_cross_entropy_with_logits(logit[:, 0], target, reduction="none")
    assert torch.allclose(losses("binary", logit, truth, label_smoothing=0.2), smoothed)
    assert torch.allclose(losses("binary", logit, truth, label_smoothing=0.2, focal_gamma=1e-9), smoothed, atol=1e-6)
    # Binary focal loss = two-class softmax focal loss on logits (0, z).
    two = torch.cat([torch.zeros_like(logit), logit], dim=1)
    focal = losses("binary", logit, truth, focal_gamma=2.0, label_smoothing=0.2)
    assert torch.allclose(focal, losses("multiclass", two, truth, focal_gamma=2.0, label_smoothing=0.2), atol=1e-6)


def test_regression_refuses_classifier_losses(tmp_path):
    from rootfiles import etaphi_job

    raw = etaphi_job({"a": str(tmp_path / "a.root"), "b": str(tmp_path / "b.root")})
    raw["task"] = {"kind": "regression", "focal_gamma": 2.0}
    with pytest.raises(SpecError, match="focal_gamma shape a classifier's loss"):
        validate_job(raw, "job.yaml")
