"""TTree and RNTuple read alike: names (nested RNTuple fields by their TTree spelling), entry
ranges on basket/cluster boundaries, bad input, and the electron-ID job's data and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from ray.data.block import BlockAccessor

from hepray.data.root_source import DataError, EventReader, plan_reads
from hepray.data.rootio import Events, entry_ranges
from hepray.samples import generate
from hepray.samples.common import write_file
from hepray.spec import JobSpec, load_job
from httpserver import FileServer
from rootfiles import etaphi_job, towers

ELECTRON_EVENTS = 300  # per class, one file each: one read task per split when events_per_task is large
JOBS = Path(__file__).resolve().parent.parent / "jobs"


def columns(job: JobSpec, split: str | None) -> dict[str, np.ndarray]:
    """Every column of every block of every read task, in plan order (what Ray's tasks yield)."""
    reader = EventReader(job.data, split)
    plan = plan_reads(job.data, reader.branches())
    batches = [BlockAccessor.for_block(block).to_numpy() for task in plan.tasks for block in reader.read(task)]
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def write_nested_rntuple(path, data: dict, cluster: int = 10**9) -> None:
    """An RNTuple as a user's `file[...] = {...}` writes it: towers as one record collection."""
    tower = ak.zip({"eta": data["tower_eta"], "phi": data["tower_phi"], "e": data["tower_e"]})
    table = ak.Array({**{k: v for k, v in data.items() if not k.startswith("tower_")}, "tower": tower})
    with uproot.recreate(path) as file:
        ntuple = file.mkrntuple("events", table.layout.form)
        for start in range(0, len(table), cluster):
            ntuple.extend(table[start : start + cluster])


def tower_job(path, **data) -> JobSpec:
    """A binary job reading the file as both of its classes (each event twice, once per label)."""
    return JobSpec.model_validate(etaphi_job({"a": str(path), "b": str(path)}, **data))


# ------------------------------------------------------------------ the electron-ID sample in both formats


@pytest.fixture(scope="module")
def electron_id(tmp_path_factory):
    root = tmp_path_factory.mktemp("electron_id")
    for fmt in ("ttree", "rntuple"):
        generate("electron_id", root / fmt, ELECTRON_EVENTS, seed=3, fmt=fmt)
    return root


def electron_job(root, fmt: str, *overrides: str) -> JobSpec:
    """The repository's electron-ID job over the files in root/fmt (a directory or a base URL)."""
    return load_job(
        JOBS / "electron_id.yaml",
        [
            f"data.files.electron={root}/{fmt}/electron_*.root",
            f"data.files.fake={root}/{fmt}/fake_*.root",
            "data.generate=null",
            *overrides,
        ],
    )


def test_generator_writes_ttree_by_default_and_rntuple_on_request(electron_id):
    for fmt, kind in (("ttree", uproot.TTree), ("rntuple", uproot.models.RNTuple.Model_ROOT_3a3a_RNTuple)):
        names = sorted(p.name for p in (electron_id / fmt).glob("*.root"))
        assert names == ["electron_000.root", "fake_000.root"]
        with uproot.open(electron_id / fmt / "fake_000.root") as file:
            assert isinstance(file["events"], kind) and file["events"].num_entries == ELECTRON_EVENTS


def test_electron_id_dataset_is_identical_event_by_event(electron_id):
    """Same seed, same events: every column of every split (images included) is bitwise equal,
    read in ranges of 50 events."""
    for split in ("train", "val", "test"):
        ttree = columns(electron_job(electron_id, "ttree", "data.events_per_task=100"), split)
        rntuple = columns(electron_job(electron_id, "rntuple", "data.events_per_task=100"), split)
        assert set(ttree) == set(rntuple) >= {"entry", "label", "image", "obs_ele_pt", "obs_ele_eta"}
        assert len(ttree["entry"]) > 30
        for name in ttree:
            assert np.array_equal(ttree[name], rntuple[name]), (split, name)
    assert ttree["image"].shape[1:] == (1, 47, 47) and ttree["image"].max() > 0


# ------------------------------------------------------------------ nested RNTuple fields


def test_nested_rntuple_fields_answer_to_ttree_branch_names(tmp_path):
    """`tower_eta` reads `tower.eta`, `ntower` counts `tower`: same job, same events as the TTree."""
    data = towers(400, 0, seed=11)
    write_file(tmp_path / "tree.root", [data])  # TTree: tower_eta, tower_phi, tower_e, counter ntower
    write_nested_rntuple(tmp_path / "ntuple.root", data)
    with uproot.open(tmp_path / "ntuple.root") as file:
        assert {"tower", "tower.eta", "tower.e"} <= set(file["events"].keys())
        assert "tower_eta" not in file["events"].keys() and "ntower" not in file["events"].keys()
    outputs = []
    for name in ("tree.root", "ntuple.root"):
        job = tower_job(tmp_path / name, cut="ntower >= 6", observers=["evt", "ntower"], events_per_task=150)
        outputs.append(columns(job, None))
    tree, ntuple = outputs
    assert len(tree["entry"]) == 2 * int(np.sum(ak.num(data["tower_e"]) >= 6)) and np.all(tree["obs_ntower"] >= 6)
    for name in tree:
        assert np.array_equal(tree[name], ntuple[name]), name

    # The dotted field names work too, outside expressions.
    job = tower_job(tmp_path / "ntuple.root", cut="ntower >= 6", observers=["evt"], events_per_task=150)
    job.data.inputs["image"].points[0].eta = "tower.eta"
    assert np.array_equal(columns(job, None)["image"], tree["image"])


# ------------------------------------------------------------------ planning from metadata


def test_entry_ranges_sit_on_boundaries_near_the_target_size():
    assert entry_ranges(np.array([0, 300, 600, 900, 1000]), 500) == [(0, 600), (600, 1000)]
    assert entry_ranges(np.array([0, 300, 600, 900, 1000]), 100) == [
        (0, 100),
        (100, 200),
        (200, 300),
        (300, 400),
        (400, 500),
        (500, 600),
        (600, 700),
        (700, 800),
        (800, 900),
        (900, 1000),
    ]
    # A cluster much longer than the target is cut into equal parts; one of 1.4x is kept whole.
    assert entry_ranges(np.array([0, 1000]), 300) == [(0, 333), (333, 666), (666, 1000)]
    assert entry_ranges(np.array([0, 1400, 1500]), 1000) == [(0, 1400), (1400, 1500)]
    assert entry_ranges(np.array([0]), 10) == []


@pytest.mark.parametrize("fmt", ["ttree", "rntuple"])
def test_read_tasks_follow_baskets_and_clusters(tmp_path, fmt):
    """Files written in chunks of 250 (one basket or cluster each): ranges start and stop on
    chunk boundaries, and every entry is read exactly once per label group."""
    data = towers(1000, 0, seed=12)
    chunks = [{k: v[s : s + 250] for k, v in data.items()} for s in range(0, 1000, 250)]
    if fmt == "ttree":
        write_file(tmp_path / "f.root", chunks)
    else:
        write_nested_rntuple(tmp_path / "f.root", data, cluster=250)
    with uproot.open(tmp_path / "f.root") as file:
        events = Events(file, str(tmp_path / "f.root"), "events")
        assert events.boundaries({"evt", "tower_e", "ntower"}).tolist() == [0, 250, 500, 750, 1000]
    # Two label groups: ranges of events_per_task / 2 entries.
    for events_per_task, expected in ((600, [0, 250, 500, 750, 1000]), (800, [0, 500, 1000]), (160, None)):
        job = tower_job(tmp_path / "f.root", events_per_task=events_per_task)
        plan = plan_reads(job.data, EventReader(job.data, None).branches())
        edges = sorted({r.start for task in plan.tasks for r in task} | {1000})
        if expected is not None:
            assert edges == expected
        else:  # clusters of 3x the target are cut, into parts of 83 or 84
            assert set(np.diff(edges)) <= {83, 84}
        assert np.array_equal(np.sort(columns(job, None)["obs_evt"]), np.repeat(np.arange(1000), 2))


# ------------------------------------------------------------------ bad input in an RNTuple


def test_rntuple_bad_input_names_file_field_and_range(tmp_path):
    data = towers(200, 0, seed=13)
    write_nested_rntuple(tmp_path / "good.root", data)
    with pytest.raises(DataError, match=r"good.root: RNTuple 'events' has no field 'nope'"):
        columns(tower_job(tmp_path / "good.root", observers=["evt", "nope"]), None)

    energy = ak.to_numpy(ak.flatten(data["tower_e"])).copy()
    energy[int(ak.sum(ak.num(data["tower_e"])[:57]))] = np.inf
    write_nested_rntuple(
        tmp_path / "inf.root", {**data, "tower_e": ak.unflatten(energy, ak.num(data["tower_e"]))}, cluster=100
    )
    with pytest.raises(
        DataError,
        match=r"inf.root: entries \[0, 100\): branch 'tower_e' has 1 NaN/inf values "
        r"\(first at entry 57\)",
    ):
        columns(tower_job(tmp_path / "inf.root", events_per_task=200), None)

    whole = (tmp_path / "good.root").read_bytes()
    (tmp_path / "cut.root").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.root: ('events' cannot be read|cannot be opened as a ROOT file) \(\w+"):
        columns(tower_job(tmp_path / "cut.root"), None)

    with uproot.recreate(tmp_path / "hist.root") as file:
        file["events"] = np.histogram(np.arange(10.0))
    with pytest.raises(DataError, match=r"hist.root: 'events' is a TH1D, not a TTree or RNTuple"):
        columns(tower_job(tmp_path / "hist.root"), None)


# ------------------------------------------------------------------ the job on both formats


def test_electron_id_job_on_ttree_and_on_rntuple_over_http(ray_session, electron_id, tmp_path):
    """One tiny run per format, same seed: the TTree files from disk, the RNTuple files from a
    loopback HTTP server (globbed through its directory listing). The inputs are identical (test
    above) and blocks reach the worker in plan order, so the two trainings are the same and every
    metric agrees: the data's, the baseline's and the network's."""
    from hepray.app.run import run_job

    tiny = [
        "model.filters=4",
        "model.blocks=1",
        "model.dense=8",
        "train.epochs=2",
        "train.batch_size=64",
        "data.events_per_task=100",
        "scaling.num_workers=1",
        "evaluate.robustness=null",
    ]
    run_job(electron_job(electron_id, "ttree", *tiny), tmp_path / "ttree")
    with FileServer(electron_id) as server:
        run_job(electron_job(server.url, "rntuple", *tiny), tmp_path / "rntuple")
        assert server.bytes_sent > 0
    ttree, rntuple = (json.loads((tmp_path / fmt / "metrics.json").read_text()) for fmt in ("ttree", "rntuple"))
    assert sorted(ttree) == sorted(rntuple)
    assert {"events_read", "baseline_cuts_rej", "test_auc", "val_loss", "train_loss"} <= set(ttree)
    assert ttree["events_read"] == 2 * ELECTRON_EVENTS and ttree["test_auc"] > 0.6
    # Timings, and the ONNX check's rounding error on whichever test batch its actor scored first.
    unordered = {key for key in ttree if key.endswith(("seconds", "_per_s")) or key.startswith("onnx_")}
    for key in sorted(set(ttree) - unordered):
        assert ttree[key] == pytest.approx(rntuple[key], rel=1e-6, abs=1e-9), key
