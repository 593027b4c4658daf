"""The boosted-jet sample generator (study 003): schema, physics sanity, reproducibility, and
one tiny epoch of the jets_cvn job."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from sklearn.metrics import roc_auc_score

from hepray.app.run import run_job
from hepray.samples import generate, known_kinds
from hepray.samples import jets_cvn as jc
from hepray.spec import load_job
from rootfiles import read_events

EVENTS = 1500
JET = ["jet_pt", "jet_eta", "jet_phi", "jet_mass", "tau1", "tau2", "tau21"]
PFCAND = ["pfcand_ptrel", "pfcand_etarel", "pfcand_phirel"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("jets_cvn")
    paths = generate("jets_cvn", out, EVENTS, seed=3, events_per_file=1000)
    return {"paths": paths, **{kind: read_events([p for p in paths if p.name.startswith(kind)]) for kind in jc.CLASSES}}


def np_(array):
    return ak.to_numpy(array).astype(np.float64)


def test_files_and_schema(sample):
    assert "jets_cvn" in known_kinds()
    assert [p.name for p in sample["paths"]] == ["hbb_000.root", "hbb_001.root", "qcd_000.root", "qcd_001.root"]
    with uproot.open(sample["paths"][0]) as f:
        tree = f["events"]
        assert set(tree.keys()) == set(JET) | set(PFCAND) | {"npfcand"}
        for name in JET:
            assert tree[name].typename == "float"
        for name in PFCAND:
            assert tree[name].typename == "float[]" and tree[name].count_branch.name == "npfcand"
    for kind in jc.CLASSES:
        a = sample[kind]
        assert len(a) == EVENTS
        assert ak.all(ak.num(a["pfcand_ptrel"]) > 3)


def test_constituents_are_in_the_jet_frame(sample):
    for kind in jc.CLASSES:
        a = sample[kind]
        ptrel = a["pfcand_ptrel"]
        assert ak.all(ptrel > 0)
        assert ak.all(ptrel[:, :-1] >= ptrel[:, 1:])  # sorted by pT
        # the scalar sum of the constituents' pT is at least the jet's (vector sum) pT, and
        # close to it for constituents within the cone
        total = np_(ak.sum(ptrel, axis=1))
        assert total.min() > 1 - 1e-4 and total.max() < 1.2 and np.median(total) < 1.03
        # the jet is the four-vector sum of its constituents: in the jet frame it has pT 1,
        # phi 0 and the jet's eta
        eta = a["pfcand_etarel"] + a["jet_eta"]
        px = np_(ak.sum(ptrel * np.cos(a["pfcand_phirel"]), axis=1))
        py = np_(ak.sum(ptrel * np.sin(a["pfcand_phirel"]), axis=1))
        pz = np_(ak.sum(ptrel * np.sinh(eta), axis=1))
        np.testing.assert_allclose(px, 1.0, atol=2e-4)
        np.testing.assert_allclose(py, 0.0, atol=2e-4)
        np.testing.assert_allclose(np.arcsinh(pz / px), np_(a["jet_eta"]), atol=2e-3)
        dr = np.sqrt(a["pfcand_etarel"] ** 2 + a["pfcand_phirel"] ** 2)
        assert ak.max(dr) < 1.0


def test_mass_peak_and_substructure(sample):
    s, b = sample["hbb"], sample["qcd"]
    ms, mb = np_(s["jet_mass"]), np_(b["jet_mass"])
    counts, edges = np.histogram(ms, bins=np.arange(0, 250, 10))
    assert 105 <= edges[np.argmax(counts)] <= 135  # signal mass peak near 125
    assert np.median(mb) < 80 and np.mean((mb > 100) & (mb < 150)) < 0.2  # falling QCD spectrum
    assert np.mean((mb > 100) & (mb < 150)) > 0.03  # ... with a tail under the peak
    assert np.median(np_(s["tau21"])) < np.median(np_(b["tau21"])) - 0.2  # two-prong signal
    for a in (s, b):
        tau1, tau2, tau21 = np_(a["tau1"]), np_(a["tau2"]), np_(a["tau21"])
        assert np.all(tau2 <= tau1 + 1e-6) and np.all((tau21 >= 0) & (tau21 <= 1 + 1e-6))
        np.testing.assert_allclose(tau21, tau2 / tau1, rtol=1e-4)
        pt = np_(a["jet_pt"])
        assert 250 < np.median(pt) < 600 and pt.max() < 1100


def test_task_is_neither_trivial_nor_impossible(sample):
    s, b = sample["hbb"], sample["qcd"]
    y = np.r_[np.ones(EVENTS), np.zeros(EVENTS)]
    auc_tau = roc_auc_score(y, -np.r_[np_(s["tau21"]), np_(b["tau21"])])
    auc_mass = roc_auc_score(y, -np.abs(np.r_[np_(s["jet_mass"]), np_(b["jet_mass"])] - 125))
    assert 0.65 < auc_tau < 0.9 and 0.75 < auc_mass < 0.95


def test_nsubjettiness_of_two_and_one_prong_jets():
    # jet 0: two equal prongs at (+-0.2, 0) -> tau2 = 0, tau1 = 0.2 / R0; jet 1: one point
    pt = np.array([1.0, 1.0, 1.0])
    deta = np.array([0.2, -0.2, 0.0])
    dphi = np.zeros(3)
    tau1, tau2 = jc.nsubjettiness(pt, deta, dphi, np.array([2, 1]))
    np.testing.assert_allclose(tau1, [0.2 / jc.TAU_R0, 0.0], atol=1e-12)
    np.testing.assert_allclose(tau2, [0.0, 0.0], atol=1e-12)


def test_same_seed_same_jets(tmp_path):
    a = read_events(generate("jets_cvn", tmp_path / "a", 300, seed=5))
    b = read_events(generate("jets_cvn", tmp_path / "b", 300, seed=5, events_per_file=100))
    c = read_events(generate("jets_cvn", tmp_path / "c", 300, seed=6))
    for name in JET + PFCAND:
        assert ak.all(a[name] == b[name]), name
    assert not np.array_equal(np_(a["jet_mass"]), np_(c["jet_mass"]))


def test_job_runs_one_tiny_epoch(ray_session, tmp_path):
    data = tmp_path / "data"
    job = load_job(
        "jobs/jets_cvn.yaml",
        [
            f"data.generate.out={data}",
            "data.generate.events=300",
            f"data.files.qcd={data}/qcd_*.root",
            f"data.files.hbb={data}/hbb_*.root",
            "train.epochs=1",
            "model.width=0.0625",
            "data.inputs.jet.size=17",
        ],
    )
    metrics = run_job(job, tmp_path / "run")
    assert metrics["events_read"] == 600
    for key in ("test_auc", "baseline_mass_auc", "baseline_tau21_auc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["baseline_mass_auc"] > 0.7 and metrics["baseline_tau21_auc"] > 0.6
