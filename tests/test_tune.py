"""`hepray tune` on a real local Ray: Optuna TPE in SQLite, ASHA on per-epoch reports, resume,
--retrain-best and --report."""

from __future__ import annotations

import csv
import json
import os
import sys
from functools import reduce
from pathlib import Path

import optuna
import pytest
import yaml
from test_errors import assert_one_error_line
from typer.testing import CliRunner

from hepray.cli import app
from hepray.spec import SpecError, dump_job, load_job
from hepray.tune.report import default_out_dir, default_report_file, report_command, run_once
from hepray.tune.search import (
    drop_stale_guesses,
    finished_trials,
    guesses_to_queue,
    open_study,
    run_search,
    storage_url,
    trial_table,
    tune_trials,
)
from hepray.tune.space import TuneSpec, load_search
from rootfiles import etaphi_job, towers, write_tree


def tiny_job(files: dict, name: str, **train) -> dict:
    raw = etaphi_job(files, split={"val": 0.25, "test": 0.25, "seed": 1})
    raw["name"] = name
    raw["data"]["inputs"]["image"]["norm"] = "max"
    raw["model"]["head"] = "flatten"
    raw["train"] = {"batch_size": 32, "lr": 3.0e-3, **train}
    raw["evaluate"] = {"plots": False}
    return raw


@pytest.fixture(scope="module")
def base_job_file(tmp_path_factory):
    """A three-class job of 3 epochs, so a search can report class pairs, and beside it
    narrow_vs_wide.yaml, the binary job of two of its classes (1 epoch: only its AUC is compared)."""
    root = tmp_path_factory.mktemp("tune")
    write_tree(root / "narrow.root", towers(300, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(root / "wide.root", towers(300, 1000, seed=2, energy=2.0, spread=0.12))
    write_tree(root / "mid.root", towers(300, 2000, seed=3, energy=3.0, spread=0.06))
    files = {name: str(root / f"{name}.root") for name in ("narrow", "wide", "mid")}
    raw = tiny_job(files, "test", epochs=3)
    raw["task"] = {"kind": "multiclass"}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    binary = tiny_job({name: files[name] for name in ("narrow", "wide")}, "narrow_vs_wide", epochs=1)
    (root / "narrow_vs_wide.yaml").write_text(yaml.safe_dump(binary, sort_keys=False))
    return path


def write_search(tmp_path, base_job_file, **changes) -> str:
    # Trial 0 is the base job's setup (lr 3e-3: it learns). Every later trial draws lr from [1e-9, 1e-8],
    # keeps its initial weights and so its validation loss: with reduction factor 2 ASHA stops such a
    # trial at the first rung (epoch 1), whose cutoff is the median of the trials recorded there.
    # Trials train 2 epochs; the base job, and so the best job, 3.
    search = {
        "base_job": str(base_job_file),
        "metric": "val_loss",
        "mode": "min",
        "num_samples": 2,
        "max_concurrent_trials": 1,
        "seed": 7,
        "startup_trials": 2,
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "driver_cpus": 0.25},
        "trial_overrides": {"train.epochs": 2},
        "report": {"binary_jobs": [str(base_job_file.parent / "narrow_vs_wide.yaml")]},
        "space": {
            "train.lr": {"loguniform": [1.0e-9, 1.0e-8]},
            "model.head": {"choice": ["flatten", "maxavg"]},
            "model.dropout": {"uniform": [0.0, 0.3], "when": {"model.head": "maxavg"}},
            "data.augment": {"choice": [[], ["hflip"]]},
        },
        **changes,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search, sort_keys=False))
    return str(path)


def test_search_file_errors_name_the_file_and_key(tmp_path, base_job_file):
    path = write_search(tmp_path, base_job_file, space={"model.filtres": {"choice": [4, 8]}})
    with pytest.raises(
        SpecError,
        match=r"search.yaml: space.model.filtres: makes the base job invalid .*unknown key; did you mean 'filters'",
    ):
        load_search(path)
    path = write_search(tmp_path, base_job_file, num_sampels=4)
    with pytest.raises(
        SpecError, match=r"search.yaml: invalid search\n  num_sampels: unknown key; did you mean 'num_samples'"
    ):
        load_search(path)
    path = write_search(tmp_path, base_job_file, metric="val_auc")
    with pytest.raises(SpecError, match=r"search.yaml: metric: 'val_auc' is not reported by a multiclass job"):
        load_search(path)
    path = write_search(tmp_path, base_job_file)
    # A class pair of the report needs a binary job of two of the base job's classes: checked before the search.
    with pytest.raises(
        SpecError,
        match=r"report.binary_jobs: .*job.yaml is a multiclass job of classes "
        r"\['narrow', 'wide', 'mid'\]; a pair needs a binary job",
    ):
        load_search(path, [f"report.binary_jobs=[{base_job_file}]"])
    with pytest.raises(SpecError, match=r"search.yaml: invalid search\n  space.train.lr: give exactly one of"):
        load_search(path, ["space.train.lr={uniform: [0, 1], choice: [1]}"])
    with pytest.raises(SpecError, match=r"space.model.dropout.when: 'train.optimizer' must be a searched key"):
        load_search(path, ["space.model.dropout={uniform: [0, 0.3], when: {train.optimizer: sgd}}"])
    # Trial 0 is the base job: its weight_decay (default 0) cannot be enqueued on a log scale.
    with pytest.raises(SpecError, match=r"space.train.weight_decay: the base job's value 0.0 cannot be drawn"):
        load_search(path, ["space.train.weight_decay={loguniform: [1.0e-6, 0.1]}"])
    with pytest.raises(SpecError, match=r"scheduler.grace_period: 3 epochs, but trials train 2; ASHA needs"):
        load_search(path, ["scheduler.grace_period=3"])
    with pytest.raises(
        SpecError,
        match=r"invalid search\n  report.seeds: each seed once: a repeated seed would count one training twice",
    ):
        load_search(path, ["report.seeds=[1, 2, 1]"])
    spec, _, _ = load_search(path, ["num_samples=9", "trial_overrides.train.epochs=1"])
    assert spec.num_samples == 9 and spec.trial_overrides == {"train.epochs": 1}


def test_job_overrides_reach_the_base_and_each_binary_job_with_its_own_classes(tmp_path, base_job_file):
    larger = {name: str(tmp_path / f"larger_{name}.root") for name in ("narrow", "mid")}
    overrides = {"train.epochs": 5, **{f"data.files.{name}": glob for name, glob in larger.items()}}
    path = write_search(tmp_path, base_job_file, job_overrides=overrides, trial_overrides={})
    spec, base, base_raw = load_search(path)
    assert base.train.epochs == base_raw["train"]["epochs"] == 5
    assert base.data.files["narrow"] == [larger["narrow"]] and base.data.files["mid"] == [larger["mid"]]
    binary = spec.binary_job(spec.report.binary_jobs[0])
    written = load_job(spec.report.binary_jobs[0])
    assert binary.train.epochs == 5 and written.train.epochs == 1
    # narrow_vs_wide takes the narrow class's new globs, keeps its wide ones and gains no 'mid' class.
    assert binary.data.files == {"narrow": [larger["narrow"]], "wide": written.data.files["wide"]}
    with pytest.raises(
        SpecError,
        match=r"search.yaml: job_overrides: makes the base job invalid \(train.epocs: unknown key; did you mean",
    ):
        load_search(path, ["job_overrides.train.epocs=3"])
    with pytest.raises(SpecError, match=r"job_overrides: makes binary job .*narrow_vs_wide.yaml invalid .*pair_heads"):
        load_search(path, ["job_overrides.task.pair_heads=true"])


def test_first_trials_start_from_the_base_job_with_their_keys_set(tmp_path, base_job_file):
    path = write_search(tmp_path, base_job_file, first_trials=[{"model.head": "maxavg", "data.augment": ["hflip"]}])
    spec, base, _ = load_search(path)
    base_point, changed = spec.first_points(base.model_dump(mode="json", by_alias=True))
    assert changed == {**base_point, "model.head": "maxavg", "data.augment": '["hflip"]'}  # choices of lists as JSON
    assert base_point["model.head"] == base.model.head
    assert len(spec.first_points(base.model_dump(mode="json"))) == 2
    with pytest.raises(
        SpecError, match=r"first_trials\[0\]: 'model.heads' is not a searched key; did you mean 'model.head'"
    ):
        load_search(path, ["first_trials=[{model.heads: maxavg}]"])
    with pytest.raises(SpecError, match=r"first_trials\[1\]: model.head: 'avg' cannot be drawn from space.model.head"):
        load_search(path, ["first_trials=[{model.head: maxavg}, {model.head: avg}]"])


def test_a_resumed_search_follows_the_first_trials_of_its_file_as_edited(tmp_path, base_job_file):
    maxavg, hflip = {"model.head": "maxavg"}, {"data.augment": ["hflip"]}
    spec, base, _ = load_search(write_search(tmp_path, base_job_file, num_samples=3, first_trials=[maxavg]))
    resolved = base.model_dump(mode="json", by_alias=True)
    base_point, maxavg_point = spec.first_points(resolved)
    out = tmp_path / "out"
    out.mkdir()
    study = open_study(spec, out)
    assert guesses_to_queue(spec, study, resolved, num_samples=3) == [base_point, maxavg_point]
    assert guesses_to_queue(spec, study, resolved, num_samples=1) == [base_point]
    # A session of one trial ran the base job and was interrupted with the maxavg guess queued.
    study.enqueue_trial(base_point)
    study.enqueue_trial(maxavg_point)
    trial = study.ask()
    study.tell(trial, 0.5)

    # The file now has another guess instead: the waiting maxavg one is dropped, not counted as
    # finished nor listed, and the new one is queued.
    spec, _, _ = load_search(write_search(tmp_path, base_job_file, num_samples=3, first_trials=[hflip]))
    assert drop_stale_guesses(spec, study, resolved) == 1
    hflip_point = spec.first_points(resolved)[1]
    assert hflip_point["data.augment"] == '["hflip"]'
    assert guesses_to_queue(spec, study, resolved, num_samples=2) == [hflip_point]
    assert [t.number for t in finished_trials(study)] == [0]
    assert [row["trial"] for row in trial_table(spec, out, study)] == [0]
    status = CliRunner().invoke(app, ["tune", "--status", str(out)])
    assert status.exit_code == 0, status.output
    assert [line.split()[:2] for line in status.output.strip().splitlines()[1:]] == [
        ["0", "COMPLETE"],
        ["1", "DROPPED"],
    ]
    # A guess still in the file stays queued, and takes one of the session's trials before a new one.
    study.enqueue_trial(hflip_point)
    status = CliRunner().invoke(app, ["tune", "--status", str(out)])
    waiting = status.output.strip().splitlines()[3]
    assert waiting.split()[:2] == ["2", "WAITING"] and '["hflip"]' in waiting, status.output
    both = {**maxavg, **hflip}
    spec, _, _ = load_search(write_search(tmp_path, base_job_file, num_samples=3, first_trials=[hflip, both]))
    assert drop_stale_guesses(spec, study, resolved) == 0
    assert study.trials[2].state == optuna.trial.TrialState.WAITING
    assert guesses_to_queue(spec, study, resolved, num_samples=1) == []
    assert guesses_to_queue(spec, study, resolved, num_samples=2) == [spec.first_points(resolved)[2]]


def test_status_without_a_search_or_search_file_is_one_error_line(tmp_path):
    result = CliRunner().invoke(app, ["tune", "--status", str(tmp_path)])
    assert_one_error_line(result, str(tmp_path), "no search here")
    assert_one_error_line(CliRunner().invoke(app, ["tune"]), "give a search file", "--status DIR")


def test_report_files_are_checked_before_the_search_starts(tmp_path, base_job_file):
    """--report reads them only after every trial: a sample not generated yet fails the command
    at once, not a finished search."""
    missing = str(tmp_path / "eval" / "wide_*.root")
    files = {
        "narrow": str(base_job_file.parent / "narrow.root"),
        "wide": missing,
        "mid": str(base_job_file.parent / "mid.root"),
    }
    path = write_search(tmp_path, base_job_file, report={"evaluation_files": files})
    out = tmp_path / "search_out"
    result = CliRunner().invoke(app, ["tune", path, "--out", str(out), "--report"])
    assert_one_error_line(result, "search.yaml: report.evaluation_files", missing, "no file matches the glob")
    assert not out.exists()
    binary = yaml.safe_load((base_job_file.parent / "narrow_vs_wide.yaml").read_text())
    binary["data"]["files"]["wide"] = str(tmp_path / "wide_typo.root")
    (tmp_path / "binary.yaml").write_text(yaml.safe_dump(binary, sort_keys=False))
    path = write_search(tmp_path, base_job_file, report={"binary_jobs": [str(tmp_path / "binary.yaml")]})
    result = CliRunner().invoke(app, ["tune", path, "--out", str(out), "--report"])
    assert_one_error_line(result, "report.binary_jobs: ", "binary.yaml", "wide_typo.root: no such file")
    assert not out.exists()


def test_the_report_names_out_and_report_file_only_where_they_are_not_the_defaults(
    tmp_path, base_job_file, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec, _, _ = load_search(write_search(tmp_path, base_job_file))
    space = Path("tune_spaces/search.yaml")
    as_default = report_command(spec, space, default_out_dir(spec), default_report_file(spec), ["num_samples=2"])
    assert as_default == "hepray tune tune_spaces/search.yaml --set num_samples=2 --report"
    # Another budget in the default directory would retrain its runs over the default report's.
    elsewhere = report_command(spec, space, Path("runs/20ep"), Path("docs/20ep.md"), ["first_trials=[{a: 1}]"])
    assert elsewhere == (
        "hepray tune tune_spaces/search.yaml --set 'first_trials=[{a: 1}]' --out runs/20ep --report "
        "--report-file docs/20ep.md"
    )


def test_report_reuses_only_finished_runs(tmp_path, base_job_file):
    # A run writes job.yaml first and metrics.json last. "interrupted" was started for this job over
    # an older run of another job, whose metrics.json is still there: those numbers are not this job's.
    job = load_job(base_job_file)
    for name, auc in (("interrupted", 0.1), ("finished", 0.9)):
        (tmp_path / name).mkdir()
        dump_job(job.model_copy(update={"name": f"any_{name}"}), tmp_path / name / "job.yaml")
        (tmp_path / name / "metrics.json").write_text(json.dumps({"test_auc_macro": auc}))
    os.utime(tmp_path / "interrupted" / "metrics.json", (0, 0))
    # The finished run was written before train.keep_checkpoints existed: today's default stands in.
    written = yaml.safe_load((tmp_path / "finished" / "job.yaml").read_text())
    del written["train"]["keep_checkpoints"]
    (tmp_path / "finished" / "job.yaml").write_text(yaml.safe_dump(written))
    os.utime(tmp_path / "finished" / "metrics.json")
    assert run_once(job, tmp_path / "interrupted", reuse=(tmp_path / "finished",)) == {"test_auc_macro": 0.9}


def test_search_stops_trials_early_resumes_retrains_best_and_reports(ray_session, tmp_path, base_job_file):
    # Two trials of 0.75 CPUs each would leave no CPU of the session's 2 for Ray Data: refused.
    spec, base, base_raw = load_search(write_search(tmp_path, base_job_file, max_concurrent_trials=2))
    with pytest.raises(
        SpecError,
        match=r"2 concurrent trials with 0.25 driver CPUs each: scaling: 2 workers x 0.5 CPU "
        r"leave no CPU for reading on a 2-CPU cluster; set scaling.cpus_per_worker <= 0.25",
    ):
        run_search(spec, base, base_raw, tmp_path / "refused")

    path = write_search(tmp_path, base_job_file)
    out = tmp_path / "out"
    spec, base, base_raw = load_search(path)
    summary = run_search(spec, base, base_raw, out)
    assert summary["trials"] == 2 and summary["finished"] == 2

    table = list(csv.DictReader((out / "trials.csv").open()))
    assert [row["trial"] for row in table] == ["0", "1"]
    assert table[0]["epochs_run"] == "2" and table[0]["stopped_by_asha"] == "False"
    assert table[1]["epochs_run"] == "1" and table[1]["stopped_by_asha"] == "True"
    # Each value says which budget it comes from, and ASHA's stop reached Optuna (study.db) as pruned,
    # with its value at the epoch it stopped at, not as complete.
    assert [(row["state"], row["value_epochs"]) for row in table] == [("COMPLETE", "2"), ("PRUNED", "1")]
    stored = optuna.load_study(study_name=spec.name, storage=storage_url(out)).trials
    assert [t.state for t in stored] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert stored[1].last_step == 1 and stored[1].value == pytest.approx(float(table[1]["val_loss"]))
    assert float(table[0]["val_loss"]) < float(table[1]["val_loss"])
    gap = float(table[0]["val_loss"]) - float(table[0]["train_eval_loss"])
    assert float(table[0]["loss_gap"]) == pytest.approx(gap)
    assert 1e-9 <= float(table[1]["train.lr"]) <= 1e-8

    best = load_job(out / "best_job.yaml")  # a runnable job: it validates
    assert best.name == "test_tuned" and best.train.lr == 3.0e-3 and best.model.head == "flatten"
    assert best.train.epochs == 3  # the base job's, not the trials' override
    assert list((out / "tensorboard" / "trial_000").iterdir())
    # The worker placement group of a trial ASHA stopped is removed, so later trials can start.
    groups = ray_session.util.placement_group_table()
    recorded = [line.split() for line in (out / "trials" / "trial_001_resources.txt").read_text().splitlines()]
    placement_groups = [value for kind, value in recorded if kind == "placement_group"]
    assert placement_groups and all(groups[group]["state"] == "REMOVED" for group in placement_groups)

    # An interrupted session leaves a trial RUNNING in the study (its driver was killed mid-trial).
    study = optuna.load_study(study_name=spec.name, storage=storage_url(out))
    study.ask()
    # Resume with a larger budget: trials 0 and 1 are kept, the interrupted trial 2 is trained again
    # and one new trial (3) runs, both in a second Tune session. Then the best job is trained in full
    # and the report written.
    report_file = tmp_path / "report" / "tune_search.md"
    result = CliRunner().invoke(
        app,
        [
            "tune",
            path,
            "--out",
            str(out),
            "--resume",
            "--set",
            "num_samples=4",
            "--retrain-best",
            "--report",
            "--report-file",
            str(report_file),
        ],
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=spec.name, storage=storage_url(out))
    states = [t.state for t in study.trials]
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(states) == 4 and all(state in finished for state in states)
    assert sorted(p.name for p in (out / "ray" / "session_00").glob("trial_*")) == ["trial_000", "trial_001"]
    assert sorted(p.name for p in (out / "ray" / "session_01").glob("trial_*")) == ["trial_002", "trial_003"]
    table = list(csv.DictReader((out / "trials.csv").open()))
    assert [row["state"] for row in table] == [state.name for state in states]
    # --status reads the finished search without starting anything: every trial, its state, epochs, value, keys.
    status = CliRunner().invoke(app, ["tune", "--status", str(out)])
    assert status.exit_code == 0, status.output
    lines = status.output.strip().splitlines()
    assert lines[0].split()[:4] == ["trial", "state", "epochs", "val_loss"] and "train.lr" in lines[0]
    assert [line.split()[:3] for line in lines[1:]] == [
        [row["trial"], row["state"], row["epochs_run"]] for row in table
    ]
    assert lines[1].split()[3] == f"{float(table[0]['val_loss']):.4g}"
    assert json.loads(table[1]["data.augment"]) in ([], ["hflip"])
    assert study.best_trial.number == 0

    # --retrain-best trained best_job.yaml in full: its name, the base job's 3 epochs (trials ran 2),
    # and the best trial's searched values as trials.csv lists them (dropout only with head maxavg).
    retrained = load_job(out / "best" / "job.yaml")
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert retrained.name == "test_tuned" and metrics["epochs_run"] == 3
    assert all((out / "best" / name).stat().st_size > 0 for name in ("model.pt", "model.onnx"))
    best_row = table[0]  # trial 0, the best
    searched = {key: yaml.safe_load(best_row[key]) for key in spec.space if best_row.get(key)}
    assert set(searched) == {"train.lr", "model.head", "data.augment"}
    dumped = retrained.model_dump(mode="json", by_alias=True)
    assert searched == {key: reduce(lambda node, part: node[part], key.split("."), dumped) for key in searched}

    # --report: the best trial is the base job's setup, so the retrained run is both columns and no
    # baseline is trained again; every number is that run's metrics.json.
    report = report_file.read_text()
    assert "both columns are the same run" in report and not (out / "baseline").exists()
    assert "4 trials of 2 epochs (trial-only keys: `train.epochs=2`)" in report
    assert f"`hepray tune {path} --set num_samples=4 --out {out} --report --report-file {report_file}`" in report
    assert f"stopped {sum(row['stopped_by_asha'] == 'True' for row in table)} early" in report
    for key in ("test_auc_macro", "val_loss", "train_eval_loss"):
        assert f"| `{key}` | {metrics[key]:.4f} | {metrics[key]:.4f} |" in report
    assert f"| best epoch / epochs run | {metrics['best_epoch']:.0f} / 3 | {metrics['best_epoch']:.0f} / 3 |" in report
    assert "| `train.lr` | 0.0030 | 0.0030 |" in report and "← changed" not in report
    # Error bars: the headline AUC of each run with its interval; the paired difference of one run
    # with itself is exactly zero.
    assert f"| baseline `test_auc_macro` | {metrics['test_auc_macro']:.4f} [" in report
    assert "| tuned − baseline (paired) | 0.0000 [0.0000, 0.0000] |" in report
    # The class pair: the multiclass model's narrow-vs-wide AUC against the binary job's, trained once,
    # on the same test events (the split hashes file name and entry), each with its interval.
    binary = json.loads((out / "binary_narrow_vs_wide" / "metrics.json").read_text())
    assert binary["epochs_run"] == 1
    pair, gap = metrics["test_auc_narrow_vs_wide"], binary["test_auc"] - metrics["test_auc_narrow_vs_wide"]
    row = next(line for line in report.splitlines() if line.startswith("| narrow vs wide |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[:3] == ["narrow vs wide", f"`{spec.report.binary_jobs[0]}`", f"{binary['test_events']:.0f}"]
    assert [cell.split(" [")[0] for cell in cells[3:8]] == [
        f"{binary['test_auc']:.4f}",
        f"{pair:.4f}",
        f"{gap:.4f}",
        f"{pair:.4f}",
        f"{gap:.4f}",
    ]
    assert cells[8] == ("yes" if float(cells[7].split(" [")[0]) <= 0.005 else "no")
    # The binary job trained 1 epoch, the multiclass jobs 3: said loudly.
    assert "Warning: unequal training budgets" in report and "1 epochs, no early stopping" in report
    # The trials table: each trials.csv row, lowest val_loss first.
    lines = report.split("## Trials (best first)")[1].strip().splitlines()[2:]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    ranked = sorted(table, key=lambda row: float(row["val_loss"] or "inf"))
    assert [row[:4] for row in cells] == [
        [row["trial"], row["state"], row["epochs_run"], "yes" if row["stopped_by_asha"] == "True" else ""]
        for row in ranked
    ]
    assert [row[5] for row in cells] == [f"{float(row['val_loss']):.4f}" if row["val_loss"] else "–" for row in ranked]

    # report.seeds: every model of the pair comparison is trained once more with seed 5 beside its run
    # (baseline and tuned are one run here, so one more), and the pair's AUCs and gap are the means
    # over seeds 1 and 5, with each seed's own gap listed.
    seeded_file = tmp_path / "report" / "tune_seeds.md"
    result = CliRunner().invoke(
        app,
        ["tune", path, "--out", str(out), "--resume", "--set", "num_samples=4", "--set", "report.seeds=[1, 5]"]
        + ["--report", "--report-file", str(seeded_file)],
    )
    assert result.exit_code == 0, result.output
    assert load_job(out / "best_seed5" / "job.yaml").train.seed == 5 and not (out / "baseline_seed5").exists()
    assert load_job(out / "binary_narrow_vs_wide_seed5" / "job.yaml").train.seed == 5
    seed5 = json.loads((out / "best_seed5" / "metrics.json").read_text())
    binary5 = json.loads((out / "binary_narrow_vs_wide_seed5" / "metrics.json").read_text())
    gaps = [gap, binary5["test_auc"] - seed5["test_auc_narrow_vs_wide"]]
    row = next(line for line in seeded_file.read_text().splitlines() if line.startswith("| narrow vs wide |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[3].split(" [")[0] == f"{(binary['test_auc'] + binary5['test_auc']) / 2:.4f}"
    assert cells[6].split(" [")[0] == f"{(pair + seed5['test_auc_narrow_vs_wide']) / 2:.4f}"
    assert cells[7].split(" [")[0] == f"{sum(gaps) / 2:.4f}"
    assert cells[8] == ", ".join(f"{g:+.4f}" for g in gaps)


def test_report_evaluates_the_trial_that_trained_the_baseline_instead_of_training_it_again(
    ray_session, tmp_path, base_job_file
):
    # One trial, the base job's setup with its whole budget (no trial-only keys): the report's baseline
    # is that training, evaluated from the trial's checkpoints.
    path = write_search(tmp_path, base_job_file, num_samples=1, trial_overrides={}, report={})
    out, report_file = tmp_path / "out", tmp_path / "tune_search.md"
    result = CliRunner().invoke(app, ["tune", path, "--out", str(out), "--report", "--report-file", str(report_file)])
    assert result.exit_code == 0, result.output
    trial = next(csv.DictReader((out / "trials.csv").open()))
    metrics = json.loads((out / "baseline" / "metrics.json").read_text())
    assert metrics["search_trial"] == 0 and not (out / "baseline" / "checkpoints").exists()
    # The checkpoint kept is the trial's best epoch by val_loss: its losses are the trial's best.
    assert metrics["val_loss"] == pytest.approx(float(trial["val_loss"]))
    assert metrics["best_epoch"] == float(trial["best_epoch"]) and metrics["epochs_run"] == 3
    assert len(json.loads((out / "baseline" / "history.json").read_text())) == 3
    assert (out / "baseline" / "model.onnx").stat().st_size > 0 and metrics["test_auc_macro"] > 0.5
    assert "Both are trial 0's training, evaluated from its checkpoints" in report_file.read_text()


TOY_EPOCHS = 4
TOY_BEST = 0.8  # the value of toy.x that decides the outcome; toy.noise barely matters


def toy_objective(config: dict, epoch: int) -> float:
    """Seeded toy: the closer toy.x is to TOY_BEST, the better, more so with each epoch."""
    return 1.0 - abs(config["toy.x"] - TOY_BEST) * epoch / TOY_EPOCHS + 0.01 * config["toy.noise"]


def found(config: dict) -> bool:
    return abs(config["toy.x"] - TOY_BEST) < 0.1  # one draw in five at random


def toy_trainable(config: dict) -> None:
    from ray import tune

    for epoch in range(1, TOY_EPOCHS + 1):
        tune.report({"best_score": toy_objective(config, epoch), "epoch": epoch})


def toy_search(num_samples: int) -> TuneSpec:
    return TuneSpec(
        name="toy",
        base_job="none",
        metric="score",
        mode="max",
        num_samples=num_samples,
        seed=3,
        startup_trials=4,
        scheduler={"grace_period": 1, "reduction_factor": 2},
        resources={"driver_cpus": 0.5},
        space={"toy.x": {"uniform": [0.0, 1.0]}, "toy.noise": {"uniform": [0.0, 1.0]}},
    )


def test_tpe_through_tune_finds_the_deciding_key_more_often_than_random(ray_session, tmp_path):
    # The search machinery of `hepray tune` (Tune, ASHA, Optuna TPE in SQLite) with a function trainable,
    # shipped to Tune's actors by value: they cannot import this test module.
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = toy_search(num_samples=16)
    study = open_study(spec, tmp_path)
    tune_trials(spec, tmp_path, study, toy_trainable, TOY_EPOCHS, spec.num_samples)
    trials = optuna.load_study(study_name="toy", storage=storage_url(tmp_path)).trials
    assert len(trials) == 16
    tpe_hits = sum(found(t.params) for t in trials)

    random_study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    random_study.optimize(lambda t: toy_objective(spec.suggest(t), TOY_EPOCHS), n_trials=16)
    random_hits = sum(found(t.params) for t in random_study.trials)
    assert tpe_hits > random_hits and tpe_hits >= 4, (tpe_hits, random_hits)  # random: 3.2 expected

    # ASHA's stops reach Optuna as pruned, with the value at the epoch they stopped at; only trials
    # of the full 4 epochs are complete, and the best of them has found the deciding value.
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and len(pruned) + len(complete) == 16
    for trial in pruned:
        step = trial.last_step
        assert step < TOY_EPOCHS and trial.value == pytest.approx(toy_objective(trial.params, step))
    for trial in complete:
        assert trial.value == pytest.approx(toy_objective(trial.params, TOY_EPOCHS))
    assert found(max(complete, key=lambda t: t.value).params)


@pytest.mark.parametrize("name", ["drift_chamber_multiclass", "electron_id_overfit"])
def test_shipped_searches_load_and_the_pair_references_train_under_the_same_rules(name):
    from hepray.tune.report import budget

    spec, base, _ = load_search(f"tune_spaces/{name}.yaml")
    for job_file in spec.report.binary_jobs:
        assert budget(spec.binary_job(job_file)) == budget(base), job_file
        assert budget(load_job(job_file)) == budget(load_job(spec.base_job)), job_file  # as written, too
    if spec.report.binary_jobs:  # the multiclass levers are searched, and the base job is trial 0
        assert {"task.label_smoothing", "task.focal_gamma", "task.class_weights", "train.schedule"} <= set(spec.space)
        assert budget(base)[1] == ("auc", "max", 8)


def test_events_are_paired_by_file_and_entry_whatever_their_order():
    import numpy as np

    from hepray.tune.intervals import aligned_events

    first = {"file_key": np.array([7, 7, 9, 9]), "entry": np.array([0, 1, 0, 1]), "output": np.arange(4.0)}
    second = {key: value[[3, 0, 2]] for key, value in first.items()}  # another read order, one event missing
    third = {key: value[[2, 1, 3, 0]] for key, value in first.items()}
    aligned = aligned_events(first, second, third)
    assert [len(events["entry"]) for events in aligned] == [3, 3, 3]
    assert (aligned[0]["output"] == aligned[1]["output"]).all() and (aligned[0]["output"] == aligned[2]["output"]).all()
    assert sorted(aligned[0]["output"]) == [0.0, 2.0, 3.0]


def test_the_report_loss_is_the_jobs_training_loss_with_a_bootstrap_interval():
    import numpy as np
    import torch

    from hepray.train.tasks import Task
    from hepray.tune.intervals import loss_of

    job = load_job("jobs/electron_id_overfit.yaml")
    rng = np.random.default_rng(3)
    events = {"label": rng.integers(0, 2, 400), "output": rng.normal(0, 3, (400, 1))}
    cross_entropy = np.logaddexp(0, events["output"][:, 0]) - events["label"] * events["output"][:, 0]
    loss = loss_of(job, events)
    assert loss.value == pytest.approx(cross_entropy.mean()) and loss.low < loss.value < loss.high

    smoothed = job.model_copy(update={"task": job.task.model_copy(update={"label_smoothing": 0.2})})
    trained = Task(smoothed.task).loss(torch.tensor(events["output"]), torch.tensor(events["label"]))
    assert loss_of(smoothed, events).value == pytest.approx(float(trained))

    same = loss_of(job, {"label": events["label"], "output": np.zeros((400, 1))})  # every event costs log 2
    assert same.low == pytest.approx(np.log(2)) and same.high == pytest.approx(np.log(2))


def test_the_report_warns_when_the_tuned_loss_is_defined_differently():
    from hepray.tune.report import _unlike_losses

    base = load_job("jobs/drift_chamber_multiclass.yaml")
    weighted = base.model_copy(update={"task": base.task.model_copy(update={"class_weights": [1.0, 2.0, 2.0]})})
    assert _unlike_losses(base, base) == []
    wider = base.model_copy(update={"model": base.model.model_copy(update={"dense": 128})})
    assert _unlike_losses(base, wider) == []  # the same loss of another model
    (warning,) = filter(None, _unlike_losses(base, weighted))
    assert "losses are defined differently" in warning and "`task.class_weights` – → [1.0, 2.0, 2.0]" in warning
