"""Per-event weights in hepray.evaluate (issue 18): every number weighted, unweighted ones unchanged.

The properties checked: weighted AUCs are scikit-learn's with ``sample_weight``; events of weight
0 change nothing; an integer weight k counts as k copies of the event (exactly for ROC, AUC,
rejection, accuracy, histograms and confusion matrices; quantiles to within the spacing of
neighbouring values, see ``resolution.weighted_quantile``); negative weights are accepted; all-one
weights give exactly the unweighted numbers; the fitted baselines learn with the weights.
"""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from hepray.evaluate import plots, resolution
from hepray.evaluate.baselines import Baselines, column, fit_line, tune_cuts
from hepray.evaluate.report import evaluate_predictions, unweighted_key
from hepray.spec import JobSpec
from hepray.train.roc import safe_auc
from rootfiles import etaphi_job

CLASSES2 = ["bkg", "sig"]
CLASSES3 = ["ele", "pho", "had"]
WEIGHT_KEYS = ("weighted", "test_weight_sum")  # keys only a weighted evaluation has (with class/bin suffixes)


def ev(task, outputs, truth, tmp_path, *, observers=None, class_names=CLASSES2, bins=None, **kw):
    kw.setdefault("make_plots", False)
    return evaluate_predictions(task, outputs, truth, observers or {}, class_names, bins or {}, tmp_path, **kw)


def assert_same(a: dict, b: dict, skip=WEIGHT_KEYS):
    """Identical keys and numbers (NaN == NaN), apart from keys starting with ``skip``."""
    keys = {k for k in a.keys() | b.keys() if not k.startswith(skip)}
    assert keys <= a.keys() and keys <= b.keys(), keys ^ (a.keys() & b.keys())
    diff = {k: (a[k], b[k]) for k in keys if not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))}
    assert not diff, dict(list(diff.items())[:8])


def binary_sample(rng, n=4000):
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + 1.2 * y
    x = rng.uniform(0, 100, n)
    return s, y, x, {"b": s + rng.normal(size=n), "cut": s + 0.3 * rng.normal(size=n) > 0.5}


def multiclass_sample(rng, n=3000):
    y = rng.integers(0, 3, n)
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += 1.3
    return z, y, rng.uniform(0, 100, n)


def regression_sample(rng, n=20_000):
    energy = np.exp(rng.uniform(np.log(10), np.log(500), n))
    rel = resolution.calo_resolution(energy, 18.7, 0.574, 111.0) / 100
    pred = energy * (1 + rel * rng.normal(size=n))
    base = energy * (1.02 + 1.3 * rel * rng.normal(size=n))
    return pred, energy, base


def all_tasks(rng):
    """(task, outputs, truth, keyword arguments) of a binary, a multiclass and a regression evaluation
    with bins, baselines (a cut among them) and, for the regression, the energy scan."""
    s, y, x, base = binary_sample(rng)
    z, yc, xc = multiclass_sample(rng)
    pred, energy, rbase = regression_sample(rng, 8000)
    bins = {"x": [0, 30, 60, 100]}
    return [
        ("binary", s[:, None], y, dict(observers={"x": x}, bins=bins, baselines=base)),
        (
            "multiclass",
            z,
            yc,
            dict(observers={"x": xc}, bins=bins, class_names=CLASSES3, baselines={"bm": z + rng.normal(size=z.shape)}),
        ),
        (
            "regression",
            pred[:, None],
            energy,
            dict(observers={"E": energy}, class_names=[], energy="E", baselines={"c": rbase}),
        ),
    ]


def append(kw: dict, extra: dict) -> dict:
    """``kw`` with its observers and baselines extended by ``extra``'s."""
    out = dict(kw)
    out["observers"] = {k: np.concatenate([v, extra["observers"][k]]) for k, v in kw["observers"].items()}
    out["baselines"] = {k: np.concatenate([v, extra["baselines"][k]]) for k, v in kw["baselines"].items()}
    return out


# ------------------------------------------------------------------ weighted quantile


def test_weighted_quantile_equal_weights_is_numpys_quantile():
    rng = np.random.default_rng(0)
    q16 = resolution.Q16 / 100
    q = np.array([0.0, q16, 0.25, 0.5, 0.75, resolution.Q84 / 100, 0.9, 1.0])
    for n in (1, 2, 5, 100, 1001):
        x = rng.normal(size=n)
        for c in (1.0, 0.37, 3.0, 1e-9):
            got = resolution.weighted_quantile(x, np.full(n, c), q)
            assert np.array_equal(got, np.quantile(x, q)), (n, c)
            assert resolution.weighted_quantile(x, np.full(n, c), q16) == np.quantile(x, q16)
    x = rng.normal(size=50)
    assert np.array_equal(resolution.weighted_quantile(x, None, q), np.quantile(x, q))


def test_weighted_quantile_definition():
    # positions: middles of the weights 0.5, 2, 3.5 scaled to 0, 0.5, 1
    x, w = np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0, 2.0])
    assert resolution.weighted_quantile(x, w, [0.0, 0.25, 0.5, 0.75, 1.0]) == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    # weights scale freely; zero-weight values are not there
    assert resolution.weighted_quantile(x, 10 * w, 0.25) == pytest.approx(1.5)
    assert resolution.weighted_quantile(np.append(x, -50.0), np.append(w, 0.0), 0.25) == pytest.approx(1.5)
    assert math.isnan(resolution.weighted_quantile(x, -w, 0.5))  # total weight <= 0
    assert np.isnan(resolution.weighted_quantile(x, np.zeros(3), [0.1, 0.9])).all()


def test_weighted_quantile_integer_weights_approximate_repetition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20_000)
    w = rng.integers(1, 4, x.size)
    q = np.array([0.05, resolution.Q16 / 100, 0.25, 0.5, 0.75, 0.95])
    got = resolution.weighted_quantile(x, w, q)
    expected = np.quantile(np.repeat(x, w), q)
    assert got == pytest.approx(expected, abs=2e-3)  # neighbouring values here are ~1e-4 apart


def test_weighted_quantile_negative_weights():
    rng = np.random.default_rng(2)
    x = rng.normal(size=5000)
    w = np.where(rng.random(x.size) < 0.1, -1.0, 1.0)
    q = resolution.weighted_quantile(x, w, [0.25, 0.5, 0.75])
    assert np.all(np.isfinite(q)) and np.all(np.diff(q) >= 0)
    # an event cancelled by an identical event of weight -1 is as good as absent
    twin = np.concatenate([x, x[:100]]), np.concatenate([np.ones(x.size), -np.ones(100)])
    assert resolution.weighted_quantile(*twin, 0.5) == pytest.approx(np.quantile(x[100:], 0.5), abs=2e-3)


# ------------------------------------------------------------------ classification


def test_weighted_binary_is_sklearns(tmp_path):
    rng = np.random.default_rng(3)
    s, y, _, base = binary_sample(rng)
    w = rng.uniform(0.2, 3.0, y.size)
    r = ev("binary", s[:, None], y, tmp_path, weights=w, baselines={"b": base["b"]})
    assert r["test_auc"] == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-14)
    assert r["baseline_b_auc"] == pytest.approx(roc_auc_score(y, base["b"], sample_weight=w), abs=1e-14)
    assert r["test_accuracy"] == pytest.approx(np.sum(w * ((s > 0) == y)) / np.sum(w))
    assert r["weighted"] == 1.0 and r["test_weight_sum"] == pytest.approx(w.sum())
    assert r["test_weight_sum_sig"] == pytest.approx(w[y == 1].sum()) and r["test_events"] == y.size
    # rejection at 50 %: the weighted FPR where the weighted TPR reaches 0.5
    fpr, tpr, _ = roc_curve(y, s, sample_weight=w)
    assert r["test_rej50"] == pytest.approx(1 / np.interp(0.5, tpr, fpr), rel=1e-9)
    assert ev("binary", s[:, None], y, tmp_path)["weighted"] == 0.0


def test_weights_move_the_auc(tmp_path):
    # half the signal is indistinguishable from background: weighting it down raises the AUC
    rng = np.random.default_rng(4)
    n = 20_000
    y = rng.integers(0, 2, n)
    hidden = (y == 1) & (rng.random(n) < 0.5)
    s = rng.normal(size=n) + 2.0 * ((y == 1) & ~hidden)
    plain = ev("binary", s[:, None], y, tmp_path)["test_auc"]
    weighted = ev("binary", s[:, None], y, tmp_path, weights=np.where(hidden, 0.1, 1.0))["test_auc"]
    assert weighted > plain + 0.15


def test_weighted_multiclass_is_sklearns(tmp_path):
    rng = np.random.default_rng(5)
    z, y, _ = multiclass_sample(rng)
    w = rng.uniform(0.2, 3.0, y.size)
    r = ev("multiclass", z, y, tmp_path, class_names=CLASSES3, weights=w)
    p = softmax(z, axis=1)
    ovr = [roc_auc_score(y == k, p[:, k], sample_weight=w) for k in range(3)]
    for k, c in enumerate(CLASSES3):
        assert r[f"test_auc_{c}"] == pytest.approx(ovr[k], abs=1e-14)
    assert r["test_auc_macro"] == pytest.approx(np.mean(ovr))
    for a, b in combinations(range(3), 2):
        m = (y == a) | (y == b)
        expected = roc_auc_score(y[m] == a, p[m, a] / (p[m, a] + p[m, b]), sample_weight=w[m])
        assert r[f"test_auc_{CLASSES3[a]}_vs_{CLASSES3[b]}"] == pytest.approx(expected, abs=1e-12)
    cm = confusion_matrix(y, np.argmax(z, 1), sample_weight=w)
    for i, t in enumerate(CLASSES3):
        for j, q in enumerate(CLASSES3):
            assert r[f"test_confusion_{t}_{q}"] == pytest.approx(cm[i, j] / cm[i].sum())
    assert r["test_accuracy"] == pytest.approx(np.sum(w * (np.argmax(z, 1) == y)) / w.sum())


def test_integer_weights_are_repeated_events(tmp_path):
    rng = np.random.default_rng(6)
    s, y, x, base = binary_sample(rng)
    w = rng.integers(1, 4, y.size)
    kw = dict(observers={"x": x}, bins={"x": [0, 50, 100]}, baselines=base)
    weighted = ev("binary", s[:, None], y, tmp_path, weights=w, **kw)
    rep = np.repeat(np.arange(y.size), w)
    repeated = ev(
        "binary",
        s[rep][:, None],
        y[rep],
        tmp_path,
        observers={"x": x[rep]},
        bins=kw["bins"],
        baselines={k: v[rep] for k, v in base.items()},
    )
    assert_same(weighted, repeated, skip=WEIGHT_KEYS + ("test_events",))
    # score histograms
    edges = np.linspace(0, 1, 51)
    p = 1 / (1 + np.exp(-s))
    assert np.array_equal(plots.score_histogram(p, edges, w), plots.score_histogram(p[rep], edges))
    # multiclass: AUCs and confusion fractions
    z, yc, _ = multiclass_sample(rng)
    wc = rng.integers(1, 4, yc.size)
    repc = np.repeat(np.arange(yc.size), wc)
    assert_same(
        ev("multiclass", z, yc, tmp_path, class_names=CLASSES3, weights=wc),
        ev("multiclass", z[repc], yc[repc], tmp_path, class_names=CLASSES3),
        skip=WEIGHT_KEYS + ("test_events",),
    )


def test_integer_weights_are_repeated_events_regression(tmp_path):
    rng = np.random.default_rng(7)
    pred, energy, _ = regression_sample(rng)
    w = rng.integers(1, 4, energy.size)
    rep = np.repeat(np.arange(energy.size), w)
    weighted = ev("regression", pred[:, None], energy, tmp_path, class_names=[], weights=w)
    repeated = ev("regression", pred[rep][:, None], energy[rep], tmp_path, class_names=[])
    for key in ("response_median", "resolution_iqr", "iqr_rel"):  # weighted quantiles: to the values' spacing
        assert weighted[f"test_{key}"] == pytest.approx(repeated[f"test_{key}"], rel=1e-3), key
    for key in ("mse", "resolution_rms"):  # weighted means: exact up to rounding
        assert weighted[f"test_{key}"] == pytest.approx(repeated[f"test_{key}"], rel=1e-10), key
    # the fits see the same histogram shapes, with larger (weighted) errors
    for key in ("resolution_sigma", "cb_sigma"):
        assert weighted[f"test_{key}"] == pytest.approx(repeated[f"test_{key}"], rel=0.03), key


# ------------------------------------------------------------------ invariances


@pytest.mark.parametrize("index", [0, 1, 2], ids=["binary", "multiclass", "regression"])
def test_zero_weight_events_change_nothing(tmp_path, index):
    rng = np.random.default_rng(8)
    task, outputs, truth, kw = all_tasks(rng)[index]
    w = rng.uniform(0.5, 2.0, truth.size)
    reference = ev(task, outputs, truth, tmp_path, weights=w, unweighted=False, **kw)
    k = 500  # appended events with arbitrary scores, truth and observers, weight 0
    other = all_tasks(np.random.default_rng(9))[index]
    more = ev(
        task,
        np.concatenate([outputs, other[1][:k] * 7 - 3]),
        np.concatenate([truth, other[2][:k]]),
        tmp_path,
        weights=np.concatenate([w, np.zeros(k)]),
        **append(
            kw,
            {
                "observers": {n: v[:k] for n, v in other[3]["observers"].items()},
                "baselines": {n: v[:k] for n, v in other[3]["baselines"].items()},
            },
        ),
    )
    assert_same(reference, more, skip=())


@pytest.mark.parametrize("index", [0, 1, 2], ids=["binary", "multiclass", "regression"])
def test_unit_weights_are_exactly_unweighted(tmp_path, index):
    task, outputs, truth, kw = all_tasks(np.random.default_rng(10))[index]
    plain = ev(task, outputs, truth, tmp_path, **kw)
    ones = ev(task, outputs, truth, tmp_path, weights=np.ones(truth.size), **kw)
    assert plain["weighted"] == 0.0 and ones["weighted"] == 1.0
    assert not any(k.startswith("test_weight_sum") for k in plain)
    assert_same(plain, ones)


def test_unit_weights_exact_in_the_pieces():
    rng = np.random.default_rng(11)
    pred, energy, _ = regression_sample(rng, 5000)
    ones = np.ones(energy.size)
    assert resolution.response_summary(pred, energy) == resolution.response_summary(pred, energy, ones)
    ratio = pred / energy
    assert resolution.crystal_ball_fit(ratio) == resolution.crystal_ball_fit(ratio, weights=ones)
    assert resolution.quantile_edges(energy) == resolution.quantile_edges(energy, weights=ones)
    x = rng.exponential(size=(3000, 2))
    sig = rng.random(3000) < 0.5
    assert np.array_equal(tune_cuts(x, sig, 0.8), tune_cuts(x, sig, 0.8, np.ones(3000)))
    assert np.array_equal(fit_line(energy, pred), fit_line(energy, pred, ones))


def test_unweighted_keys(tmp_path):
    rng = np.random.default_rng(12)
    s, y, x, base = binary_sample(rng)
    w = rng.uniform(0.0, 2.0, y.size)
    w[:50] = 0.0
    kw = dict(observers={"x": x}, bins={"x": [0, 50, 100]}, baselines=base)
    both = ev("binary", s[:, None], y, tmp_path, weights=w, unweighted=True, **kw)
    plain = ev("binary", s[:, None], y, tmp_path, **kw)
    weighted = ev("binary", s[:, None], y, tmp_path, weights=w, **kw)
    assert unweighted_key("baseline_b_rej50") == "baseline_unweighted_b_rej50"
    assert both["test_unweighted_auc"] == plain["test_auc"]
    assert both["test_unweighted_auc@x[0,50)"] == plain["test_auc@x[0,50)"]
    assert both["baseline_unweighted_b_auc"] == plain["baseline_b_auc"]
    assert both["test_unweighted_events"] == y.size and both["test_events"] == y.size - 50
    expected = {
        **weighted,
        **{unweighted_key(k): v for k, v in plain.items() if k not in ("weighted", "test_events_nonfinite")},
    }
    assert_same(both, expected, skip=())
    assert not any("unweighted" in k for k in plain) and not any("unweighted" in k for k in weighted)
    assert_same(ev("binary", s[:, None], y, tmp_path, unweighted=True, **kw), plain, skip=())


def test_weight_shape_and_nonfinite(tmp_path):
    rng = np.random.default_rng(13)
    s, y, _, _ = binary_sample(rng, 1000)
    with pytest.raises(ValueError, match="weights have 999 values for 1000 events"):
        ev("binary", s[:, None], y, tmp_path, weights=np.ones(999))
    w = np.ones(y.size)
    w[:3] = np.nan
    r = ev("binary", s[:, None], y, tmp_path, weights=w)
    assert r["test_events_nonfinite"] == 3 and r["test_events"] == 997


# ------------------------------------------------------------------ negative weights


def test_negative_weights_accepted(tmp_path):
    rng = np.random.default_rng(14)
    for task, outputs, truth, kw in all_tasks(rng):
        w = np.where(rng.random(truth.size) < 0.15, -1.0, 1.0) * rng.uniform(0.5, 1.5, truth.size)
        r = ev(task, outputs, truth, tmp_path, weights=w, unweighted=True, make_plots=True, **kw)
        headline = {"binary": "test_auc", "multiclass": "test_auc_macro", "regression": "test_iqr_rel"}[task]
        assert np.isfinite(r[headline]), task
        assert 0 < r[headline] < 1
    # the AUC is sklearn's formula: the trapezoid under the weighted ROC, even where it steps back
    s, y, _, _ = binary_sample(rng)
    w = np.where(rng.random(y.size) < 0.2, -1.0, 1.0)
    fpr, tpr, _ = roc_curve(y, s, sample_weight=w)
    assert np.any(np.diff(fpr) < 0)  # sklearn's auc() would refuse this curve
    r = ev("binary", s[:, None], y, tmp_path, weights=w)
    assert r["test_auc"] == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-14)
    assert all(np.isfinite(r[f"test_rej{e}"]) for e in (50, 80, 90))


def test_bins_with_no_positive_weight_are_nan(tmp_path):
    rng = np.random.default_rng(15)
    s, y, x, _ = binary_sample(rng, 2000)
    w = np.where(x < 50, 1.0, -1.0)  # the upper bin weighs < 0
    r = ev("binary", s[:, None], y, tmp_path, weights=w, observers={"x": x}, bins={"x": [0, 50, 100]})
    assert np.isfinite(r["test_auc@x[0,50)"])
    for key in ("test_auc", "test_accuracy", "test_rej50"):
        assert math.isnan(r[key + "@x[50,100)"]), key
    pred, energy, _ = regression_sample(rng, 4000)
    w = np.where(energy < 100, 1.0, -0.5)
    r = ev(
        "regression",
        pred[:, None],
        energy,
        tmp_path,
        class_names=[],
        weights=w,
        observers={"E": energy},
        bins={"E": [10, 100, 500]},
    )
    assert np.isfinite(r["test_iqr_rel@E[10,100)"]) and math.isnan(r["test_iqr_rel@E[100,500)"])
    assert math.isnan(r["test_cb_sigma@E[100,500)"]) and math.isnan(r["test_mse@E[100,500)"])


# ------------------------------------------------------------------ energy scan and plots


def test_weighted_energy_scan_and_plots(tmp_path):
    rng = np.random.default_rng(16)
    pred, energy, base = regression_sample(rng, 40_000)
    # events above 100 GeV get 4x the weight: the per-bin widths stay, the fit still finds a, b, c
    w = np.where(energy > 100, 4.0, 1.0)
    r = ev(
        "regression",
        pred[:, None],
        energy,
        tmp_path,
        class_names=[],
        weights=w,
        baselines={"c": base},
        observers={"E": energy},
        energy="E",
        make_plots=True,
    )
    assert r["test_fit_a"] == pytest.approx(18.7, abs=2.0)
    assert r["test_fit_c"] == pytest.approx(111.0, abs=12.0)
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    assert summary["weighted"] is True
    scan = summary["energy_scans"]["model"]
    assert sum(scan["weight_sum"]) == pytest.approx(w.sum()) and sum(scan["events"]) == energy.size
    # equal-weight energy bins: every bin holds about 1/8 of the weight
    assert np.allclose(scan["weight_sum"], w.sum() / 8, rtol=0.05)
    assert {"pred_vs_true.png", "response.png", "resolution_vs_energy.png"} <= set(summary["plots"])
    s, y, _, b = binary_sample(rng)
    ev("binary", s[:, None], y, tmp_path / "bin", weights=rng.uniform(0, 2, y.size), baselines=b, make_plots=True)
    assert (tmp_path / "bin" / "plots" / "roc.png").is_file() and (
        tmp_path / "bin" / "plots" / "score_hist.png"
    ).is_file()
    z, yc, _ = multiclass_sample(rng)
    ev("multiclass", z, yc, tmp_path / "mc", class_names=CLASSES3, weights=rng.uniform(0, 2, yc.size), make_plots=True)
    assert (tmp_path / "mc" / "plots" / "confusion.png").is_file()


# ------------------------------------------------------------------ baselines


def job_with(baselines: dict, task: str = "binary") -> JobSpec:
    raw = etaphi_job(
        {"a": "a.root", "b": "b.root"} if task == "binary" else ["a.root"],
        **({} if task == "binary" else {"target": "e_sum"}),
    )
    raw["evaluate"] = {"baselines": baselines}
    if task == "regression":
        raw["task"] = {"kind": "regression"}
    return JobSpec.model_validate(raw)


def test_cut_tuned_with_weights():
    # signal: a quarter of the weight in [0, 1), three quarters in [2, 3): 50 % of the *weighted* signal
    # needs a third of the upper group, while 50 % of the events is the lower group alone
    rng = np.random.default_rng(17)
    n = 20_000
    upper = np.arange(n) >= n // 2
    x = np.where(upper, rng.uniform(2, 3, n), rng.uniform(0, 1, n))[:, None]
    signal = np.ones(n, dtype=bool)
    w = np.where(upper, 3.0, 1.0)
    plain = tune_cuts(x, signal, 0.5)[0]
    weighted = tune_cuts(x, signal, 0.5, w)[0]
    assert 1.0 < plain < 2.0  # between the groups: half the events
    assert weighted == pytest.approx(2 + 1 / 3, abs=0.02)
    assert np.sum(w * (x[:, 0] <= weighted)) / w.sum() == pytest.approx(0.5, abs=0.002)
    # integer weights: as if the upper events were there three times
    repeated = tune_cuts(np.repeat(x, w.astype(int), axis=0), signal.repeat(w.astype(int)), 0.5)[0]
    assert weighted == pytest.approx(repeated, abs=1e-3)


def mislabelled_batch(rng, n=3000):
    """Clean signal/background in (width, iso), plus as many copies with the labels flipped; the
    flipped events carry weight 0, so only a weighted fit sees the clean sample."""
    label = rng.integers(0, 2, n)
    width = rng.normal(1.0 - 0.6 * label, 0.3)
    iso = rng.exponential(1.0 - 0.6 * label)
    clean = {"label": label, column("width"): width, column("iso"): iso}
    batch = {k: np.concatenate([v, 1 - v if k == "label" else v]) for k, v in clean.items()}
    batch["weight"] = np.repeat([1.0, 0.0], n)
    return clean, batch


def test_fitted_classifier_baselines_use_the_weights():
    rng = np.random.default_rng(18)
    clean, batch = mislabelled_batch(rng)
    job = job_with(
        {
            "cuts": {"kind": "cuts", "vars": {"width": "below", "iso": "below"}, "efficiency": 0.9},
            "bdt": {"kind": "gbdt", "features": ["width", "iso"], "max_iter": 50},
        }
    )
    weighted = Baselines(job, batch).apply(clean)
    unweighted = Baselines(job, {k: v for k, v in batch.items() if k != "weight"}).apply(clean)
    y = clean["label"] == 1
    assert weighted["cuts"][y].mean() == pytest.approx(0.9, abs=0.015)  # the efficiency on the weighted (clean) signal
    assert weighted["cuts"][~y].mean() < 0.8 * unweighted["cuts"][~y].mean()
    assert safe_auc(y, weighted["bdt"]) > 0.9
    assert safe_auc(y, weighted["bdt"]) > safe_auc(y, unweighted["bdt"]) + 0.1
    # zero-weight events in the fit: the cuts are those of the clean sample alone
    clean_only = Baselines(job, clean).apply(clean)
    assert np.array_equal(weighted["cuts"], clean_only["cuts"])


def test_linear_baseline_uses_the_weights():
    rng = np.random.default_rng(19)
    truth = rng.uniform(10, 100, 4000)
    good = truth / 1.25 * (1 + 0.02 * rng.normal(size=truth.size))
    bad = truth / 2.0  # another calibration, weight 0 (or cancelled by weight -1 copies)
    measured = np.concatenate([good, bad])
    batch = {
        "target": np.concatenate([truth, truth]),
        column("e_sum"): measured,
        "weight": np.repeat([1.0, 0.0], truth.size),
    }
    job = job_with({"calib": {"kind": "linear", "expr": "e_sum"}}, task="regression")
    slope, intercept = Baselines(job, batch).fitted["calib"]
    assert slope == pytest.approx(np.polyfit(good, truth, 1)[0], rel=1e-9)
    unweighted = Baselines(job, {k: v for k, v in batch.items() if k != "weight"}).fitted["calib"]
    assert np.median(np.polyval([slope, intercept], good) / truth) == pytest.approx(1.0, abs=0.005)
    assert np.median(np.polyval(unweighted, good) / truth) > 1.1  # pulled by the other calibration
    # negative weights: bad events entered twice, +1 and -1, cancel
    x = np.concatenate([good, bad, bad])
    y = np.concatenate([truth, truth, truth])
    w = np.concatenate([np.ones(truth.size), np.ones(truth.size), -np.ones(truth.size)])
    assert fit_line(x, y, w) == pytest.approx(np.polyfit(good, truth, 1), rel=1e-6)


def test_weighted_expression_baseline_scored_with_weights(tmp_path):
    rng = np.random.default_rng(20)
    s, y, _, base = binary_sample(rng)
    w = rng.uniform(0.1, 5.0, y.size)
    r = ev("binary", s[:, None], y, tmp_path, weights=w, baselines={"b": base["b"], "cut": base["cut"]})
    assert r["baseline_b_auc"] == pytest.approx(roc_auc_score(y, base["b"], sample_weight=w), abs=1e-14)
    sig = y == 1
    assert r["baseline_cut_eff"] == pytest.approx(np.sum(w[sig] * base["cut"][sig]) / w[sig].sum())
    fake = np.sum(w[~sig] * base["cut"][~sig]) / w[~sig].sum()
    assert r["baseline_cut_rej"] == pytest.approx(1 / fake)
