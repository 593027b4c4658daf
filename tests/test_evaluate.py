"""hepray.evaluate: metrics with known answers on synthetic data, bins, resolution fit, plots."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from hepray.evaluate import metrics, resolution
from hepray.evaluate.report import evaluate_predictions

CLASSES2 = ["bkg", "sig"]
CLASSES3 = ["ele", "pho", "had"]


def ev(task, outputs, truth, tmp_path, *, observers=None, class_names=CLASSES2, bins=None, **kw):
    kw.setdefault("make_plots", False)
    return evaluate_predictions(task, outputs, truth, observers or {}, class_names, bins or {}, tmp_path, **kw)


def gaussian_binary(rng, n, delta):
    y = rng.integers(0, 2, n)
    return rng.normal(0, 1, n) + delta * y, y


# ------------------------------------------------------------------ binary


def test_perfect_classifier(tmp_path):
    y = np.repeat([0, 1], 500)
    r = ev("binary", np.where(y == 1, 3.0, -3.0)[:, None], y, tmp_path)
    assert r["test_auc"] == 1.0
    assert r["test_accuracy"] == 1.0
    # FPR = 0 at every efficiency: rejection capped at N_bkg, never inf
    assert r["test_rej50"] == r["test_rej90"] == 500.0
    assert r["test_events"] == 1000 and r["test_events_sig"] == 500 and r["test_events_bkg"] == 500
    assert all(isinstance(v, float) for v in r.values())


def test_random_classifier_auc_half(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000)
    r = ev("binary", rng.normal(size=(20_000, 1)), y, tmp_path)
    assert abs(r["test_auc"] - 0.5) < 0.015
    assert abs(r["test_accuracy"] - 0.5) < 0.02
    assert abs(r["test_rej50"] - 2.0) < 0.15  # random: FPR = efficiency


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_gaussian_shift_auc(tmp_path, delta):
    rng = np.random.default_rng(1)
    s, y = gaussian_binary(rng, 40_000, delta)
    r = ev("binary", s[:, None], y, tmp_path)
    assert abs(r["test_auc"] - norm.cdf(delta / math.sqrt(2))) < 0.01
    # rejection at efficiency e: threshold t = delta + Phi^-1(1-e), FPR = 1 - Phi(t)
    for e in (0.5, 0.8, 0.9):
        expected = 1 / norm.sf(delta + norm.ppf(1 - e))
        assert r[f"test_rej{round(100 * e)}"] == pytest.approx(expected, rel=0.1)


def test_rejection_hand_computed(tmp_path):
    # signal scores 0.9, 0.6; background 0.8, 0.6, 0.3, 0.2 (0.6 is a tie)
    # ROC points (fpr, tpr): (0, 0), (0, .5), (.25, .5), (.5, 1), ...
    s = np.array([0.9, 0.6, 0.8, 0.6, 0.3, 0.2])
    y = np.array([1, 1, 0, 0, 0, 0])
    r = ev("binary", s[:, None], y, tmp_path)
    assert r["test_rej50"] == pytest.approx(4.0)  # FPR 0 -> capped at 1/N_bkg = 1/4
    assert r["test_rej80"] == pytest.approx(1 / 0.4)  # .25 + (.8-.5)/(1-.5) * .25
    assert r["test_rej90"] == pytest.approx(1 / 0.45)
    # exact ROC point: 2 of 4 signal above 0.75, 1 of 6 background -> rejection 6
    s2 = np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.5, 0.4, 0.3, 0.2, 0.1])
    y2 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert ev("binary", s2[:, None], y2, tmp_path)["test_rej50"] == pytest.approx(6.0)


def test_binary_baseline_keys(tmp_path):
    rng = np.random.default_rng(2)
    s, y = gaussian_binary(rng, 10_000, 2.0)
    base = rng.normal(0, 1, y.size) + 0.5 * y
    r = ev("binary", s[:, None], y, tmp_path, baselines={"b": base})
    assert {"baseline_b_auc", "baseline_b_rej50", "baseline_b_rej80", "baseline_b_rej90"} <= r.keys()
    assert r["baseline_b_auc"] == pytest.approx(roc_auc_score(y, base))
    assert r["baseline_b_auc"] < r["test_auc"]


# ------------------------------------------------------------------ multiclass


def multiclass_data(rng, n=6000, k=3):
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += 1.5
    return z, y


def test_multiclass_pairwise_macro_confusion(tmp_path):
    rng = np.random.default_rng(3)
    z, y = multiclass_data(rng)
    r = ev("multiclass", z, y, tmp_path, class_names=CLASSES3)
    p = softmax(z, axis=1)
    for a, b in combinations(range(3), 2):
        m = (y == a) | (y == b)
        expected = roc_auc_score(y[m] == a, p[m, a] / (p[m, a] + p[m, b]))
        assert r[f"test_auc_{CLASSES3[a]}_vs_{CLASSES3[b]}"] == pytest.approx(expected, abs=1e-12)
    ovr = [roc_auc_score(y == k, p[:, k]) for k in range(3)]
    for k, c in enumerate(CLASSES3):
        assert r[f"test_auc_{c}"] == pytest.approx(ovr[k])
    assert r["test_auc_macro"] == pytest.approx(np.mean(ovr))
    assert r["test_auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for t in CLASSES3:
        assert sum(r[f"test_confusion_{t}_{q}"] for q in CLASSES3) == pytest.approx(1.0)
    assert r["test_confusion_ele_pho"] == pytest.approx(np.mean(np.argmax(z[y == 0], 1) == 1))
    assert r["test_accuracy"] == pytest.approx(np.mean(np.argmax(z, 1) == y))


def test_multiclass_degenerate_bin(tmp_path):
    rng = np.random.default_rng(4)
    z, y = multiclass_data(rng, 600)
    x = np.where(y == 0, 1.0, 5.0)  # bin [0, 2) holds only class 0
    r = ev("multiclass", z, y, tmp_path, class_names=CLASSES3, observers={"x": x}, bins={"x": [0, 2, 10, 20]})
    sfx = "@x[0,2)"
    assert math.isnan(r["test_auc_ele" + sfx]) and math.isnan(r["test_auc_macro" + sfx])
    assert math.isnan(r["test_auc_ele_vs_pho" + sfx])
    assert math.isnan(r["test_confusion_pho_ele" + sfx])  # no true 'pho' in the bin
    assert r["test_events" + sfx] == np.sum(y == 0)
    assert r["test_events@x[10,20)"] == 0 and math.isnan(r["test_accuracy@x[10,20)"])
    assert not math.isnan(r["test_auc_pho_vs_had@x[2,10)"])


# ------------------------------------------------------------------ bins


def test_binned_keys_and_values(tmp_path):
    rng = np.random.default_rng(5)
    n = 8000
    pt = rng.uniform(0, 120, n)
    y = rng.integers(0, 2, n)
    s = rng.normal(0, 1, n) + y * pt / 40  # separation grows with pt
    r = ev("binary", s[:, None], y, tmp_path, observers={"ele_pt": pt}, bins={"ele_pt": [10, 30, 100]})
    for lo, hi in ((10, 30), (30, 100)):
        sfx = f"@ele_pt[{lo},{hi})"
        keys = {k for k in r if k.endswith(sfx)}
        assert keys == {
            f"test_{m}{sfx}"
            for m in ("events", "events_bkg", "events_sig", "auc", "accuracy", "rej50", "rej80", "rej90")
        }
        m = (pt >= lo) & (pt < hi)
        assert r["test_events" + sfx] == m.sum()
        assert r["test_auc" + sfx] == pytest.approx(roc_auc_score(y[m], s[m]))
        alone = ev("binary", s[m][:, None], y[m], tmp_path)
        assert r["test_rej90" + sfx] == alone["test_rej90"]
    assert r["test_auc@ele_pt[10,30)"] < r["test_auc@ele_pt[30,100)"]


def test_degenerate_binary_bin(tmp_path):
    y = np.array([1, 1, 1, 0, 1, 0])
    s = np.array([2.0, 1.0, 0.5, -1.0, 0.2, 0.1])
    x = np.array([1, 1, 1, 5, 5, 5])
    r = ev("binary", s[:, None], y, tmp_path, observers={"x": x}, bins={"x": [0, 2, 10, 20]}, baselines={"b": s})
    for k in ("test_auc", "test_rej50", "test_rej90", "baseline_b_auc", "baseline_b_rej80"):
        assert math.isnan(r[k + "@x[0,2)"])
    assert r["test_events@x[0,2)"] == 3 and r["test_accuracy@x[0,2)"] == 1.0
    assert r["test_events_bkg@x[0,2)"] == 0
    assert not math.isnan(r["test_auc@x[2,10)"])
    assert r["test_events@x[10,20)"] == 0 and math.isnan(r["test_accuracy@x[10,20)"])


def test_nonfinite_and_missing_observer(tmp_path):
    rng = np.random.default_rng(6)
    s, y = gaussian_binary(rng, 1000, 1.0)
    s[:7] = np.nan
    r = ev("binary", s[:, None], y, tmp_path, bins={"absent": [0, 1]})
    assert r["test_events_nonfinite"] == 7 and r["test_events"] == 993
    assert not any("@absent" in k for k in r)


def test_format_edge():
    assert metrics.bin_suffix("eta", -2.5, 0.0) == "@eta[-2.5,0)"
    assert metrics.bin_suffix("E", 1e6, float("inf")) == "@E[1000000,inf)"
    assert metrics.key_name("b jet") == "b_jet"


# ------------------------------------------------------------------ regression


def test_resolution_definitions():
    rng = np.random.default_rng(7)
    truth = rng.uniform(50, 100, 100_000)
    ratio = 1.02 + 0.05 * rng.normal(size=truth.size)
    s = resolution.response_summary(truth * ratio, truth)
    assert s["response_median"] == pytest.approx(1.02, abs=1e-3)
    for k in ("resolution_iqr", "resolution_rms", "resolution_sigma"):
        assert s[k] == pytest.approx(0.05 / 1.02, rel=0.02), k
    assert s["iqr_rel"] == pytest.approx(2 * norm.ppf(0.75) * 0.05 / 1.02, rel=0.02)
    # 10 % wide tails: the core sigma stays, the RMS grows
    tails = rng.random(truth.size) < 0.1
    ratio2 = np.where(tails, 1.02 + 0.4 * rng.normal(size=truth.size), ratio)
    s2 = resolution.response_summary(truth * ratio2, truth)
    assert s2["resolution_sigma"] == pytest.approx(0.05 / 1.02, rel=0.05)
    assert s2["resolution_rms"] > 2.5 * s2["resolution_sigma"]
    assert 0 < s2["resolution_sigma_err"] < 0.01 * s2["resolution_sigma"]


def calo_sample(rng, n, a, b, c, baseline_scale=1.3):
    """Energies log-uniform in 10-500 GeV; model smeared by a/sqrt(E) (+) b (+) c/E, baseline by
    ``baseline_scale`` times that."""
    energy = np.exp(rng.uniform(np.log(10), np.log(500), n))
    rel = resolution.calo_resolution(energy, a, b, c) / 100
    pred = energy * (1 + rel * rng.normal(size=n))
    base = energy * (1 + baseline_scale * rel * rng.normal(size=n))
    return pred, base, energy


@pytest.mark.parametrize("explicit_bins", [True, False])
def test_calo_fit_recovers_abc(tmp_path, explicit_bins):
    a, b, c = 18.7, 0.574, 111.0
    rng = np.random.default_rng(8)
    pred, base, energy = calo_sample(rng, 60_000, a, b, c)
    bins = {"E_true": list(np.geomspace(10, 500.01, 15))} if explicit_bins else {}
    r = ev(
        "regression",
        pred[:, None],
        energy,
        tmp_path,
        observers={"E_true": energy},
        class_names=[],
        bins=bins,
        baselines={"b": base},
        energy="E_true",
    )
    assert r["test_fit_a"] == pytest.approx(a, abs=1.5)
    assert r["test_fit_b"] == pytest.approx(b, abs=0.2)
    assert r["test_fit_c"] == pytest.approx(c, abs=8.0)
    for p, true in (("a", a), ("b", b), ("c", c)):
        err = r[f"test_fit_{p}_err"]
        assert 0 < err and abs(r[f"test_fit_{p}"] - true) < 4 * err
    # baseline: every term 1.3x larger
    assert r["baseline_b_fit_a"] == pytest.approx(1.3 * a, abs=2.0)
    assert r["baseline_b_fit_c"] == pytest.approx(1.3 * c, abs=10.0)
    assert r["test_rIQR_vs_b"] > 0.15
    # the energy bins also carry per-bin resolution keys
    ebins = [k for k in r if k.startswith("test_resolution_sigma@E_true[")]
    assert len(ebins) == (14 if explicit_bins else 8)
    assert all(np.isfinite(r[k]) for k in ebins)


def test_rIQR_sign(tmp_path):
    rng = np.random.default_rng(9)
    truth = rng.uniform(20, 200, 20_000)
    good = truth * (1 + 0.02 * rng.normal(size=truth.size))
    bad = truth * (1 + 0.04 * rng.normal(size=truth.size))
    better = ev("regression", good[:, None], truth, tmp_path, class_names=[], baselines={"b": bad})
    worse = ev("regression", bad[:, None], truth, tmp_path, class_names=[], baselines={"b": good})
    assert better["test_rIQR_vs_b"] == pytest.approx(0.5, abs=0.05)
    assert worse["test_rIQR_vs_b"] == pytest.approx(-1.0, abs=0.1)
    assert better["test_rIQR_vs_b"] == pytest.approx(1 - better["test_iqr_rel"] / better["baseline_b_iqr_rel"])
    assert "test_rIQR_vs_b" not in ev("regression", good[:, None], truth, tmp_path, class_names=[])


def test_regression_degenerate(tmp_path):
    truth = np.array([10.0, 20.0, 0.0])
    r = ev(
        "regression",
        np.array([[11.0], [19.0], [1.0]]),
        truth,
        tmp_path,
        class_names=[],
        observers={"E": truth},
        bins={"E": [0, 5, 100, 200]},
        energy="E",
    )
    assert r["test_mse"] == pytest.approx((1 + 1 + 1) / 3)
    assert math.isnan(r["test_resolution_sigma"])  # too few events for a core fit
    assert math.isnan(r["test_fit_a"])
    assert math.isnan(r["test_response_median@E[0,5)"])  # truth 0: no ratio
    assert r["test_events@E[100,200)"] == 0


def test_quantile_edges_cover():
    rng = np.random.default_rng(10)
    e = rng.uniform(10, 500, 5000)
    edges = resolution.quantile_edges(e, 8)
    assert len(edges) == 9 and np.all(np.diff(edges) > 0)
    assert edges[0] <= e.min() and edges[-1] > e.max()
    counts = np.histogram(e, edges)[0]
    assert counts.sum() == e.size and counts.min() > 500


# ------------------------------------------------------------------ plots


HISTORY = [
    {
        "epoch": i,
        "train_loss": 1 / (i + 1),
        "train_loss_eval": 0.9 / (i + 1),
        "val_loss": 1.1 / (i + 1),
        "val_auc": 0.6 + 0.01 * i,
        "train_auc": 0.62 + 0.01 * i,
        "lr": 1e-3,
    }
    for i in range(6)
]


def assert_plots(tmp_path, names):
    """Written and listed; what they show is compared with reference images in test_plots.py."""
    for name in names:
        assert (tmp_path / "plots" / name).is_file(), name
    summary = json.loads((tmp_path / "evaluation.json").read_text(), parse_constant=pytest.fail)
    assert set(names) <= set(summary["plots"])


def test_plots_binary(tmp_path):
    rng = np.random.default_rng(11)
    s, y = gaussian_binary(rng, 5000, 1.5)
    ev(
        "binary",
        s[:, None],
        y,
        tmp_path,
        baselines={"b": s + rng.normal(size=y.size)},
        history=HISTORY,
        make_plots=True,
    )
    assert_plots(tmp_path, ["roc.png", "score_hist.png", "loss.png", "metric.png"])


def test_plots_multiclass(tmp_path):
    z, y = multiclass_data(np.random.default_rng(12), 3000)
    ev("multiclass", z, y, tmp_path, class_names=CLASSES3, make_plots=True)
    assert_plots(tmp_path, ["roc_ovr.png", "confusion.png"])
    assert not (tmp_path / "plots" / "loss.png").exists()


def test_plots_regression(tmp_path):
    rng = np.random.default_rng(13)
    pred, base, energy = calo_sample(rng, 20_000, 18.7, 0.574, 111.0)
    r = ev(
        "regression",
        pred[:, None],
        energy,
        tmp_path,
        class_names=[],
        observers={"E_true": energy},
        baselines={"b": base},
        energy="E_true",
        history=HISTORY[:1],
        make_plots=True,
    )
    assert_plots(tmp_path, ["pred_vs_true.png", "response.png", "resolution_vs_energy.png", "loss.png"])
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    assert summary["metrics"]["test_fit_a"] == pytest.approx(r["test_fit_a"])
    assert len(summary["energy_scans"]["model"]["energy_mean"]) == 8
