"""The calo3d sample generator (study 001): schema, physics sanity, reproducibility, and the job for one epoch."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from hepray.samples import calo3d, generate, known_kinds
from rootfiles import read_events

EVENTS = 200
PER_FILE = 150
CELLS = {"ecal": (25, 25, 25), "hcal": (5, 5, 60)}


def np_(array):
    return ak.to_numpy(array).astype(np.float64)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("calo3d")
    paths = generate("calo3d", out, EVENTS, seed=11, events_per_file=PER_FILE)
    arrays = {kind: read_events([p for p in paths if p.name.startswith(kind + "_")]) for kind in calo3d.PARTICLES}
    return {"out": out, "paths": paths, **arrays}


def test_files_one_kind_per_particle(sample):
    assert "calo3d" in known_kinds()
    names = [p.name for p in sample["paths"]]
    assert names == [f"{kind}_{i:03d}.root" for kind in calo3d.PARTICLES for i in range(2)]
    for kind in calo3d.PARTICLES:
        assert len(sample[kind]) == EVENTS


def test_schema(sample):
    with uproot.open(sample["paths"][0]) as f:
        tree = f["events"]
        assert set(tree.keys()) == set(calo3d.BRANCHES) | {"necal", "nhcal"}
        assert tree["energy"].typename == "float" and tree["pdg"].typename == "int32_t"
        for calo in CELLS:
            for axis in "xyz":
                assert tree[f"{calo}_{axis}"].typename == "uint8_t[]"
            assert tree[f"{calo}_e"].typename == "float[]"
            assert tree[f"{calo}_e"].count_branch.name == f"n{calo}"
    with uproot.open(next(p for p in sample["paths"] if p.name.startswith("pi0_"))) as f:
        assert set(f["events"].keys()) == set(calo3d.BRANCHES) | set(calo3d.PI0_BRANCHES) | {"necal", "nhcal"}


def test_cells_are_in_range_above_threshold_and_sum_up(sample):
    for kind in calo3d.PARTICLES:
        a = sample[kind]
        energy = np_(a["energy"])
        assert np.all((energy >= calo3d.E_MIN) & (energy < calo3d.E_MAX))
        for calo, shape in CELLS.items():
            for axis, size in zip("xyz", shape):
                assert ak.max(a[f"{calo}_{axis}"]) < size
            assert ak.min(a[f"{calo}_e"]) > calo3d.THRESHOLD[calo]
            np.testing.assert_allclose(np_(ak.sum(a[f"{calo}_e"], axis=1)), np_(a[f"{calo}_sum"]), rtol=1e-5)
            x, y, z = (ak.values_astype(a[f"{calo}_{axis}"], np.int64) for axis in "xyz")
            cell_id = (x * 256 + y) * 256 + z
            assert ak.all(ak.num(cell_id) == ak.num(ak.run_lengths(ak.sort(cell_id))))  # no cell twice
    assert set(np.abs(np_(sample["electron"]["pdg"]))) == {11}
    assert set(np_(sample["chpi"]["pdg"])) == {-211, 211}


def test_electron_response_is_linear_with_a_stochastic_term(sample):
    a = sample["electron"]
    energy = np_(a["energy"])
    total = np_(a["ecal_sum"]) + np_(a["hcal_sum"])
    slope, offset = np.polyfit(energy, total, 1)
    assert 0.93 < slope < 1.02 and abs(offset) < 3.0  # EM scale; the overlay adds ~1 GeV on average
    ratio = total / energy
    low, high = energy < 30, energy > 150
    assert abs(np.median(ratio[low]) - np.median(ratio[high])) < 0.04
    # sigma/E falls with energy: 17 %/sqrt(E) (+) overlay ~ 5-8 % at 10-30 GeV, ~1-2 % above 150 GeV
    spread_low = np.subtract(*np.percentile(ratio[low], [84, 16])) / 2
    spread_high = np.subtract(*np.percentile(ratio[high], [84, 16])) / 2
    assert 0.03 < spread_low < 0.12 and spread_high < 0.6 * spread_low
    assert np.median(np_(a["hcal_sum"]) / total) < 0.05  # EM showers stay in the ECAL


def test_photons_shower_later_and_pions_reach_the_hcal(sample):
    def mean_depth(a):
        return np_(ak.sum(a["ecal_e"] * a["ecal_z"], axis=1) / ak.sum(a["ecal_e"], axis=1))

    assert np.mean(mean_depth(sample["photon"])) > np.mean(mean_depth(sample["electron"])) + 0.4
    fraction = {
        kind: np.median(np_(sample[kind]["hcal_sum"]) / np_(sample[kind]["ecal_sum"] + sample[kind]["hcal_sum"]))
        for kind in calo3d.PARTICLES
    }
    assert fraction["chpi"] > 0.3 and fraction["chpi"] > 5 * max(
        fraction["electron"], fraction["photon"], fraction["pi0"]
    )
    # non-compensation and leakage: charged pions read low and fluctuate much more than electrons
    ratio = {
        kind: np_(sample[kind]["ecal_sum"] + sample[kind]["hcal_sum"]) / np_(sample[kind]["energy"])
        for kind in ("electron", "chpi")
    }
    assert np.median(ratio["chpi"]) < 0.9 * np.median(ratio["electron"])
    assert np.std(ratio["chpi"]) > 2 * np.std(ratio["electron"])


def test_pi0_photons_add_up_and_open_at_low_energy(sample):
    a = sample["pi0"]
    energy = np_(a["energy"])
    e1, e2, angle = np_(a["photon1_energy"]), np_(a["photon2_energy"]), np_(a["opening_angle"])
    np.testing.assert_allclose(e1 + e2, energy, rtol=1e-5)
    mass = np.sqrt(2 * e1 * e2 * (1 - np.cos(angle)))
    np.testing.assert_allclose(mass, calo3d.M_PI0, rtol=1e-3)
    assert np.all(angle >= 2 * calo3d.M_PI0 / energy * 0.999)  # the minimum opening angle
    separation = calo3d.DISTANCE * angle / calo3d.ECAL_CELL  # in ECAL cells at the face
    assert np.all(separation[energy < 20] > 3) and np.all(separation[energy > 300] < 1)

    def outside_core(b):  # ECAL energy outside the 5x5 columns around the hottest column, as a fraction
        n = len(b)
        counts = ak.to_numpy(ak.num(b["ecal_e"]))
        columns = np.zeros((n, 25, 25))
        np.add.at(
            columns,
            (
                np.repeat(np.arange(n), counts),
                ak.to_numpy(ak.flatten(b["ecal_x"])),
                ak.to_numpy(ak.flatten(b["ecal_y"])),
            ),
            ak.to_numpy(ak.flatten(b["ecal_e"])),
        )
        hot_x, hot_y = np.unravel_index(columns.reshape(n, -1).argmax(axis=1), (25, 25))
        near = (np.abs(np.arange(25)[None, :, None] - hot_x[:, None, None]) <= 2) & (
            np.abs(np.arange(25)[None, None, :] - hot_y[:, None, None]) <= 2
        )
        return 1 - (columns * near).sum(axis=(1, 2)) / columns.sum(axis=(1, 2))

    low = {kind: sample[kind][np_(sample[kind]["energy"]) < 25] for kind in ("pi0", "photon")}
    assert np.median(outside_core(low["pi0"])) > 1.5 * np.median(outside_core(low["photon"]))


def test_same_seed_same_arrays_other_seed_differs(tmp_path):
    one = read_events(generate("calo3d", tmp_path / "a", 60, seed=3, particles=("chpi",)))
    two = read_events(generate("calo3d", tmp_path / "b", 60, seed=3, particles=("chpi",), events_per_file=25))
    other = read_events(generate("calo3d", tmp_path / "c", 60, seed=4, particles=("chpi",)))
    for name in calo3d.BRANCHES:
        assert ak.all(one[name] == two[name]), name
    assert not np.array_equal(np_(one["energy"]), np_(other["energy"]))
    with pytest.raises(ValueError, match="muon"):
        generate("calo3d", tmp_path / "d", 10, particles=("muon",))


def test_rntuple_reads_back_the_same_arrays(tmp_path):
    tt = read_events(generate("calo3d", tmp_path / "tt", 40, seed=5, particles=("pi0",)))
    paths = generate("calo3d", tmp_path / "rn", 40, seed=5, fmt="rntuple", particles=("pi0",))
    with uproot.open(paths[0]) as f:
        assert isinstance(f["events"], uproot.models.RNTuple.Model_ROOT_3a3a_RNTuple)
    rn = read_events(paths)
    for name in tt.fields:
        assert ak.all(rn[name] == tt[name]), name


def test_job_runs_one_epoch_with_baseline_and_samples(sample, tmp_path, ray_session):
    from hepray.app.run import run_job
    from hepray.spec import load_job

    out = sample["out"]
    job = load_job(
        "jobs/calo3d.yaml",
        [
            f"data.generate.out={out}",
            f"data.generate.events={EVENTS}",
            f"data.files=[{out}/electron_*.root]",
            *(f"evaluate.samples.{kind}={out}/{kind}_*.root" for kind in ("photon", "pi0", "chpi")),
            "evaluate.bins.energy=[10, 50, 500]",
            "evaluate.plots=false",
            "model.filters=1",
            "model.dense=16",
            "train.epochs=1",
            "train.batch_size=32",
        ],
    )
    metrics = run_job(job, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["events_read"] == EVENTS
    for key in (
        "train_loss",
        "train_eval_loss",
        "val_loss",
        "test_iqr_rel",
        "baseline_linear_iqr_rel",
        "test_rIQR_vs_linear",
        "photon_iqr_rel",
        "pi0_baseline_linear_iqr_rel",
        "chpi_iqr_rel",
        "test_resolution_iqr@energy[10,50)",
    ):
        assert np.isfinite(metrics[key]), key
    # the summed energy, calibrated on electrons, reads charged pions low and broad
    assert metrics["chpi_baseline_linear_iqr_rel"] > 2 * metrics["baseline_linear_iqr_rel"]
