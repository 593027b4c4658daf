"""The electron-ID sample generator (study 000) and the shared ROOT writing helpers. No Ray."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from hepray.samples import electron_id as eid
from hepray.samples import generate, known_kinds
from hepray.samples.common import ttree_layout, write_file
from rootfiles import read_events

EVENTS = 3000
PER_FILE = 1000
SCALARS = ["ele_pt", "ele_eta", "ele_phi", "ele_iso", "ele_width", "ele_hoe"]
TOWERS = ["tower_eta", "tower_phi", "tower_e", "tower_em", "tower_had"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("electron_id")
    paths = generate("electron_id", out, EVENTS, seed=7, events_per_file=PER_FILE)
    return {
        "out": out,
        "paths": paths,
        "electron": read_events([p for p in paths if p.name.startswith("electron_")]),
        "fake": read_events([p for p in paths if p.name.startswith("fake_")]),
    }


def np_(array):
    return ak.to_numpy(array).astype(np.float64)


# --- registry and files ------------------------------------------------------------


def test_registry_finds_generators_and_names_known_kinds():
    assert "electron_id" in known_kinds() and "common" not in known_kinds()
    with pytest.raises(ValueError, match="electron_id"):
        generate("no_such_kind", "/nonexistent", 10)
    with pytest.raises(ValueError, match="rntuple"):
        generate("electron_id", "/nonexistent", 10, fmt="parquet")


def test_files_split_per_class(sample):
    names = [p.name for p in sample["paths"]]
    assert names == [f"electron_{i:03d}.root" for i in range(3)] + [f"fake_{i:03d}.root" for i in range(3)]
    for path in sample["paths"]:
        with uproot.open(path) as f:
            assert f["events"].num_entries == PER_FILE
    assert len(sample["electron"]) == len(sample["fake"]) == EVENTS
    assert not list(sample["out"].glob(".*partial"))


def test_rerun_removes_stale_files(tmp_path):
    generate("electron_id", tmp_path, 30, events_per_file=10)
    assert len(list(tmp_path.glob("electron_*.root"))) == 3
    (tmp_path / "electron_notes.root").write_bytes(b"not ours")
    paths = generate("electron_id", tmp_path, 30, events_per_file=20)
    assert sorted(p.name for p in tmp_path.glob("electron_0*.root")) == ["electron_000.root", "electron_001.root"]
    assert (tmp_path / "electron_notes.root").exists()
    assert len(paths) == 4


# --- schema -------------------------------------------------------------------------


def test_ttree_schema_and_shared_counter(sample):
    with uproot.open(sample["paths"][0]) as f:
        tree = f["events"]
        assert isinstance(tree, uproot.TTree)
        assert set(tree.keys()) == set(SCALARS) | set(TOWERS) | {"ntower"}
        for name in SCALARS:
            assert tree[name].typename == "float"
        assert tree["ntower"].typename == "int32_t"
        for name in TOWERS:
            assert tree[name].typename == "float[]"
            assert tree[name].count_branch.name == "ntower"
    for kind in ("electron", "fake"):
        a = sample[kind]
        for name in TOWERS:
            assert ak.all(ak.num(a[name]) == a["ntower"])
            assert a[name].type.content.content == ak.types.NumpyType("float32")


def test_ttree_layout_shares_counters_only_for_equal_counts(tmp_path):
    one = ak.Array([[1.0, 2.0], [], [3.0]])
    other = ak.Array([[1.0], [2.0], [3.0]])
    chunk = {"x": np.arange(3.0), "hit_a": one, "hit_b": one * 2, "trk_a": one, "trk_b": other}
    layout = ttree_layout(chunk)
    assert set(layout) == {"x", "hit", "trk_a", "trk_b"}
    write_file(tmp_path / "t.root", [chunk, chunk])
    with uproot.open(tmp_path / "t.root") as f:
        tree = f["events"]
        assert tree.num_entries == 6
        assert tree["hit_a"].count_branch.name == tree["hit_b"].count_branch.name == "nhit"
        assert tree["trk_a"].count_branch.name != tree["trk_b"].count_branch.name
        assert tree["hit_b"].array().tolist() == [[2.0, 4.0], [], [6.0]] * 2


# --- reproducibility ------------------------------------------------------------------


def test_same_seed_same_arrays_other_seed_differs(tmp_path):
    a = generate("electron_id", tmp_path / "a", 1200, seed=3)
    b = generate("electron_id", tmp_path / "b", 1200, seed=3, events_per_file=500)  # other split
    c = generate("electron_id", tmp_path / "c", 1200, seed=4)
    ra, rb, rc = read_events(a), read_events(b), read_events(c)
    assert len(b) == 6
    for name in SCALARS + TOWERS:
        assert ak.all(ra[name] == rb[name]), name
    assert not np.array_equal(np_(ra["ele_pt"]), np_(rc["ele_pt"]))


def test_rntuple_reads_back_the_same_arrays(tmp_path):
    tt = read_events(generate("electron_id", tmp_path / "tt", 250, seed=5, events_per_file=200))
    paths = generate("electron_id", tmp_path / "rn", 250, seed=5, fmt="rntuple", events_per_file=200)
    with uproot.open(paths[0]) as f:
        assert isinstance(f["events"], uproot.models.RNTuple.Model_ROOT_3a3a_RNTuple)
    rn = read_events(paths)
    assert set(rn.fields) == set(tt.fields)
    for name in tt.fields:
        assert rn[name].type == tt[name].type, name
        assert ak.all(rn[name] == tt[name]), name


def test_a_job_generates_its_data_again_when_asked_for_more_events(tmp_path, capsys):
    from hepray.app.job_data import ensure_data
    from hepray.spec import load_job

    def ensure(events):
        job = load_job(
            Path(__file__).parents[1] / "jobs" / "electron_id.yaml",
            [
                f"data.generate.out={tmp_path}",
                f"data.generate.events={events}",
                f"data.files.electron={tmp_path}/electron_*.root",
                f"data.files.fake={tmp_path}/fake_*.root",
            ],
        )
        ensure_data(job.data)
        files = sorted(tmp_path.glob("*.root"))
        return {
            cls: sum(uproot.open(f)["events"].num_entries for f in files if f.name.startswith(cls))
            for cls in ("electron", "fake")
        }

    assert ensure(20) == {"electron": 20, "fake": 20}
    assert ensure(50) == {"electron": 50, "fake": 50}
    assert "holds 20 events per class, the job asks for 50" in capsys.readouterr().out
    assert ensure(10) == {"electron": 50, "fake": 50}  # larger data is kept
    assert "generating" not in capsys.readouterr().out
    written = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.root")}
    elsewhere = tmp_path.parent / f"{tmp_path.name}_elsewhere"  # outside generate.out: not the generator's to write
    ensure_data(
        load_job(
            Path(__file__).parents[1] / "jobs" / "electron_id.yaml",
            [
                f"data.generate.out={tmp_path}",
                "data.generate.events=100",
                f"data.files.electron={elsewhere}/e_*.root",
                f"data.files.fake={elsewhere}/f_*.root",
            ],
        ).data
    )
    assert not elsewhere.exists()
    assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.root")} == written


# --- physics sanity ---------------------------------------------------------------------


def test_towers_are_grid_cells_in_the_cone_above_threshold(sample):
    for kind in ("electron", "fake"):
        a = sample[kind]
        e, em, had = (np_(ak.flatten(a[n])) for n in ("tower_e", "tower_em", "tower_had"))
        assert np.all(e > eid.THRESHOLD)
        assert np.all((em == 0) | (em > eid.THRESHOLD)) and np.all((had == 0) | (had > eid.THRESHOLD))
        np.testing.assert_allclose(e, em + had, rtol=1e-6)
        eta = np_(ak.flatten(a["tower_eta"]))
        phi = np_(ak.flatten(a["tower_phi"]))
        assert np.all((phi >= -np.pi) & (phi < np.pi))
        for x, cell in ((eta, eid.CELL_ETA), (phi, eid.CELL_PHI)):
            i = x / cell - 0.5
            assert np.abs(i - np.round(i)).max() < 1e-3  # cell centres
        n = np_(a["ntower"])
        deta = eta - np.repeat(np_(a["ele_eta"]), n.astype(int))
        dphi = phi - np.repeat(np_(a["ele_phi"]), n.astype(int))
        dphi = (dphi + np.pi) % (2 * np.pi) - np.pi
        assert np.all(np.hypot(deta, dphi) < eid.CONE + 1e-4)
        assert np.all(np.abs(np_(a["ele_eta"])) < eid.ETA_MAX)


def test_tower_multiplicity(sample):
    ne, nf = np_(sample["electron"]["ntower"]), np_(sample["fake"]["ntower"])
    assert 80 <= np.concatenate([ne, nf]).mean() <= 250
    assert 60 <= ne.mean() < nf.mean() <= 300  # jets leave more towers


def test_phi_wrap_near_pi(sample):
    a = sample["electron"]
    near = np.abs(np_(a["ele_phi"])) > np.pi - 0.1
    assert near.sum() > 10
    phis = a["tower_phi"][near]
    straddles = ak.any(phis > 3.0, axis=1) & ak.any(phis < -3.0, axis=1)
    assert ak.sum(straddles) > 5  # the cone crosses the wrap and towers are wrapped


def test_baseline_variables_match_the_towers(sample):
    a = sample["fake"][:500]
    deta = a["tower_eta"] - a["ele_eta"]
    dphi = (a["tower_phi"] - a["ele_phi"] + np.pi) % (2 * np.pi) - np.pi
    dr = np.sqrt(deta**2 + dphi**2)
    core = dr < eid.INNER
    et = a["tower_e"] / np.cosh(a["tower_eta"])
    iso = ak.sum(et[~core], axis=1) / a["ele_pt"]
    np.testing.assert_allclose(np_(iso), np_(a["ele_iso"]), rtol=2e-3, atol=1e-4)
    hoe = ak.sum(a["tower_had"][core], axis=1) / np.maximum(ak.sum(a["tower_em"][core], axis=1), 0.01)
    np.testing.assert_allclose(np_(hoe), np_(a["ele_hoe"]), rtol=2e-3, atol=1e-5)
    w = a["tower_e"][core]
    d = deta[core]
    mean = ak.sum(w * d, axis=1) / ak.sum(w, axis=1)
    width = np.sqrt(ak.sum(w * (d - mean) ** 2, axis=1) / ak.sum(w, axis=1))
    np.testing.assert_allclose(np_(width), np_(a["ele_width"]), rtol=5e-3, atol=2e-5)


def test_classes_differ_as_physics_says(sample):
    s, b = sample["electron"], sample["fake"]
    med = {
        k: {v: np.median(np_(sample[k][v])) for v in ("ele_iso", "ele_width", "ele_hoe", "ele_pt")}
        for k in ("electron", "fake")
    }
    assert med["electron"]["ele_width"] < med["fake"]["ele_width"]
    assert med["electron"]["ele_iso"] < med["fake"]["ele_iso"]
    assert med["electron"]["ele_hoe"] < med["fake"]["ele_hoe"]
    assert med["fake"]["ele_pt"] < med["electron"]["ele_pt"]  # fakes softer
    for a in (s, b):
        pt = np_(a["ele_pt"])
        assert 0.25 < np.mean(pt < 30) < 0.8 and pt.min() > 5 and pt.max() < 130
    # electrons: most energy in the central 3x3 cells
    k = np.abs(np.round((s["tower_eta"] - s["ele_eta"]) / eid.CELL_ETA)) <= 1
    dphi = (s["tower_phi"] - s["ele_phi"] + np.pi) % (2 * np.pi) - np.pi
    k = k & (np.abs(np.round(dphi / eid.CELL_PHI)) <= 1)
    e9 = np_(ak.sum(s["tower_em"][k], axis=1)) / np_(s["ele_pt"] * np.cosh(s["ele_eta"]))
    assert np.median(e9) > 0.6


def test_task_is_neither_trivial_nor_impossible(sample):
    s, b = sample["electron"], sample["fake"]
    names = ("ele_iso", "ele_width", "ele_hoe")
    xs = np.stack([np_(s[v]) for v in names], axis=1)
    xb = np.stack([np_(b[v]) for v in names], axis=1)
    for pt_bin in (None, (0, 30), (30, 1000)):
        ms = (
            np.ones(len(xs), bool)
            if pt_bin is None
            else (np_(s["ele_pt"]) >= pt_bin[0]) & (np_(s["ele_pt"]) < pt_bin[1])
        )
        mb = (
            np.ones(len(xb), bool)
            if pt_bin is None
            else (np_(b["ele_pt"]) >= pt_bin[0]) & (np_(b["ele_pt"]) < pt_bin[1])
        )
        # cut-based selection: upper cuts at a common signal quantile, tuned to 90 % efficiency
        for q in np.linspace(0.9, 1.0, 201):
            cuts = np.quantile(xs[ms], q, axis=0)
            eff_s = np.all(xs[ms] <= cuts, axis=1).mean()
            if eff_s >= 0.9:
                break
        eff_b = np.all(xb[mb] <= cuts, axis=1).mean()
        assert 0.02 < eff_b < 0.4, (pt_bin, eff_b)
