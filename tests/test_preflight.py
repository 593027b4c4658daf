"""Preflight (GitHub issue 17): everything a job names is checked before Ray starts, from file
metadata only, by `hepray validate`, `run`, `submit` and `tune` alike; `validate` prints the plan.
No test here starts Ray."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from test_errors import assert_one_error_line
from typer.testing import CliRunner

from hepray.app.preflight import check_job, named_branches
from hepray.cli import app
from hepray.spec import TRACK_OBSERVERS, validate_job
from rootfiles import etaphi_job, towers, write_tree


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tower files of two classes (two files of `narrow`), one in a subdirectory tree, an RNTuple."""
    root = tmp_path_factory.mktemp("preflight")
    write_tree(root / "narrow_0.root", towers(300, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(root / "narrow_1.root", towers(200, 300, seed=2, energy=4.0, spread=0.02))
    write_tree(root / "wide.root", towers(400, 1000, seed=3, energy=2.0, spread=0.12))
    write_tree(root / "nested.root", towers(100, 2000, seed=4), tree="dir/events")
    without_x = towers(100, 3000, seed=5)
    del without_x["x"]
    write_tree(root / "without_x.root", without_x)
    rntuple = towers(100, 4000, seed=6)
    table = ak.Array(
        {
            **{k: v for k, v in rntuple.items() if not k.startswith("tower_")},
            "tower": ak.zip({k.removeprefix("tower_"): v for k, v in rntuple.items() if k.startswith("tower_")}),
        }
    )
    with uproot.recreate(root / "ntuple.root") as file:
        file.mkrntuple("events", table.layout.form).extend(table)
    return root


def job_raw(data, **changes) -> dict:
    raw = etaphi_job({"narrow": str(data / "narrow_*.root"), "wide": str(data / "wide.root")}, cut="e_sum > 0.5")
    raw["train"] = {"early_stopping": {"metric": "val_auc", "mode": "max"}}
    raw["evaluate"] = {
        "bins": {"x": [0, 0.5, 1]},
        "baselines": {"sum": "e_sum", "cuts": {"kind": "cuts", "vars": {"x": "above"}}},
    }
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return raw


def invoke(tmp_path, raw: dict, command: str = "validate", *args: str):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = CliRunner().invoke(app, [command, str(path), *args])
    assert "Traceback" not in result.output
    return result, path


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ------------------------------------------------------------------ files: branches exist, trees found


def test_misspelt_branch_is_one_line_naming_file_branch_key_and_the_close_name(data, tmp_path):
    line = one_error_line(invoke(tmp_path, job_raw(data, **{"data.cut": "e_summ > 0.5"}))[0])
    assert line == (
        f"error: {data / 'narrow_0.root'} (and 2 more files): tree 'events' has no branch 'e_summ' "
        "(data.cut; did you mean 'e_sum'?)"
    )
    line = one_error_line(invoke(tmp_path, job_raw(data, **{"data.observers": ["evt", "x", "foo", "tower_ee"]}))[0])
    assert "has no branches 'foo' (data.observers), 'tower_ee' (data.observers; did you mean 'tower_e'?)" in line
    raw = job_raw(data)
    raw["data"]["inputs"]["image"]["center"]["eta"] = "cand_etaa"
    assert "'cand_etaa' (data.inputs.image; did you mean 'cand_eta'?)" in one_error_line(invoke(tmp_path, raw)[0])
    raw = job_raw(data, **{"evaluate.baselines": {"bdt": {"kind": "gbdt", "features": ["e_sum", "xx"]}}})
    assert "'xx' (evaluate.baselines.bdt.features; did you mean 'x'?)" in one_error_line(invoke(tmp_path, raw)[0])


def test_every_file_is_checked_extra_samples_too(data, tmp_path):
    raw = job_raw(data, **{"data.files": {"narrow": str(data / "narrow_*.root"), "wide": str(data / "without_x.root")}})
    line = one_error_line(invoke(tmp_path, raw)[0])
    assert line == (
        f"error: {data / 'without_x.root'}: tree 'events' has no branch 'x' "
        "(data.observers, evaluate.baselines.cuts.vars)"
    )
    raw = job_raw(data, **{"data.label_branch": "evt", "evaluate.samples": {"other": str(data / "without_x.root")}})
    assert f"error: {data / 'without_x.root'}: tree 'events' has no branch 'x'" in one_error_line(
        invoke(tmp_path, raw)[0]
    )
    raw = job_raw(data, **{"data.files": {"narrow": str(data / "narow_*.root"), "wide": str(data / "wide.root")}})
    assert (
        one_error_line(invoke(tmp_path, raw)[0])
        == f"error: data.files.narrow: {data / 'narow_*.root'}: no such file (no file matches the glob)"
    )


def test_tree_in_a_subdirectory(data, tmp_path):
    raw = job_raw(data, **{"data.files": {"a": str(data / "nested.root"), "b": str(data / "nested.root")}})
    line = one_error_line(invoke(tmp_path, raw)[0])
    assert line == (
        f"error: {data / 'nested.root'}: no tree 'events' (trees in the file: dir/events); did you mean 'dir/events'?"
    )
    result, _ = invoke(tmp_path, {**raw, "data": {**raw["data"], "tree": "dir/events"}})
    assert result.exit_code == 0, result.output
    assert "# plan: tree 'dir/events', 2 files, 200 entries" in result.output
    raw["data"]["tree"], raw["data"]["cut"] = "dir/events", "e_sun > 1"
    assert "tree 'dir/events' has no branch 'e_sun' (data.cut; did you mean 'e_sum'?)" in one_error_line(
        invoke(tmp_path, raw)[0]
    )


def test_rntuple_fields_answer_to_branch_names(data, tmp_path):
    files = {"narrow": str(data / "ntuple.root"), "wide": str(data / "wide.root")}
    result, _ = invoke(tmp_path, job_raw(data, **{"data.files": files}))
    assert result.exit_code == 0, result.output
    assert f"# {data / 'ntuple.root'}  100 entries (RNTuple)" in result.output.replace("#     ", "# ")
    line = one_error_line(invoke(tmp_path, job_raw(data, **{"data.files": files, "data.cut": "tower_ee > 0"}))[0])
    assert line.startswith(
        f"error: {data / 'ntuple.root'}: RNTuple 'events' has no field 'tower_ee' (data.cut; did you mean"
    )


def test_on_error_skip_warns_about_a_bad_file_instead(data, tmp_path):
    raw = job_raw(
        data,
        **{
            "data.on_error": "skip",
            "data.files": {
                "narrow": [str(data / "narrow_*.root"), str(data / "without_x.root")],
                "wide": str(data / "wide.root"),
            },
        },
    )
    result, _ = invoke(tmp_path, raw)
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {data / 'without_x.root'}: tree 'events' has no branch 'x' (data.observers, "
        "evaluate.baselines.cuts.vars) (skipped: data.on_error is skip)"
    ) in result.output
    assert "narrow (label 0): 2 files, 500 entries" in result.output
    raw["data"]["files"]["wide"] = str(data / "without_x.root")
    result, _ = invoke(tmp_path, raw)
    assert (
        result.exit_code == 2 and "error: data.files.wide: no events to read: all 1 files are skipped" in result.output
    )


# ------------------------------------------------------------------ what the YAML alone decides (spec.py)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data.cut": "e_sum >"}, "data.cut: 'e_sum >': not a valid expression (invalid syntax)"),
        ({"data.observers": ["evt", "abs(x"]}, "data.observers: 'abs(x': not a valid expression"),
        ({"evaluate.baselines": {"lin": "x.real"}}, "evaluate.baselines.lin: 'x.real': 'x.real' is not supported"),
        (
            {"data.generate": {"kind": "electron", "out": "somewhere"}},
            "data.generate.kind: unknown sample kind 'electron' (known: calo3d, ",
        ),
        (
            {"train.early_stopping": {"metric": "val_auc_macro"}},
            "train.early_stopping.metric: 'val_auc_macro' is not reported each epoch by this binary job (one of: "
            "train_loss, train_eval_loss, val_loss, train_eval_auc, train_eval_accuracy, val_auc, val_accuracy); "
            "did you mean 'val_auc'?",
        ),
        (
            {"evaluate.bins": {"xx": [0, 1]}},
            "evaluate.bins.xx: 'xx' is not an observer (data.observers: evt, x); did you mean 'x'?",
        ),
        ({"evaluate.energy": "e_sum"}, "evaluate.energy: 'e_sum' is not an observer (data.observers: evt, x)"),
        (
            {"name": "../x"},
            "name: '../x' is not a safe directory name: one path component, no '/', not '..', not empty",
        ),
        ({"name": ""}, "name: '' is not a safe directory name"),
        ({"name": "a/b"}, "name: 'a/b' is not a safe directory name"),
    ],
)
def test_config_errors_name_the_job_file_and_key_path(data, tmp_path, changes, message):
    result, path = invoke(tmp_path, job_raw(data, **changes))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: invalid job\n  ")
    assert message in result.output, result.output
    if "generate" in str(changes):
        assert "did you mean 'electron_id'?" in result.output


def test_track_momenta_bins_may_name_the_per_track_observers(data):
    from hepray.evaluate.momentum import track_observers

    raw = job_raw(
        data,
        **{
            "task.kind": "regression",
            "train.early_stopping": {"metric": "val_imbalance"},
            "evaluate.bins": {"track_pt": [0, 1], "track_slot": [0, 1, 2]},
        },
    )
    raw["data"]["target"] = {"tracks": 2, "px": "tower_e", "py": "tower_e", "pz": "tower_e"}
    raw["evaluate"].pop("baselines")
    job = validate_job(raw)
    observers = track_observers(job, {"obs_evt": np.zeros(3), "obs_x": np.zeros(3)}, np.zeros((3, 2, 3)))
    assert set(observers) == set(job.data.observers) | set(TRACK_OBSERVERS)


# ------------------------------------------------------------------ the plan, and files data.generate writes


def test_good_job_prints_the_plan_then_the_resolved_job(data, tmp_path):
    result, _ = invoke(tmp_path, job_raw(data, **{"data.events_per_task": 200}))
    assert result.exit_code == 0, result.output
    plan = [line for line in result.output.splitlines() if line.startswith("#")]
    assert plan == [
        "# plan: tree 'events', 3 files, 900 entries",
        "#   narrow (label 0): 2 files, 500 entries",
        f"#     {data / 'narrow_0.root'}  300 entries (TTree)",
        f"#     {data / 'narrow_1.root'}  200 entries (TTree)",
        "#   wide (label 1): 1 file, 400 entries",
        f"#     {data / 'wide.root'}  400 entries (TTree)",
        "# read tasks: 5 (data.events_per_task: 200)",
        "# splits (expected events, before data.cut): train 630, val 135, test 135",
    ]
    resolved = yaml.safe_load(result.stdout)  # the plan lines are YAML comments
    assert resolved["name"] == "test" and resolved["train"]["keep_checkpoints"] == 2


def test_read_tasks_and_branches_are_those_the_job_reads(data):
    from hepray.data.root_source import EventReader, plan_reads
    from hepray.evaluate import baselines

    raw = job_raw(data, **{"data.events_per_task": 150})
    raw["data"]["inputs"]["scalars"] = {"kind": "scalars", "branches": ["log(e_sum)", "cand_eta"]}
    job = validate_job(raw)
    report = check_job(job)
    reader = EventReader(job.data, None, extra=baselines.columns(job))
    assert set(named_branches(job)) == reader.branches()
    assert report.read_tasks() == len(plan_reads(job.data, reader.branches()).tasks)


def test_files_data_generate_writes_are_not_checked_yet(tmp_path):
    out = tmp_path / "generated"
    raw = etaphi_job({"fake": str(out / "fake_*.root"), "electron": str(out / "electron_*.root")})
    raw["data"]["generate"] = {"kind": "electron_id", "out": str(out), "events": 100}
    result, _ = invoke(tmp_path, raw)
    assert result.exit_code == 0, result.output
    assert "not generated yet (data.generate writes 100 events per class or sample of 'electron_id'" in result.output
    assert "read tasks and split sizes: planned when the missing files exist" in result.output
    assert not out.exists()  # validate writes nothing
    raw["data"]["files"]["fake"] = str(tmp_path / "elsewhere_*.root")  # not where data.generate writes
    assert "error: data.files.fake: " in one_error_line(invoke(tmp_path, raw)[0])


def job_of_kind(kind: str):
    files = {"a": "a", "b": "b", "c": "c"} if kind == "multiclass" else {"a": "a", "b": "b"}
    raw = etaphi_job(files)
    raw["task"] = {"kind": "regression" if kind == "track_momenta" else kind}
    if kind == "regression":
        raw["data"]["target"] = "x"
    if kind == "track_momenta":
        raw["data"]["target"] = {"tracks": 2, "px": "a", "py": "a", "pz": "a"}
    return validate_job(raw)


def test_epoch_metrics_are_those_the_training_loop_reports():
    from hepray.train.tasks import Task

    rng = np.random.default_rng(1)
    cases = {
        "binary": (rng.normal(size=(20, 1)), np.arange(20) % 2),
        "multiclass": (rng.normal(size=(30, 3)), np.arange(30) % 3),
        "regression": (rng.normal(size=(20, 1)) + 5, rng.normal(size=20) + 5),
        "track_momenta": (rng.normal(size=(20, 6)), rng.normal(size=(20, 2, 3))),
    }
    for kind, (outputs, truth) in cases.items():
        job = job_of_kind(kind)
        task = Task(job.task)
        # train/loop.py: the losses, then Task.epoch_metrics of the train_eval and val events
        reported = [
            "train_loss",
            "train_eval_loss",
            "val_loss",
            *task.epoch_metrics(outputs, truth, "train_eval"),
            *task.epoch_metrics(outputs, truth, "val"),
        ]
        assert sorted(reported) == sorted(job.epoch_metrics()), kind


# ------------------------------------------------------------------ run, submit, tune check before Ray


def test_run_submit_and_tune_check_the_files_before_ray(data, tmp_path, monkeypatch):
    import hepray.app.run
    from hepray.cluster import jobs

    def no(*args, **kwargs):
        raise AssertionError("reached past the preflight")

    monkeypatch.setattr(hepray.app.run, "run_job", no)
    monkeypatch.setattr(jobs, "submit", no)
    bad = job_raw(data, **{"data.cut": "e_summ > 1"})
    for command in ("run", "submit"):
        assert "has no branch 'e_summ' (data.cut; did you mean 'e_sum'?)" in one_error_line(
            invoke(tmp_path, bad, command)[0]
        )
    _, job_file = invoke(tmp_path, bad)
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "base_job": str(job_file),
                "metric": "val_loss",
                "mode": "min",
                "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
            }
        )
    )
    result = CliRunner().invoke(app, ["tune", str(search)])
    assert "has no branch 'e_summ' (data.cut; did you mean 'e_sum'?)" in one_error_line(result)

    # submit: files not on this machine may be on the cluster's disk: noted, then submitted
    monkeypatch.setattr(jobs, "submit", lambda *args, **kwargs: "hepray-test-1")
    away = job_raw(data, **{"data.files": {"narrow": "cluster_only/narrow.root", "wide": str(data / "wide.root")}})
    result, _ = invoke(tmp_path, away, "submit")
    assert result.exit_code == 0, result.output
    assert "note: data.files.narrow: cluster_only/narrow.root not found here, not checked" in result.output
    assert "hepray-test-1" in result.stdout


def test_a_model_that_does_not_fit_its_inputs_is_one_error_line(data, tmp_path):
    raw = etaphi_job({"narrow": str(data / "narrow_*.root"), "wide": str(data / "wide.root")})
    for model, named in (
        ({"name": "particlenet"}, "points"),  # a point-cloud model on an image
        ({"name": "film"}, "scalar"),  # FiLM conditions on scalars the job does not have
    ):
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump({**raw, "model": model}))
        result = CliRunner().invoke(app, ["validate", str(path)])
        line = assert_one_error_line(result, f"model: {model['name']} does not fit the job's inputs")
        assert named in line, line
