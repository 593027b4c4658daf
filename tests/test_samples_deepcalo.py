"""The electron/photon calorimeter sample (study 004): schema, physics sanity, reproducibility;
the Crystal Ball width and the permutation importance it is reported with; one tiny epoch of
the deepcalo job."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from scipy.stats import crystalball

from hepray.app.run import run_job
from hepray.evaluate.importance import scalar_columns
from hepray.evaluate.resolution import crystal_ball_fit
from hepray.samples import deepcalo as dc
from hepray.samples import generate
from hepray.spec import load_job
from rootfiles import read_events

EVENTS = 1500
SCALARS = [
    "e_true",
    "e_acc",
    "eta",
    "abs_eta",
    "phi",
    "mu",
    "npv",
    "trk_pt",
    "conv",
    "particle",
    "e_ps",
    "e_l1",
    "e_l2",
    "e_l3",
    "seed_eta",
    "seed_phi",
]
CELLS = ["cell_eta", "cell_phi", "cell_e", "cell_layer"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepcalo")
    paths = generate("deepcalo", out, EVENTS, seed=3, events_per_file=1000)
    return {"paths": paths, **{kind: read_events([p for p in paths if p.name.startswith(kind)]) for kind in dc.CLASSES}}


def np_(array):
    return ak.to_numpy(array).astype(np.float64)


def iqr_rel(x):
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    return (q75 - q25) / q50


def test_files_and_schema(sample):
    assert [p.name for p in sample["paths"]] == [
        "electron_000.root",
        "electron_001.root",
        "photon_000.root",
        "photon_001.root",
    ]
    with uproot.open(sample["paths"][0]) as f:
        tree = f["events"]
        assert set(tree.keys()) == set(SCALARS) | set(CELLS) | {"ncell"}
        for name in SCALARS:
            assert tree[name].typename == "float"
        for name in CELLS:
            assert tree[name].typename == "float[]" and tree[name].count_branch.name == "ncell"
    for kind in dc.CLASSES:
        assert len(sample[kind]) == EVENTS


def test_acceptance_and_image_cells(sample):
    for kind in dc.CLASSES:
        a = sample[kind]
        abs_eta = np_(a["abs_eta"])
        assert abs_eta.max() < dc.ENDCAP_MAX + 0.03
        assert not np.any((abs_eta > dc.BARREL_MAX + 0.03) & (abs_eta < dc.ENDCAP_MIN - 0.03))  # no crack
        layer = a["cell_layer"]
        assert set(np.unique(np_(ak.flatten(layer)))) == {0.0, 1.0, 2.0, 3.0}
        # cells on the middle-layer grid, inside the window around the seed
        for name, seed, cell in (("cell_eta", "seed_eta", dc.CELL_ETA), ("cell_phi", "seed_phi", dc.CELL_PHI)):
            d = (a[name] - a[seed]) / cell
            d = np_(ak.flatten(d))
            if name == "cell_phi":
                d = (d + dc.N_PHI / 2) % dc.N_PHI - dc.N_PHI / 2
            assert np.abs(d - np.round(d)).max() < 1e-2 and np.abs(d).max() <= dc.WINDOW // 2 + 1e-2
        # no presampler beyond |eta| = 1.8
        ps_cells = ak.sum(layer == 0, axis=1)
        assert np.all(np_(ps_cells)[abs_eta > dc.PRESAMPLER_MAX + 0.03] == 0)
        assert np.mean(np_(ps_cells)[abs_eta < 1.2] > 0) > 0.9
        np.testing.assert_allclose(np_(a["e_l1"] + a["e_l2"] + a["e_l3"]), np_(a["e_acc"]), rtol=1e-4, atol=1e-3)
        # the middle layer holds most of the energy
        assert np.median(np_(a["e_l2"] / a["e_acc"])) > 0.6


def test_response_below_one_and_worse_in_the_endcap(sample):
    for kind in dc.CLASSES:
        a = sample[kind]
        response = np_(a["e_acc"] / a["e_true"])
        barrel = np_(a["abs_eta"]) < 1.4
        for region in (barrel, ~barrel):
            assert 0.8 < np.median(response[region]) < 0.97
        assert np.median(response[~barrel]) < np.median(response[barrel])
        assert iqr_rel(response[~barrel]) > iqr_rel(response[barrel])
        et = np_(a["e_true"]) / np.cosh(np_(a["eta"]))
        assert iqr_rel(response[et < 30]) > iqr_rel(response[et > 60])  # better at high energy


def test_tracks_conversions_and_pileup(sample):
    e, g = sample["electron"], sample["photon"]
    pt = np_(e["e_true"]) / np.cosh(np_(e["eta"]))
    assert abs(np.median(np_(e["trk_pt"]) / pt) - 1) < 0.03 and np.all(np_(e["conv"]) == 0)
    conv = np_(g["conv"]) == 1
    assert 0.2 < conv.mean() < 0.6
    assert np.all(np_(g["trk_pt"])[~conv] == 0) and np.all(np_(g["trk_pt"])[conv] > 0)
    endcap = np_(g["abs_eta"]) > 1.4
    assert conv[endcap].mean() > conv[~endcap].mean()  # more material
    # electrons lose more in front (brem, earlier showers) than unconverted photons
    assert np.median(np_(e["e_acc"] / e["e_true"])) < np.median(np_(g["e_acc"] / g["e_true"])[~conv])
    for a in (e, g):
        mu, npv = np_(a["mu"]), np_(a["npv"])
        assert 10 <= mu.min() and mu.max() <= 60 and np.corrcoef(mu, npv)[0, 1] > 0.8


def test_same_seed_same_clusters(tmp_path):
    a = read_events(generate("deepcalo", tmp_path / "a", 200, seed=5))
    b = read_events(generate("deepcalo", tmp_path / "b", 200, seed=5, events_per_file=70))
    c = read_events(generate("deepcalo", tmp_path / "c", 200, seed=6))
    for name in SCALARS + CELLS:
        assert ak.all(a[name] == b[name]), name
    assert not np.array_equal(np_(a["e_acc"]), np_(c["e_acc"]))


def test_crystal_ball_fit_recovers_sigma():
    x = crystalball.rvs(1.2, 3.0, loc=0.95, scale=0.04, size=20000, random_state=np.random.default_rng(1))
    fit = crystal_ball_fit(x)
    assert fit["cb_mu"] == pytest.approx(0.95, abs=0.003)
    assert fit["cb_sigma"] == pytest.approx(0.04 / 0.95, rel=0.05)
    assert 0 < fit["cb_sigma_err"] < 0.1 * fit["cb_sigma"]
    assert fit["cb_beta"] == pytest.approx(1.2, rel=0.3)
    assert np.isnan(crystal_ball_fit(x[:10])["cb_sigma"])


def test_importance_names_scalars_by_the_branch_they_read():
    job = load_job("jobs/deepcalo.yaml", ["data.inputs.scalars.branches=[eta, 'mu / 40', 'log(e_acc)', 'e_acc / mu']"])
    keys = [key for _, _, key in scalar_columns(job)]
    assert keys == ["eta", "mu", "e_acc", "e_acc___mu"]


def test_job_runs_one_tiny_epoch(ray_session, tmp_path):
    data = tmp_path / "data"
    job = load_job(
        "jobs/deepcalo.yaml",
        [
            f"data.generate.out={data}",
            "data.generate.events=300",
            f"data.files=[{data}/electron_*.root, {data}/photon_*.root]",
            "train.epochs=1",
            "model.filters=8",
            "model.blocks=2",
            "model.dense=16",
            "evaluate.baselines.bdt.max_iter=20",
            "evaluate.plots=false",
        ],
    )
    metrics = run_job(job, tmp_path / "run")
    assert 550 < metrics["events_read"] <= 600
    for key in (
        "test_iqr_rel",
        "baseline_bdt_iqr_rel",
        "test_rIQR_vs_bdt",
        "test_cb_sigma",
        "baseline_bdt_cb_sigma",
        "test_iqr_rel@abs_eta[0,1.4)",
        "baseline_bdt_iqr_rel@abs_eta[1.4,2.5)",
    ):
        assert np.isfinite(metrics[key]), key
    assert {f"importance_{name}" for name in ("eta", "mu", "npv", "trk_pt", "conv", "e_acc")} <= set(metrics)
    assert 0.8 < metrics["baseline_bdt_response_median"] < 1.2
