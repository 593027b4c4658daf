"""Every plot of hepray.evaluate.plots compared with a committed reference image (issue 16).

Each plotting function is called on small fixed inputs (``np.random.RandomState``, whose stream numpy
keeps frozen across versions), written to ``tmp_path`` and compared with
``tests/reference_plots/<name>.png`` by ``matplotlib.testing.compare.compare_images``: the RMS of the
per-pixel difference (0-255 scale) must stay within ``TOL``. ``test_altered_plot_fails`` shows that a
moved curve, a changed label and a changed colour each fail the comparison.

Rendering is made reproducible here, not changed: Agg backend and the mplhep ROOT style as plots.py
sets them, fonts from ``mplhep_data`` (installed with mplhep, not the system's), matplotlib's default
rcParams under that style (a user matplotlibrc is ignored), no font hinting (as matplotlib's own
image tests; the one rendering setting that differs from a training run's plots), and ``plots.DPI`` lowered to ``DPI`` = 40 so each reference stays under 30 KB (the
images are RGBA, the ROOT style saves them transparent; at 50 dpi the ROC plots were 30-36 KB).

Regenerate the references after an intended change of a plot, look at them, then commit them::

    HEPRAY_UPDATE_PLOTS=1 .venv/bin/python -m pytest -q tests/test_plots.py

With ``HEPRAY_UPDATE_PLOTS=1`` every image is written to ``tests/reference_plots/`` (then compared
with itself); without it a missing reference is a failure. On a failure compare_images leaves
``<name>-failed-diff.png`` beside the new image in the test's tmp_path. An upgrade of matplotlib or
mplhep (neither is pinned) that restyles the plots fails here too: look, then regenerate.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from cycler import cycler
from matplotlib.testing.compare import compare_images
from matplotlib.testing.exceptions import ImageComparisonFailure

from hepray.evaluate import plots, resolution  # sets the Agg backend

REFERENCE_DIR = Path(__file__).parent / "reference_plots"
UPDATE = os.environ.get("HEPRAY_UPDATE_PLOTS", "") not in ("", "0")
DPI = 40
TOL = 1.0  # RMS over pixels, 0-255 scale: a re-render gives 0, each alteration below 5.5 or more
MAX_BYTES = 30_000

CLASSES2 = ["bkg", "sig"]
CLASSES3 = ["ele", "pho", "had"]


@pytest.fixture(autouse=True)
def _reproducible_rendering(monkeypatch):
    monkeypatch.setattr(plots, "DPI", DPI)
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # no user matplotlibrc, no rcParams left over by another test
        matplotlib.rcParams["text.hinting"] = "none"
        yield


# ------------------------------------------------------------------ fixed inputs


def binary_inputs(baseline_noise=1.0):
    rs = np.random.RandomState(16)
    y = rs.randint(0, 2, 2000)
    s = rs.normal(0, 1, y.size) + 1.5 * y
    return s, y, {"baseline": s + baseline_noise * rs.normal(0, 1, y.size)}


def multiclass_inputs():
    rs = np.random.RandomState(17)
    y = rs.randint(0, 3, 1500)
    z = rs.normal(0, 1, (y.size, 3))
    z[np.arange(y.size), y] += 1.5
    return z, y


A, B, C = 18.7, 0.574, 111.0  # calorimeter resolution terms (% sqrt(GeV), %, % GeV)


def regression_inputs(scale=1.0):
    rs = np.random.RandomState(18)
    energy = np.exp(rs.uniform(np.log(10), np.log(500), 5000))
    rel = resolution.calo_resolution(energy, A, B, C) / 100
    pred = scale * energy * (1 + rel * rs.normal(size=energy.size))
    base = energy * (1.02 + 1.3 * rel * rs.normal(size=energy.size))
    return pred, energy, {"baseline": base}


def energy_scans():
    """Two scans written out (no fit run here: the plot, not the fit, is under test)."""
    edges = list(np.geomspace(10, 500, 9))
    energy = np.sqrt(np.multiply(edges[:-1], edges[1:]))
    scans = {}
    for name, k, shift in (("model", 1.0, 0.0), ("baseline", 1.3, 0.02)):
        sigma = k * resolution.calo_resolution(energy, A, B, C) / 100
        scans[name] = resolution.EnergyScan(
            edges=edges,
            energy=energy,
            events=np.full(energy.size, 600),
            response_median=1 + shift - 0.03 * np.log10(energy / 100),
            sigma_rel=sigma,
            sigma_rel_err=0.04 * sigma,
            iqr_rel68=1.1 * sigma,
            rms_rel=1.3 * sigma,
            fit={"fit_a": k * A, "fit_b": k * B, "fit_c": k * C},
        )
    return scans


def history(val_loss_bump=1.0):
    return [
        {
            "epoch": i,
            "train_loss": 1 / (i + 1),
            "train_loss_eval": 0.9 / (i + 1),
            "val_loss": 1.1 / (i + 1) * (val_loss_bump if i == 3 else 1.0),
            "val_auc": 0.6 + 0.01 * i,
            "train_auc": 0.62 + 0.01 * i,
            "val_accuracy": 0.55 + 0.02 * i - 0.002 * i * i,
            "lr": 1e-3,
        }
        for i in range(8)
    ]


PLOTS = {
    "roc": lambda p: plots.roc(p, *binary_inputs()),
    "score_hist": lambda p: plots.score_hist(p, *binary_inputs()[:2], CLASSES2),
    "roc_ovr": lambda p: plots.roc_ovr(p, *multiclass_inputs(), CLASSES3),
    "confusion": lambda p: plots.confusion(p, *multiclass_inputs(), CLASSES3),
    "pred_vs_true": lambda p: plots.pred_vs_true(p, *regression_inputs()[:2], label="energy"),
    "response": lambda p: plots.response(p, *regression_inputs()),
    "resolution_vs_energy": lambda p: plots.resolution_vs_energy(p, energy_scans()),
    "response_vs_energy": lambda p: plots.response_vs_energy(p, energy_scans()),
    "loss": lambda p: plots.loss(p, history()),
    "metric": lambda p: plots.metric(p, history(), plots.metric_keys(history())),
}


# ------------------------------------------------------------------ comparison


def compare(expected: Path, actual: Path) -> dict | None:
    """None when within TOL, else compare_images' report (with 'rms'; inf when the sizes differ)."""
    try:
        return compare_images(str(expected), str(actual), tol=TOL, in_decorator=True)
    except ImageComparisonFailure as e:  # raised for images of different sizes
        return {"rms": float("inf"), "expected": str(expected), "actual": str(actual), "message": str(e)}


def render(name: str, make, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.png"
    assert make(out) == out and out.is_file()
    return out


def test_plot_keys():
    assert plots.metric_keys(history()) == ["val_auc", "val_accuracy"]


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plot_matches_reference(name, tmp_path):
    actual = render(name, PLOTS[name], tmp_path)
    expected = REFERENCE_DIR / f"{name}.png"
    if UPDATE:
        REFERENCE_DIR.mkdir(exist_ok=True)
        shutil.copyfile(actual, expected)
    assert expected.is_file(), f"no reference {expected}: run with HEPRAY_UPDATE_PLOTS=1 (see module docstring)"
    assert expected.stat().st_size < MAX_BYTES, f"{expected} is {expected.stat().st_size} bytes"
    diff = compare(expected, actual)
    assert diff is None, f"{name}: RMS {diff['rms']:.3f} > tol {TOL}: {diff}"


ALTERED = {
    # one point of the validation loss 10 % higher: only that curve moves
    "curve": ("loss", lambda p: plots.loss(p, history(val_loss_bump=1.1))),
    # one class renamed: legend entry and x-axis label
    "label": ("score_hist", lambda p: plots.score_hist(p, *binary_inputs()[:2], ["bkg", "sgn"])),
    # first two colours of the cycle swapped
    "colour": ("roc", None),
    # a noisier baseline score: its ROC curve and AUC in the legend
    "input": ("roc", lambda p: plots.roc(p, *binary_inputs(baseline_noise=1.3))),
    # the model's energy scale off by 1 %: its response peak and median move
    "scale": ("response", lambda p: plots.response(p, *regression_inputs(scale=1.01))),
}


def test_altered_plot_fails(tmp_path, monkeypatch):
    """The tolerance is tight enough: a re-render passes, each deliberate change fails."""
    import mplhep

    rms = {}
    for change, (name, make) in ALTERED.items():
        expected = render(name, PLOTS[name], tmp_path / "ref" / change)  # the unaltered image, rendered now
        assert compare(expected, render(name, PLOTS[name], tmp_path / "again" / change)) is None, name
        with monkeypatch.context() as m:
            if change == "colour":
                cyc = list(mplhep.style.ROOT["axes.prop_cycle"].by_key()["color"])
                cyc[0], cyc[1] = cyc[1], cyc[0]
                m.setattr(mplhep.style, "ROOT", {**mplhep.style.ROOT, "axes.prop_cycle": cycler(color=cyc)})
                make = PLOTS[name]
            diff = compare(expected, render(name, make, tmp_path / "altered" / change))
        assert diff is not None, f"{change}: altered {name} passed the comparison"
        rms[change] = diff["rms"]
    assert min(rms.values()) > 3 * TOL, rms
