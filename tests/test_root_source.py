"""The ROOT datasource: every entry exactly once, projection, cuts, labels, a stable split, bad input."""

from __future__ import annotations

import os

import awkward as ak
import numpy as np
import pytest
import uproot

from hepray.data.pipeline import build_dataset
from hepray.data.root_source import DataError, EventReader, plan_reads, split_of
from hepray.data.rootio import OpenTrees, read_arrays
from hepray.spec import JobSpec
from rootfiles import etaphi_job, towers, write_tree


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two signal files (1000 + 700 events) and one background file (900), ids unique."""
    root = tmp_path_factory.mktemp("towers")
    write_tree(root / "sig_0.root", towers(1000, 0, seed=1))
    write_tree(root / "sig_1.root", towers(700, 1000, seed=2))
    write_tree(root / "bkg_0.root", {**towers(900, 5000, seed=3), "junk": np.full(900, np.nan)})
    return root


def make_job(files, **data) -> JobSpec:
    return JobSpec.model_validate(
        etaphi_job({"sig": str(files / "sig_*.root"), "bkg": str(files / "bkg_*.root")}, **data)
    )


def read_all(job: JobSpec, split: str | None) -> dict[str, np.ndarray]:
    """Run every read task of the plan in-process (what each Ray read task does)."""
    reader = EventReader(job.data, split)
    plan = plan_reads(job.data, reader.branches())
    blocks = [block for task in plan.tasks for block in reader.read(task)]
    return {
        name: np.concatenate([block[name].to_numpy() for block in blocks]) for name in ("obs_evt", "label", "obs_x")
    }


@pytest.mark.parametrize("events_per_task", [pytest.param(1, marks=pytest.mark.slow), 97, 500, 100000])  # 1: 2600 reads
def test_every_entry_read_exactly_once_for_any_task_size(files, events_per_task):
    job = make_job(files, events_per_task=events_per_task)
    ids = read_all(job, None)["obs_evt"]
    expected = np.concatenate([np.arange(0, 1700), np.arange(5000, 5900)])
    assert np.array_equal(np.sort(ids), expected)


def test_read_tasks_mix_the_label_groups(files):
    job = make_job(files, events_per_task=400)
    plan = plan_reads(job.data, EventReader(job.data, None).branches())
    assert len(plan.tasks) > 2
    assert all({r.label for r in task} == {0, 1} for task in plan.tasks[:2])
    assert plan.events == 2600 and plan.files == 3


def test_only_needed_branches_are_read(files):
    """The background file's all-NaN branch would fail validation if it were read."""
    job = make_job(files)
    assert EventReader(job.data, None).branches() == {
        "evt",
        "x",
        "cand_eta",
        "cand_phi",
        "tower_eta",
        "tower_phi",
        "tower_e",
    }
    assert len(read_all(job, None)["obs_evt"]) == 2600


def test_cut_and_labels(files):
    job = make_job(files, cut="x > 0.5 and evt % 2 == 0")
    out = read_all(job, None)
    assert np.all(out["obs_x"] > 0.5) and np.all(out["obs_evt"] % 2 == 0)
    truth = []
    for name in ("sig_0", "sig_1", "bkg_0"):
        arrays = uproot.open(files / f"{name}.root")["events"].arrays(["x", "evt"], library="np")
        truth.append(((arrays["x"] > 0.5) & (arrays["evt"] % 2 == 0)).sum())
    assert len(out["obs_evt"]) == sum(truth)
    assert np.array_equal(out["label"], (out["obs_evt"] >= 5000).astype(int))


def test_label_from_branch(files, tmp_path):
    data = towers(300, 0, seed=5)
    data["is_signal"] = (data["x"] > 0.3).astype(np.int32)
    write_tree(tmp_path / "mixed.root", data)
    job = JobSpec.model_validate(
        etaphi_job([str(tmp_path / "mixed.root")], label_branch="is_signal", classes=["bkg", "sig"])
    )
    out = read_all(job, None)
    assert np.array_equal(out["label"], (out["obs_x"] > 0.3).astype(int))


def test_split_is_a_stable_partition(files):
    by_split = {s: set(read_all(make_job(files, events_per_task=300), s)["obs_evt"]) for s in ("train", "val", "test")}
    again = set(read_all(make_job(files, events_per_task=77), "val")["obs_evt"])
    assert by_split["val"] == again
    assert sum(map(len, by_split.values())) == 2600
    assert set.union(*by_split.values()) == set(range(1700)) | set(range(5000, 5900))
    assert 0.10 < len(by_split["val"]) / 2600 < 0.20 and 0.10 < len(by_split["test"]) / 2600 < 0.20
    # A different seed gives a different partition.
    other = set(read_all(make_job(files, split={"seed": 7}), "val")["obs_evt"])
    assert other != by_split["val"]
    u = split_of("a.root", np.arange(100000), 1)
    assert 0.49 < np.mean(u < 0.5) < 0.51


def test_through_ray_data(ray_session, files):
    job = make_job(files, events_per_task=250)
    reader = EventReader(job.data, None)
    plan = plan_reads(job.data, reader.branches())
    dataset = build_dataset(job.data, "train", plan)
    rows = 0
    ids = []
    for batch in dataset.iter_batches(batch_size=128, batch_format="numpy"):
        assert batch["image"].shape[1:] == (1, 9, 9)
        assert batch["image"].dtype == np.float32
        rows += len(batch["label"])
        ids.append(batch["obs_evt"])
    assert rows == len(set(read_all(job, "train")["obs_evt"]))
    assert len(np.unique(np.concatenate(ids))) == rows


# ------------------------------------------------------------------ bad input


def bad_job(path, **data) -> JobSpec:
    return JobSpec.model_validate(etaphi_job({"sig": str(path), "bkg": str(path)}, **data))


def bad_read(job: JobSpec):
    reader = EventReader(job.data, None)
    plan = plan_reads(job.data, reader.branches())
    return [block for task in plan.tasks for block in reader.read(task)]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere_\*\.root: no such file"):
        bad_read(bad_job(tmp_path / "nothere_*.root"))


def test_truncated_file(files, tmp_path):
    data = (files / "sig_0.root").read_bytes()
    (tmp_path / "cut.root").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as error:
        bad_read(bad_job(tmp_path / "cut.root"))
    assert "cut.root" in str(error.value)


def test_missing_branch(files):
    job = bad_job(files / "sig_0.root", observers=["evt", "nope"])
    with pytest.raises(DataError, match=r"sig_0.root: tree 'events' has no branch 'nope'"):
        bad_read(job)


def test_wrong_branch_type(files):
    per_event_as_points = bad_job(files / "sig_0.root")
    per_event_as_points.data.inputs["image"].points[0].value = "x"
    with pytest.raises(
        DataError,
        match=r"sig_0.root: entries \[0, \d+\): input 'image': branch 'x': expected a list of numbers per event",
    ):
        bad_read(per_event_as_points)
    points_as_observer = bad_job(files / "sig_0.root", observers=["tower_e"])
    with pytest.raises(DataError, match=r"sig_0.root: entries \[0, \d+\): 'tower_e' has a list of values per event"):
        bad_read(points_as_observer)


def test_a_string_branch_is_named_as_not_numbers(tmp_path):
    data = towers(20, 0, seed=3)
    data["run_tag"] = ak.Array([f"run{i % 3}" for i in range(20)])
    write_tree(tmp_path / "tagged.root", data)
    with pytest.raises(
        DataError, match=r"tagged.root: entries \[0, 20\): branch 'run_tag' has type .*string.*, expected numbers"
    ):
        bad_read(bad_job(tmp_path / "tagged.root", observers=["run_tag"]))


def test_empty_tree(tmp_path):
    write_tree(tmp_path / "empty.root", {k: v[:0] for k, v in towers(5, 0, seed=1).items()})
    with pytest.raises(DataError, match="empty.root: tree 'events' has no entries"):
        bad_read(bad_job(tmp_path / "empty.root"))


def test_nan_values(tmp_path):
    data = towers(200, 0, seed=4)
    energy = ak.to_numpy(ak.flatten(data["tower_e"])).copy()
    first_of_event_57 = int(ak.sum(ak.num(data["tower_e"])[:57]))
    energy[first_of_event_57] = np.nan
    data["tower_e"] = ak.unflatten(energy, ak.num(data["tower_e"]))
    write_tree(tmp_path / "nan.root", data)
    with pytest.raises(
        DataError, match=r"nan.root: entries \[0, 100\): branch 'tower_e' has 1 NaN/inf values \(first at entry 57\)"
    ):
        bad_read(bad_job(tmp_path / "nan.root", events_per_task=200))


def test_jagged_counts_disagree(tmp_path):
    data = towers(50, 0, seed=6)
    counts = ak.num(data["tower_e"]).to_numpy().copy()
    counts[10] += 1
    data["tower_e"] = ak.unflatten(np.ones(int(counts.sum())), counts)
    # Separate counters: write the energies under another collection name.
    data["cell_e"] = data.pop("tower_e")
    write_tree(tmp_path / "ragged.root", data)
    job = JobSpec.model_validate(etaphi_job({"a": str(tmp_path / "ragged.root"), "b": str(tmp_path / "ragged.root")}))
    job.data.inputs["image"].points[0].value = "cell_e"
    with pytest.raises(
        DataError,
        match=r"ragged.root: entries \[0, 50\): input 'image': branches 'tower_eta' and 'cell_e' have different numbers of points",
    ):
        bad_read(job)


def test_skip_mode_counts_what_it_skips(ray_session, files, tmp_path):
    """A bad file is skipped at planning, a NaN event at reading, a NaN observer is kept; all are
    counted, the rest is read."""
    data = towers(100, 9000, seed=8)
    data["x"] = np.where(np.arange(100) == 3, np.nan, data["x"])  # an observer: kept, counted
    energy = ak.to_numpy(ak.flatten(data["tower_e"])).copy()
    energy[int(ak.sum(ak.num(data["tower_e"])[:40]))] = np.inf  # event 40's first tower: skipped
    data["tower_e"] = ak.unflatten(energy, ak.num(data["tower_e"]))
    write_tree(tmp_path / "sig_nan.root", data)
    (tmp_path / "sig_broken.root").write_bytes(b"not a root file")
    job = JobSpec.model_validate(
        etaphi_job(
            {"sig": [str(files / "sig_0.root"), str(tmp_path / "sig_*.root")], "bkg": str(files / "bkg_0.root")},
            on_error="skip",
            events_per_task=200,
        )
    )
    from hepray.app.job_data import build_job_data

    data = build_job_data(job, splits=("train", "val", "test"))
    total = sum(data.datasets[s].count() for s in ("train", "val", "test"))
    report = data.skip_report()
    assert total == 1999
    assert report["events_skipped"] == 1 and report["ranges_skipped"] == 1 and report["observers_nonfinite"] == 1
    assert any("sig_broken.root" in reason for reason in report["skipped"])
    assert (
        f"{tmp_path}/sig_nan.root: entries [0, 100): 1 event skipped: branch 'tower_e' is NaN/inf (first at entry 40)"
        in report["skipped"]
    )
    # Only the splits streamed to the trainers drop Ray Data's operator reservation (pipeline.py).
    assert [data.datasets[s].context.op_resource_reservation_enabled for s in ("train", "val", "test")] == [
        False,
        False,
        True,
    ]


def test_branch_names_as_files_have_them(tmp_path):
    """A Delphes-like tree in a subdirectory: a cut on `Event.Weight`, a branch named `log`, and
    points from `Jet.PT` (a dotted name, backquoted in expressions)."""
    from hepray.data.batches import to_tensors
    from hepray.spec import DataSpec

    pt = ak.Array([[30.0, 10.0], [5.0], [50.0, 40.0, 1.0], []])
    with uproot.recreate(tmp_path / "delphes.root") as file:
        file.mktree("dir/Delphes", {"Jet.PT": pt.type, "Event.Weight": np.float64, "log": np.float64})
        file["dir/Delphes"].extend(
            {"Jet.PT": pt, "Event.Weight": np.array([1.0, 2.0, 3.0, 4.0]), "log": np.array([0.5, 0.6, 0.7, 0.8])}
        )
    spec = DataSpec.model_validate(
        {
            "files": [str(tmp_path / "delphes.root")],
            "tree": "dir/Delphes",
            "cut": "`Event.Weight` > 1.5",
            "observers": ["log"],
            "split": {"val": 0.0, "test": 0.0},
            "inputs": {"jets": {"kind": "points", "features": ["`Jet.PT`", "log(`Jet.PT`)"], "max": 2}},
        }
    )
    reader = EventReader(spec, None)
    assert reader.branches() == {"Jet.PT", "Event.Weight", "log"}
    plan = plan_reads(spec, reader.branches())
    tensors = to_tensors(next(block for task in plan.tasks for block in reader.read(task)))
    np.testing.assert_array_equal(tensors["entry"].numpy(), [1, 2, 3])
    np.testing.assert_allclose(tensors["obs_log"].numpy(), [0.6, 0.7, 0.8], rtol=1e-6)
    np.testing.assert_allclose(tensors["jets"][1].numpy(), [[1, 50, np.log(50)], [1, 40, np.log(40)]], rtol=1e-6)


def test_zlib_baskets_are_inflated_by_isal_to_the_same_arrays(tmp_path, monkeypatch):
    import isal.isal_zlib

    from hepray.data import rootio

    assert rootio.ISAL_INFLATE and uproot.compression._DecompressZLIB.library == "isal"
    assert uproot.ZLIB.library == "zlib"  # files hepray writes are compressed as before
    events = towers(500, 0, seed=4)
    with uproot.recreate(tmp_path / "zlib.root", compression=uproot.ZLIB(6)) as file:
        file["events"] = events
    inflated, inflate = [], isal.isal_zlib.decompress
    monkeypatch.setattr(isal.isal_zlib, "decompress", lambda *args, **kw: inflated.append(1) or inflate(*args, **kw))
    with uproot.open(tmp_path / "zlib.root") as file:
        read = file["events"].arrays()
    assert inflated  # the baskets went through ISA-L, and gave the arrays written
    for name, values in events.items():
        assert ak.all(ak.ravel(read[name]) == ak.ravel(ak.Array(values))), name


# ------------------------------------------------------------------ trees kept open between reads


def test_open_trees_reopen_a_rewritten_file_and_stay_bounded(tmp_path):
    """A read task's process keeps the last files' trees open; a file written again is read anew,
    a file gone is still the read's own error, and at most `size` files stay open."""
    trees = OpenTrees(size=2)
    path = write_tree(tmp_path / "a.root", {"x": np.arange(10, dtype=np.float64)})
    first = trees.get(str(path), "events")
    assert trees.get(str(path), "events") is first  # kept open: no second open
    write_tree(path, {"x": np.arange(20, dtype=np.float64) * 2})
    again = trees.get(str(path), "events")
    assert again is not first and np.array_equal(ak.to_numpy(again.arrays(["x"], 0, 20)["x"]), np.arange(20) * 2)
    for name in ("b", "c"):
        trees.get(str(write_tree(tmp_path / f"{name}.root", {"x": np.ones(3)})), "events")
    assert len(trees.trees) == 2 and again.file.closed  # the least recently read is closed
    assert trees.get(str(tmp_path / "missing.root"), "events") is None
    assert trees.get(str(path), "no_such_tree") is None


def test_a_file_damaged_while_kept_open_is_one_data_error(tmp_path):
    """Bytes overwritten in place, size and mtime kept: the kept tree's read fails, and the read
    is done again the usual way, whose error names the file."""
    path = write_tree(tmp_path / "a.root", towers(300, 0, seed=1))
    assert len(read_arrays(str(path), "events", ["tower_e"], 0, 300)["tower_e"]) == 300  # now kept open
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[1000:-2000] = bytes(len(data) - 3000)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match=r"a\.root"):
        read_arrays(str(path), "events", ["tower_e"], 0, 300)
