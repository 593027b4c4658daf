"""The drift-chamber sample generator (study 002) and one tiny run of its multiclass job."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from hepray.samples import drift_chamber as dc
from hepray.samples import drift_chamber_tracks as dct
from hepray.samples import generate, known_kinds
from rootfiles import read_events

EVENTS = 400
PER_FILE = 250
HITS = ["layer", "wire", "XE", "YE", "XW", "YW", "RT", "RC", "TRK"]
TRACKS = ["trk_px", "trk_py", "trk_pz", "trk_pid", "trk_charge"]
JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("drift_chamber")
    paths = generate("drift_chamber", out, EVENTS, seed=3, events_per_file=PER_FILE)
    return {
        "paths": paths,
        **{kind: read_events([p for p in paths if p.name.startswith(kind + "_")]) for kind in dc.CLASSES},
    }


def flat(array):
    return ak.to_numpy(ak.flatten(array)).astype(np.float64)


def four_vectors(a):
    """(n, 4 tracks, 4) float64 four-vectors from the written true momenta and PDG codes."""
    p = np.stack([ak.to_numpy(a[name]).astype(np.float64) for name in ("trk_px", "trk_py", "trk_pz")], axis=2)
    pid = np.abs(ak.to_numpy(a["trk_pid"]))
    mass = np.select([pid == 11, pid == 13, pid == 211], [dc.M_E, dc.M_MU, dc.M_PI])
    energy = np.sqrt(mass**2 + np.sum(p**2, axis=2))
    return np.concatenate([energy[:, :, None], p], axis=2)


def invariant_mass(p4):
    return np.sqrt(np.clip(p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1), 0, None))


# --- files and schema ------------------------------------------------------------------


def test_one_file_group_per_class(sample):
    assert "drift_chamber" in known_kinds()
    names = [p.name for p in sample["paths"]]
    assert names == [f"{kind}_{i:03d}.root" for kind in dc.CLASSES for i in range(2)]
    assert all(len(sample[kind]) == EVENTS for kind in dc.CLASSES)


def test_ttree_schema(sample):
    with uproot.open(sample["paths"][0]) as f:
        tree = f["events"]
        assert isinstance(tree, uproot.TTree)
        counters = {"n" + name for name in HITS} | {"ntrk"}
        assert set(tree.keys()) == set(HITS) | set(TRACKS) | {"rc_sum", "rc_mean"} | counters
        for name in ("layer", "wire", "TRK"):
            assert tree[name].typename == "int32_t[]"
        for name in ("XE", "YE", "XW", "YW", "RT", "RC", "trk_px", "trk_py", "trk_pz"):
            assert tree[name].typename == "float[]"
        assert tree["trk_pid"].typename == tree["trk_charge"].typename == "int32_t[]"
        assert tree["trk_px"].count_branch.name == "ntrk"
    for kind in dc.CLASSES:
        a = sample[kind]
        counts = ak.num(a["RC"])
        assert all(ak.all(ak.num(a[name]) == counts) for name in HITS)
        assert ak.all(ak.num(a["trk_px"]) == 4)
        np.testing.assert_allclose(ak.to_numpy(a["rc_sum"]), ak.to_numpy(ak.sum(a["RC"], axis=1)), rtol=1e-5)


def test_hits_sit_on_wires_of_their_layer(sample):
    a = sample["psip_ee"]
    layer = flat(a["layer"]).astype(int)
    wire = flat(a["wire"]).astype(int)
    assert layer.min() >= 0 and layer.max() == dc.N_LAYERS - 1
    assert np.all((wire >= 0) & (wire < dc.N_WIRES[layer]))
    for end in ("E", "W"):
        np.testing.assert_allclose(np.hypot(flat(a["X" + end]), flat(a["Y" + end])), dc.RADIUS[layer], rtol=1e-5)
    twist = np.hypot(flat(a["XE"]) - flat(a["XW"]), flat(a["YE"]) - flat(a["YW"]))
    axial = dc.TWIST[layer] == 0
    assert np.all(twist[axial] < 1e-3) and np.all(twist[~axial] > 20)  # stereo wires: ends 3.5 deg x length apart
    rt = flat(a["RT"])
    assert np.percentile(rt, 1) > dc.T0 - 20 and np.percentile(rt, 99) < dc.T0 + dc.CELL.max() / dc.DRIFT_VELOCITY


# --- kinematics ---------------------------------------------------------------------------


def test_momentum_and_energy_conserved(sample):
    for kind in dc.CLASSES:
        total = four_vectors(sample[kind]).sum(axis=1)
        assert np.abs(total[:, 1:]).max() < 2e-6  # float32 storage
        np.testing.assert_allclose(total[:, 0], dc.M_PSIP, atol=1e-5)


def test_lepton_pair_is_a_jpsi_and_pions_from_psip_are_soft(sample):
    for kind in ("psip_ee", "psip_mumu"):
        p4 = four_vectors(sample[kind])
        np.testing.assert_allclose(invariant_mass(p4[:, 2] + p4[:, 3]), dc.M_JPSI, atol=2e-4)
        m_pipi = invariant_mass(p4[:, 0] + p4[:, 1])
        assert m_pipi.min() > 2 * dc.M_PI - 1e-4 and m_pipi.max() < dc.M_PSIP - dc.M_JPSI + 1e-4
        assert np.median(m_pipi) > 0.45  # the measured spectrum peaks at high m_pipi, not at phase-space centre
        assert np.sqrt(np.sum(p4[:, :2, 1:] ** 2, axis=-1)).max() < 0.5
    p4 = four_vectors(sample["continuum"])
    m_mumu = invariant_mass(p4[:, 2] + p4[:, 3])
    assert np.mean(np.abs(m_mumu - dc.M_JPSI) < 0.01) < 0.02  # no J/psi peak in the continuum
    assert m_mumu.min() > 2 * dc.M_MU - 1e-4 and m_mumu.max() < dc.M_PSIP - 2 * dc.M_PI + 1e-4


def test_phase_space_matches_the_three_body_dalitz_density():
    """Flat 3-body phase space: m12^2 uniform over the Dalitz plot projection (checked by its
    integrated density at the mid-point against the analytic one)."""
    rng = np.random.default_rng(0)
    masses = [0.5, 0.5, 0.5]
    p4 = dc.phase_space(rng, 40000, 3.0, masses)
    assert np.abs(p4.sum(axis=1)[:, 1:]).max() < 1e-9
    np.testing.assert_allclose(invariant_mass(p4), 0.5, atol=1e-9)
    m12 = invariant_mass(p4[:, 0] + p4[:, 1])
    # d Gamma / d m12 ~ p*(M -> m12 m3) p*(m12 -> m1 m2): compare the histogram to it
    edges = np.linspace(1.0, 2.5, 16)
    hist, _ = np.histogram(m12, edges, density=True)
    centres = 0.5 * (edges[1:] + edges[:-1])
    density = dc.breakup_momentum(3.0, centres, 0.5) * dc.breakup_momentum(centres, 0.5, 0.5)
    density /= density.sum() * (edges[1] - edges[0])
    np.testing.assert_allclose(hist[1:-1], density[1:-1], rtol=0.08)


# --- detector response ---------------------------------------------------------------------


def test_curvature_sign_follows_charge(sample):
    """In a 1 T field along +z a positive track turns clockwise: its hits lie to the right of its
    initial direction, px*Y - py*X < 0 (the whole circle is on one side of its tangent). Axial
    wires only: a stereo wire's midpoint is displaced in azimuth by the hit's z."""
    checked = 0
    for kind in dc.CLASSES:
        a = sample[kind]
        n = len(a)
        event = np.repeat(np.arange(n), ak.to_numpy(ak.num(a["TRK"])))
        trk = flat(a["TRK"]).astype(int) - 1
        x = 0.5 * (flat(a["XE"]) + flat(a["XW"]))
        y = 0.5 * (flat(a["YE"]) + flat(a["YW"]))
        axial = flat(a["XE"]) == flat(a["XW"])
        far = (np.hypot(x, y) > 300) & (trk >= 0) & axial
        index = event[far] * 4 + trk[far]
        px, py = ak.to_numpy(a["trk_px"]).reshape(-1), ak.to_numpy(a["trk_py"]).reshape(-1)
        side = np.bincount(index, weights=px[index] * y[far] - py[index] * x[far], minlength=4 * n)
        hits = np.bincount(index, minlength=4 * n)
        charge = ak.to_numpy(a["trk_charge"]).reshape(-1)
        seen = hits >= 3
        assert np.all(np.sign(side[seen]) == -charge[seen])
        checked += seen.sum()
    assert checked > 0.5 * 4 * 3 * EVENTS


def test_curlers_stay_inside_their_circle(sample):
    a = sample["psip_mumu"]
    trk = flat(a["TRK"]).astype(int) - 1
    event = np.repeat(np.arange(len(a)), ak.to_numpy(ak.num(a["TRK"])))
    pt = np.hypot(ak.to_numpy(a["trk_px"]), ak.to_numpy(a["trk_py"]))[event, trk]
    radius = dc.RADIUS[flat(a["layer"]).astype(int)]
    assert np.all(radius < 2 * pt * dc.MM_PER_GEV)  # a track never reaches beyond its circle's diameter
    soft = pt < 0.1  # 2R < 667 mm: these pions curl up inside the chamber and loop
    assert soft.sum() > 100 and radius[soft].max() < 670
    cells = event * 100_000 + flat(a["layer"]).astype(int) * 1000 + flat(a["wire"]).astype(int)
    assert len(np.unique(cells)) == len(cells)  # a cell fires once however often a looper passes


def test_energy_deposits_separate_particles_only_statistically(sample):
    def lepton_rc(kind):
        a = sample[kind]
        return flat(a["RC"][a["TRK"] >= 3])

    e, mu = lepton_rc("psip_ee"), lepton_rc("psip_mumu")
    assert 1.15 < np.median(e) / np.median(mu) < 1.45  # Fermi plateau vs relativistic rise
    assert np.mean(mu > np.median(e)) > 0.15  # hit by hit the Landau tails overlap
    assert np.mean(e) > np.median(e) * 1.05  # Landau-like upper tail
    # dE/dx curve: minimum near beta gamma 3.5, rising to a plateau, steep at low beta gamma
    bg = np.array([0.7, 3.5, 14.7, 3000.0])
    loss = dc.dedx(bg)
    assert loss[1] == pytest.approx(1.0, abs=0.01) and loss[0] > 1.8
    assert 1.1 < loss[2] < 1.2 and 1.4 < loss[3] < 1.5


def test_noise_hits_option(tmp_path):
    paths = generate("drift_chamber", tmp_path, 200, seed=2, noise_hits=8.0, classes=("continuum",))
    a = read_events(paths)
    noise = ak.sum(a["TRK"] == 0, axis=1)
    assert 6.5 < ak.mean(noise) < 9.5
    assert np.median(flat(a["RC"][a["TRK"] == 0])) < 0.5 * np.median(flat(a["RC"][a["TRK"] > 0]))
    with pytest.raises(ValueError, match="noise_hits"):
        generate("drift_chamber", tmp_path, 10, noise_hits=-1)


# --- reproducibility and formats -------------------------------------------------------------


def test_same_seed_same_arrays_and_rntuple(tmp_path):
    a = read_events(generate("drift_chamber", tmp_path / "a", 300, seed=5, classes=("psip_ee",)))
    b_paths = generate(
        "drift_chamber", tmp_path / "b", 300, seed=5, fmt="rntuple", events_per_file=100, classes=("psip_ee",)
    )
    with uproot.open(b_paths[0]) as f:
        assert isinstance(f["events"], uproot.models.RNTuple.Model_ROOT_3a3a_RNTuple)
    b = read_events(b_paths)
    c = read_events(generate("drift_chamber", tmp_path / "c", 300, seed=6, classes=("psip_ee",)))
    for name in HITS + TRACKS:
        assert ak.all(ak.flatten(a[name] == b[name])), name
    assert not np.array_equal(ak.to_numpy(a["trk_px"]), ak.to_numpy(c["trk_px"]))


# --- one entry per track --------------------------------------------------------------------


def test_tracks_carry_exactly_their_own_hits():
    chunk = dc.generate_chunk(np.random.default_rng(4), 300, "psip_mumu", noise_hits=3.0)
    tracks = dct.split_tracks(chunk)
    assert len(tracks["track_e"]["pid"]) == 0 and len(tracks["track_mu"]["pid"]) > 400
    a = ak.Array(chunk)
    trk = flat(a["TRK"]).astype(int)
    track_of_hit = np.repeat(np.arange(len(a)), ak.to_numpy(ak.num(a["TRK"]))) * 4 + trk - 1  # -1: noise
    hits_per_track = np.bincount(track_of_hit[trk > 0], minlength=4 * len(a))
    pid = np.abs(ak.to_numpy(a["trk_pid"]).reshape(-1))
    for prefix, code in (("track_mu", 13), ("track_pi", 211)):
        t = tracks[prefix]
        assert set(np.abs(t["pid"])) == {code} and ak.min(ak.num(t["RC"])) >= dct.MIN_HITS
        kept = (trk > 0) & (pid[track_of_hit] == code) & (hits_per_track[track_of_hit] >= dct.MIN_HITS)
        # the kept tracks hold exactly the event hits on such tracks, no noise hit among them
        np.testing.assert_array_equal(np.sort(flat(t["RT"])), np.sort(flat(a["RT"])[kept]))
        np.testing.assert_allclose(t["pt"], np.hypot(t["px"], t["py"]), rtol=1e-6)


def test_track_files_one_class_each(tmp_path):
    paths = generate("drift_chamber_tracks", tmp_path, 300, seed=2)
    assert [p.name for p in paths] == ["track_e_000.root", "track_mu_000.root", "track_pi_000.root"]
    arrays = {p.name.rsplit("_", 1)[0]: read_events([p]) for p in paths}
    assert set(arrays["track_e"].fields) >= {
        "layer",
        "wire",
        "XE",
        "YE",
        "XW",
        "YW",
        "RT",
        "RC",
        "px",
        "pt",
        "p",
        "pid",
    }
    for prefix, code in dct.PARTICLES.items():
        assert len(arrays[prefix]) == 300 and set(np.abs(ak.to_numpy(arrays[prefix]["pid"]))) == {code}
    p = {prefix: np.median(ak.to_numpy(a["p"])) for prefix, a in arrays.items()}
    assert p["track_pi"] < 0.6 < p["track_mu"] < p["track_e"] < 1.6  # muons also from the softer continuum


# --- jobs ----------------------------------------------------------------------------------------


def test_jobs_validate_and_encodings_are_overridable():
    from hepray.spec import load_job

    names = sorted(p.name for p in JOBS.glob("drift_chamber*.yaml"))
    assert names == [
        "drift_chamber_ee_vs_continuum.yaml",
        "drift_chamber_ee_vs_mumu.yaml",
        "drift_chamber_event_momentum.yaml",
        "drift_chamber_multiclass.yaml",
        "drift_chamber_mumu_vs_continuum.yaml",
        "drift_chamber_track_momentum.yaml",
        "drift_chamber_tracks.yaml",
    ]
    for name in names:
        for encoding in ("binary", "total", "average", "per_hit"):
            job = load_job(JOBS / name, [f"data.inputs.image.encoding={encoding}", "model.filters=8"])
            assert job.data.inputs["image"].encoding == encoding and job.model.filters == 8
            assert job.data.generate.kind.startswith("drift_chamber")
    assert load_job(JOBS / "drift_chamber_multiclass.yaml").data.class_names == list(dc.CLASSES)


def test_multiclass_job_runs_one_tiny_epoch(ray_session, tmp_path):
    from hepray.app.run import run_job
    from hepray.spec import load_job

    data = tmp_path / "data"
    overrides = [
        f"data.generate.out={data}",
        "data.generate.events=150",
        *(f"data.files.{kind}={data}/{kind}_*.root" for kind in dc.CLASSES),
        "data.inputs.image.size=32",
        "data.inputs.image.encoding=average",
        "model.filters=8",
        "model.blocks=2",
        "model.dense=16",
        "train.epochs=1",
        "train.batch_size=64",
    ]
    metrics = run_job(load_job(JOBS / "drift_chamber_multiclass.yaml", overrides), tmp_path / "run")
    assert metrics["events_read"] == 450 and metrics["epochs_run"] == 1
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and np.isfinite(metrics["val_loss"])
    assert (tmp_path / "run" / "model.onnx").stat().st_size > 0
