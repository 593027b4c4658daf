"""`hepray predict` on a real local Ray: a model trained once, then scored over new files."""

from __future__ import annotations

import json
import re

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import uproot
from typer.testing import CliRunner

from hepray.app.predict import TREE, OrderedOutputs, OutputSchema, predict_files
from hepray.app.run import run_job
from hepray.cli import app
from hepray.evaluate.inference import load_model
from hepray.inputs import make_input
from hepray.spec import JobSpec
from rootfiles import etaphi_job, towers, write_tree

CUT = "x > 0.3"


@pytest.fixture(scope="module")
def run_dir(ray_session, tmp_path_factory):
    """A tiny binary model (narrow vs wide showers) trained for one epoch, with a cut and on_error: skip."""
    root = tmp_path_factory.mktemp("train")
    write_tree(root / "narrow.root", towers(300, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(root / "wide.root", towers(300, 1000, seed=2, energy=2.0, spread=0.12))
    raw = etaphi_job(
        {"narrow": str(root / "narrow.root"), "wide": str(root / "wide.root")},
        cut=CUT,
        on_error="skip",
        events_per_task=100,
    )
    raw["train"] = {"epochs": 1, "batch_size": 64}
    raw["evaluate"] = {"plots": False}
    out = tmp_path_factory.mktemp("run")
    run_job(JobSpec.model_validate(raw), out)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two files to score, an empty one, and one with a NaN in entries [100, 200)."""
    root = tmp_path_factory.mktemp("inputs")
    write_tree(root / "a.root", towers(230, 5000, seed=7, spread=0.05))
    write_tree(root / "b.root", towers(120, 6000, seed=8, spread=0.08))
    write_tree(root / "empty.root", {name: value[:0] for name, value in towers(3, 0, seed=9).items()})
    broken = towers(250, 7000, seed=10)
    energies = ak.to_numpy(ak.flatten(broken["tower_e"]))
    energies[int(ak.sum(ak.num(broken["tower_e"])[:150]))] = np.nan  # first tower of entry 150
    broken["tower_e"] = ak.unflatten(energies, ak.num(broken["tower_e"]))
    write_tree(root / "broken.root", broken)
    return root


@pytest.fixture(scope="module")
def predicted(run_dir, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted")
    report = predict_files(run_dir, [str(inputs / "[ae]*.root"), str(inputs / "b.root")], out)
    return out, report


def direct_scores(run_dir, path) -> np.ndarray:
    """The model applied in plain PyTorch to every entry of a file: sigmoid of the logit."""
    model, job = load_model(run_dir / "model.pt")
    spec = job.data.inputs["image"]
    arrays = uproot.open(path)["events"].arrays(["cand_eta", "cand_phi", "tower_eta", "tower_phi", "tower_e"], how=dict)
    with torch.no_grad():
        logits = model({"image": torch.from_numpy(make_input(spec, arrays))}).numpy()
    return 1 / (1 + np.exp(-logits[:, 0]))


def test_one_output_per_file_in_entry_order(run_dir, inputs, predicted):
    out, report = predicted
    assert sorted(p.name for p in out.glob("*.root")) == ["a.root", "b.root", "empty.root"]
    assert report.events == 350 and report.events_skipped == 0 and report.files_skipped == 0
    for name, n in (("a", 230), ("b", 120)):
        scores = uproot.open(out / f"{name}.root")[TREE].arrays(library="np")
        assert set(scores) == {"entry", "score_wide", "pass_cut", "evt", "x"}
        assert np.array_equal(scores["entry"], np.arange(n))
        assert np.allclose(scores["score_wide"], direct_scores(run_dir, inputs / f"{name}.root"), atol=1e-5)
    assert uproot.open(out / "empty.root")[TREE].num_entries == 0
    assert json.loads((out / "predict.json").read_text())["events"] == 350


def test_friend_tree_join_in_uproot(inputs, predicted):
    out, _ = predicted
    events = uproot.open(inputs / "a.root")["events"].arrays(["evt", "x"])
    scores = uproot.open(out / "a.root")[TREE].arrays()
    joined = ak.zip({"evt": events.evt, "x": events.x, "score": scores.score_wide, "pass_cut": scores.pass_cut})
    assert np.array_equal(ak.to_numpy(joined.evt), ak.to_numpy(scores.evt).astype(np.int64))  # observers ride along
    assert np.array_equal(ak.to_numpy(joined.pass_cut), ak.to_numpy(events.x) > 0.3)  # every entry kept, cut flagged
    assert 0 < ak.sum(joined.pass_cut) < len(joined)


def test_onnx_engine_and_parquet_via_cli(run_dir, inputs, predicted, tmp_path):
    out, _ = predicted
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(run_dir),
            "--files",
            str(inputs / "a.root"),
            "--files",
            str(inputs / "b.root"),
            "--out",
            str(tmp_path),
            "--format",
            "parquet",
            "--engine",
            "onnx",
            "--batch-size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        onnx = pq.read_table(tmp_path / f"{name}.parquet").to_pydict()
        torch_engine = uproot.open(out / f"{name}.root")[TREE].arrays(library="np")
        assert np.array_equal(onnx["entry"], torch_engine["entry"])
        assert np.allclose(onnx["score_wide"], torch_engine["score_wide"], atol=1e-5)


def test_bad_range_is_skipped_as_nan_rows(run_dir, inputs, tmp_path):
    report = predict_files(run_dir, [str(inputs / "broken.root")], tmp_path, observers=[])
    start, stop = map(int, re.search(r"broken.root: entries \[(\d+), (\d+)\)", report.skipped[0]).groups())
    assert start <= 150 < stop and stop - start < 250  # the one read range holding the NaN, not the file
    assert report.events == 250 and report.events_skipped == stop - start
    scores = uproot.open(tmp_path / "broken.root")[TREE].arrays(library="np")
    assert set(scores) == {"entry", "score_wide", "pass_cut"}
    assert np.array_equal(scores["entry"], np.arange(250))  # still a friend of the input tree
    assert np.array_equal(np.isnan(scores["score_wide"]), (scores["entry"] >= start) & (scores["entry"] < stop))


def test_ordered_outputs_split_batches_across_files_and_fill_gaps(tmp_path):
    """The driver-side writer alone: batches spanning two files, a missing range, an empty file."""
    job = JobSpec.model_validate(etaphi_job({"narrow": "n.root", "wide": "w.root"}, cut=CUT))
    schema = OutputSchema(job, ["evt"])
    paths, entries = ["a.root", "empty.root", "b.root"], {"a.root": 5, "empty.root": 0, "b.root": 4}
    outputs = [tmp_path / name for name in paths]
    ordered = OrderedOutputs(paths, outputs, entries, "root", schema)

    def batch(file_index, entry):
        n = len(entry)
        return np.array(file_index), {
            "entry": np.array(entry),
            "score_wide": np.full(n, 0.5, np.float32),
            "pass_cut": np.ones(n, bool),
            "evt": np.arange(n, dtype=np.float32),
        }

    ordered.write(*batch([0, 0], [0, 1]))
    ordered.write(*batch([0, 2, 2], [4, 0, 1]))  # entries 2, 3 of a.root never arrived; spans into b.root
    with pytest.raises(RuntimeError, match="out of entry order"):
        ordered.write(*batch([2], [1]))
    ordered.write(*batch([2], [3]))
    ordered.finish()
    a = uproot.open(outputs[0])[TREE].arrays(library="np")
    assert np.array_equal(a["entry"], np.arange(5))
    assert np.array_equal(np.isnan(a["score_wide"]), [False, False, True, True, False])
    assert np.array_equal(a["pass_cut"], [True, True, False, False, True])
    assert uproot.open(outputs[1])[TREE].num_entries == 0
    b = uproot.open(outputs[2])[TREE].arrays(library="np")
    assert np.array_equal(b["entry"], np.arange(4)) and np.isnan(b["score_wide"][2])
    assert ordered.filled == 3 and not list(tmp_path.glob("*.partial"))
