"""End-to-end `hepray run` on a real local Ray: train, checkpoint, resume, evaluate, export."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from hepray.app.run import run_job
from hepray.evaluate.inference import load_model
from hepray.spec import JobSpec
from rootfiles import etaphi_job, towers, write_tree


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """Three classes that differ in tower energy and shower width, so a tiny CNN learns them."""
    root = tmp_path_factory.mktemp("classes")
    write_tree(root / "narrow.root", towers(600, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(root / "wide.root", towers(600, 1000, seed=2, energy=2.0, spread=0.12))
    write_tree(root / "mid.root", towers(600, 2000, seed=3, energy=3.0, spread=0.06))
    return root


def binary_job(root, **train) -> JobSpec:
    raw = etaphi_job(
        {"narrow": str(root / "narrow.root"), "wide": str(root / "wide.root")},
        split={"val": 0.2, "test": 0.3, "seed": 1},
    )
    raw["train"] = {"epochs": 2, "batch_size": 64, "lr": 3e-3, **train}
    raw["evaluate"] = {
        "bins": {"x": [0, 0.5, 1]},
        "baselines": {"sum": "-e_sum", "cuts": {"kind": "cuts", "vars": {"e_sum": "below"}}},
        "robustness": {"split_seed": 2, "norms": ["l1"]},
    }
    return JobSpec.model_validate(raw)


def test_binary_run_writes_everything_and_learns(ray_session, classes, tmp_path):
    metrics = run_job(binary_job(classes), tmp_path)
    assert metrics["test_auc"] > 0.8
    assert metrics["epochs_run"] == 2 and metrics["events_read"] == 1200
    assert metrics["events_skipped"] == 0
    # Baselines scored on the same test events; the wide class has less energy, so -e_sum separates.
    assert 0.6 < metrics["baseline_sum_auc"] < 1 and metrics["baseline_cuts_eff"] == pytest.approx(0.9, abs=0.06)
    assert {"baseline_cuts_rej", "test_rej_at_cuts", "baseline_sum_auc@x[0,0.5)"} <= set(metrics)
    # Robustness: frozen weights on another split and with another norm, and the change reported.
    assert metrics["robust_split_auc"] > 0.7 and metrics["robust_split_events"] != metrics["test_events"]
    assert metrics["robust_norm_l1_delta_auc"] == pytest.approx(metrics["robust_norm_l1_auc"] - metrics["test_auc"])
    assert (tmp_path / "evaluations" / "robust_norm_l1" / "plots" / "roc.png").exists()
    assert {"test_auc@x[0,0.5)", "test_auc@x[0.5,1)", "train_loss", "train_eval_loss", "val_loss", "val_auc"} <= set(
        metrics
    )
    assert 250 < metrics["test_events"] < 470
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test_auc"] == pytest.approx(metrics["test_auc"])
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2
    for name in ("job.yaml", "model.pt", "model.onnx", "plots/roc.png", "plots/score_hist.png", "plots/loss.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert list((tmp_path / "tensorboard").iterdir())

    # The ONNX export gives the PyTorch model's outputs: checked by the run, and here on other inputs.
    assert 0 <= metrics["onnx_max_abs_difference"] < 1e-3
    model, job = load_model(tmp_path / "model.pt")
    image = np.random.default_rng(0).exponential(1.0, (5, 1, 9, 9)).astype(np.float32)
    expected = model({"image": torch.from_numpy(image)}).detach().numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    assert np.allclose(session.run(None, {"image": image})[0], expected, atol=1e-4)

    # --resume continues from the latest checkpoint: epoch 0 is not trained again.
    resumed = run_job(binary_job(classes, epochs=3), tmp_path, resume=True)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert resumed["epochs_run"] == 3


def test_multiclass_on_two_workers_with_early_stopping(ray_session, classes, tmp_path):
    raw = etaphi_job({name: str(classes / f"{name}.root") for name in ("narrow", "mid", "wide")})
    raw["task"] = {"kind": "multiclass", "class_weights": [1.0, 1.0, 1.0]}
    # lr so small the validation loss cannot improve by the tolerance: patience 1 stops at epoch 2 of 6.
    raw["train"] = {
        "epochs": 6,
        "batch_size": 64,
        "lr": 1e-12,
        "optimizer": "sgd",
        "early_stopping": {"metric": "val_loss", "mode": "min", "patience": 1},
    }
    raw["scaling"] = {"num_workers": 2, "cpus_per_worker": 0.5}
    metrics = run_job(JobSpec.model_validate(raw), tmp_path)
    assert metrics["stopped_early"] == 1.0 and metrics["epochs_run"] == 2
    # The model and metrics are the best epoch's (0); history.json still has every epoch trained.
    assert metrics["best_epoch"] == 0
    assert [h["epoch"] for h in json.loads((tmp_path / "history.json").read_text())] == [0, 1]
    assert {"test_auc_macro", "test_auc_narrow_vs_wide", "test_confusion_mid_mid", "val_auc_macro"} <= set(metrics)
    assert (tmp_path / "plots" / "confusion.png").exists()


def test_regression_with_baseline(ray_session, classes, tmp_path):
    raw = etaphi_job([str(classes / "narrow.root"), str(classes / "wide.root")], target="e_sum", observers=["e_sum"])
    raw["data"]["inputs"]["image"]["norm"] = "none"
    raw["task"] = {"kind": "regression", "loss": "huber"}
    raw["train"] = {"epochs": 1, "batch_size": 64}
    raw["evaluate"] = {
        "baselines": {"sum": "1.0 * e_sum", "calib": {"kind": "linear", "expr": "0.5 * e_sum + 3"}},
        "energy": "e_sum",
        "samples": {"wide": str(classes / "wide.root")},
    }
    metrics = run_job(JobSpec.model_validate(raw), tmp_path)
    assert metrics["baseline_sum_response_median"] == pytest.approx(1.0)
    # The linear calibration, fitted on the train split, undoes the scale and offset.
    assert metrics["baseline_calib_response_median"] == pytest.approx(1.0, abs=0.01)
    assert np.isfinite(metrics["test_mse"]) and "test_resolution_sigma" in metrics and "test_rIQR_vs_sum" in metrics
    assert (tmp_path / "plots" / "resolution_vs_energy.png").exists()
    # An extra sample: all its events, scored by the model and the baselines.
    assert metrics["wide_events"] == 600 and metrics["wide_baseline_sum_response_median"] == pytest.approx(1.0)
    assert "wide_baseline_calib_fit_a" in metrics and "wide_delta_iqr_rel" in metrics
