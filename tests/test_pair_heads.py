"""task.pair_heads: a multiclass model with one more logit per class pair, trained on that pair's
events only, whose pairwise AUC is the pair logit's (issue 20, a lever for the multiclass gap)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from scipy.special import softmax
from test_errors import assert_one_error_line
from typer.testing import CliRunner

from hepray.app.predict import OutputSchema
from hepray.app.preflight import check_model_fits
from hepray.app.run import run_job
from hepray.cli import app
from hepray.data.events import ENTRY, LABEL, OUTPUT
from hepray.evaluate.metrics import multiclass_metrics
from hepray.evaluate.report import evaluate_predictions
from hepray.models import build_model
from hepray.models.export import export_onnx, onnx_max_difference
from hepray.spec import JobSpec, SpecError, TaskSpec, class_pairs, validate_job
from hepray.train.tasks import Task
from hepray.tune.intervals import headline_problems, pair_problems
from rootfiles import etaphi_job, towers, write_tree

CLASSES = ("narrow", "mid", "wide")


def multiclass_job(root, **task) -> JobSpec:
    raw = etaphi_job({name: str(root / f"{name}.root") for name in CLASSES})
    raw["task"] = {"kind": "multiclass", "pair_heads": True, **task}
    return JobSpec.model_validate(raw)


def test_pair_terms_ignore_other_classes_and_are_binary_losses():
    task = Task(TaskSpec(kind="multiclass", pair_heads=True, label_smoothing=0.1, focal_gamma=2.0))
    binary = Task(TaskSpec(kind="binary", label_smoothing=0.1, focal_gamma=2.0))
    plain = Task(TaskSpec(kind="multiclass", label_smoothing=0.1, focal_gamma=2.0))
    # Three classes: class logits, then the logits of pairs (0, 1), (0, 2), (1, 2).
    outputs = torch.tensor(
        [
            [0.3, -0.2, 0.5, 1.2, -0.7, 0.4],
            [-1.0, 0.8, 0.1, -0.5, 2.0, 0.9],
            [0.2, 0.0, -0.4, 0.6, 0.3, -1.5],
        ],
        requires_grad=True,
    )
    truth = torch.tensor([0, 1, 2])
    losses = task.event_losses(outputs, truth)

    def bce(logit: float, target: float) -> torch.Tensor:
        return binary.binary_losses(torch.tensor([logit]), torch.tensor([target]))[0]

    pair_terms = torch.stack(
        [
            (bce(1.2, 1) + bce(-0.7, 1)) / 2,  # class 0: a of (0, 1) and of (0, 2)
            (bce(-0.5, 0) + bce(0.9, 1)) / 2,  # class 1: b of (0, 1), a of (1, 2)
            (bce(0.3, 0) + bce(-1.5, 0)) / 2,  # class 2: b of (0, 2) and of (1, 2)
        ]
    )
    class_terms = plain.event_losses(outputs[:, :3], truth)
    assert torch.allclose(losses, class_terms + pair_terms, atol=1e-6)

    # An event's pair logits of pairs without its class: no change of its loss, no gradient.
    other_pairs = torch.tensor([[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    changed = torch.where(other_pairs, outputs.detach() + 5.0, outputs.detach())
    assert torch.equal(task.event_losses(changed, truth), losses.detach())
    losses.sum().backward()
    assert (outputs.grad[other_pairs] == 0).all() and (outputs.grad[:, 3:][~other_pairs[:, 3:]] != 0).all()
    # The pair terms are part of the loss event weights apply to, as the class term is.
    weight = torch.tensor([1.0, 2.0, 0.5])
    weighted = task.loss(outputs.detach(), truth, weight)
    assert weighted.item() == pytest.approx(((weight * losses.detach()).sum() / weight.sum()).item(), rel=1e-6)


def test_pair_heads_add_one_output_per_pair_and_scores_are_the_class_softmax(tmp_path):
    job = multiclass_job(tmp_path)
    assert job.n_outputs == 3 + 3 and class_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    four = etaphi_job({name: f"{name}.root" for name in "abcd"})
    four["task"] = {"kind": "multiclass", "pair_heads": True}
    assert JobSpec.model_validate(four).n_outputs == 4 + 6
    assert multiclass_job(tmp_path, pair_heads=False).n_outputs == 3

    shapes = job.data.input_shapes()
    check_model_fits(job)
    model = build_model(job.model, shapes, job.n_outputs).eval()
    image = torch.rand(5, *shapes["image"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model({"image": image}).numpy()
    assert outputs.shape == (5, 6)
    scores = Task(job.task).scores(outputs)
    assert np.allclose(scores, softmax(outputs[:, :3], axis=1))
    # The export carries every output.
    path = export_onnx(model, shapes, tmp_path / "model.onnx")
    assert onnx_max_difference(model, shapes, path) < 1e-4

    # hepray predict: the class probabilities, then each pair head's probability of a over b.
    schema = OutputSchema(job, [])
    assert schema.scores[3:] == ["score_narrow_vs_mid", "score_narrow_vs_wide", "score_mid_vs_wide"]
    rows = schema.rows({ENTRY: np.arange(5), OUTPUT: outputs})
    assert np.allclose(rows["score_mid"], scores[:, 1], atol=1e-6)
    assert np.allclose(rows["score_narrow_vs_wide"], 1 / (1 + np.exp(-outputs[:, 4])), atol=1e-6)


def ranked_by_pairs_only(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Three-class outputs whose class logits are noise and whose pair logits separate every pair."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, n)
    class_logits = rng.normal(size=(n, 3))
    pair_logits = np.stack([np.where(truth == a, 1.0, np.where(truth == b, -1.0, 0.0)) for a, b in class_pairs(3)], 1)
    return np.hstack([class_logits, pair_logits + rng.uniform(-0.5, 0.5, (n, 3))]), truth


def test_pairwise_auc_of_a_model_with_pair_heads_is_its_pair_logits(tmp_path):
    outputs, truth = ranked_by_pairs_only()
    with_pairs = multiclass_metrics(outputs, truth, CLASSES)
    softmax_only = multiclass_metrics(outputs[:, :3], truth, CLASSES)
    for a, b in class_pairs(3):
        key = f"test_auc_{CLASSES[a]}_vs_{CLASSES[b]}"
        assert with_pairs[key] == 1.0 and softmax_only[key] < 0.7
    # Every other number reads the class logits only.
    assert with_pairs["test_auc_macro"] == softmax_only["test_auc_macro"]
    assert with_pairs["test_accuracy"] == softmax_only["test_accuracy"]
    with pytest.raises(ValueError, match=r"\[N, 3\] \(with pair heads \[N, 6\]\)"):
        multiclass_metrics(outputs[:, :5], truth, CLASSES)
    # The evaluation a run writes: the same numbers, and its plots drawn from the class logits.
    evaluated = evaluate_predictions("multiclass", outputs, truth, {}, CLASSES, {}, tmp_path / "evaluation")
    assert evaluated["test_auc_narrow_vs_mid"] == 1.0
    written = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())["plots"]
    assert {"roc_ovr.png", "confusion.png"} <= set(written)

    # The search report's re-scoring: the pair logit, oriented for either class as the signal.
    job, events = multiclass_job(tmp_path), {LABEL: truth, OUTPUT: outputs}
    keep = truth != 1
    narrow_wide = {LABEL: truth[keep], OUTPUT: outputs[keep]}
    assert pair_problems(job, narrow_wide, "narrow", "wide").point(None) == 1.0
    assert pair_problems(job, narrow_wide, "wide", "narrow").point(None) == 1.0
    without = multiclass_job(tmp_path, pair_heads=False)
    assert pair_problems(without, narrow_wide, "narrow", "wide").point(None) < 0.7
    assert headline_problems(job, events).point(None) == pytest.approx(with_pairs["test_auc_macro"])


def test_the_worst_pair_auc_is_reported_each_epoch_for_searches():
    """val_auc_pair_min, a search objective for closing every pair's gap: the lowest of the pair
    AUCs the evaluation reports, from the pair logits with pair heads, else the class logits."""
    outputs, truth = ranked_by_pairs_only()
    for pair_heads, columns in ((True, 6), (False, 3)):
        task = Task(TaskSpec(kind="multiclass", pair_heads=pair_heads))
        epoch = task.epoch_metrics(outputs[:, :columns], truth, "val")
        evaluated = multiclass_metrics(outputs[:, :columns], truth, CLASSES)
        pairs = [evaluated[f"test_auc_{CLASSES[a]}_vs_{CLASSES[b]}"] for a, b in class_pairs(3)]
        assert epoch["val_auc_pair_min"] == pytest.approx(min(pairs))
    assert (
        Task(TaskSpec(kind="multiclass", pair_heads=True)).epoch_metrics(outputs, truth, "val")["val_auc_pair_min"]
        == 1.0
    )


@pytest.mark.parametrize("task", [{"kind": "binary"}, {"kind": "regression"}])
def test_pair_heads_need_a_multiclass_task(tmp_path, task):
    raw = etaphi_job({"a": "a.root", "b": "b.root"}, target="x")
    raw["task"] = {**task, "pair_heads": True}
    message = f"task: pair_heads: a head per class pair needs a multiclass task, not {task['kind']}"
    with pytest.raises(SpecError, match=message):
        validate_job(raw, "job.yaml")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml")])
    assert_one_error_line(result, "job.yaml", "invalid job")
    assert message in result.output


def test_a_multiclass_job_with_pair_heads_trains_and_scores_every_pair(ray_session, tmp_path):
    for k, name in enumerate(CLASSES):
        energy, spread = [(4.0, 0.02), (3.0, 0.06), (2.0, 0.12)][k]
        write_tree(tmp_path / f"{name}.root", towers(200, 1000 * k, seed=k + 1, energy=energy, spread=spread))
    job = multiclass_job(tmp_path, label_smoothing=0.05)
    job.train = job.train.model_copy(update={"epochs": 1, "batch_size": 64})
    metrics = run_job(job, tmp_path / "run")
    for a, b in class_pairs(3):
        assert 0.0 <= metrics[f"test_auc_{CLASSES[a]}_vs_{CLASSES[b]}"] <= 1.0
    assert math.isfinite(metrics["val_auc_macro"]) and math.isfinite(metrics["test_auc_macro"])
    assert 0 <= metrics["onnx_max_abs_difference"] < 1e-3
