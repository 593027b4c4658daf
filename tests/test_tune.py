"""`hepray tune` on a real local Ray: Optuna TPE in SQLite, ASHA on per-epoch reports, resume."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from hepray.cli import app
from hepray.spec import SpecError, load_job
from hepray.tune.search import run_search, storage_url
from hepray.tune.space import load_search
from rootfiles import etaphi_job, towers, write_tree


@pytest.fixture(scope="module")
def base_job_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    write_tree(root / "narrow.root", towers(400, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(root / "wide.root", towers(400, 1000, seed=2, energy=2.0, spread=0.12))
    raw = etaphi_job({"narrow": str(root / "narrow.root"), "wide": str(root / "wide.root")},
                     split={"val": 0.25, "test": 0.25, "seed": 1})
    raw["data"]["inputs"]["image"]["norm"] = "max"
    raw["model"]["head"] = "flatten"
    raw["train"] = {"epochs": 2, "batch_size": 32, "lr": 3.0e-3}
    raw["evaluate"] = {"plots": False}
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def write_search(tmp_path, base_job_file, **changes) -> str:
    # Trial 0 is the base job (lr 3e-3: it learns). Every later trial draws lr from [1e-9, 1e-8], keeps
    # its initial weights and so its validation loss: with reduction factor 2 ASHA stops such a
    # trial at the first rung (epoch 1), whose cutoff is the median of the trials recorded there.
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
    with pytest.raises(SpecError, match=r"search.yaml: space.model.filtres: makes the base job invalid .*unknown key"):
        load_search(path)
    path = write_search(tmp_path, base_job_file, metric="val_auc_macro")
    with pytest.raises(SpecError, match=r"search.yaml: metric: 'val_auc_macro' is not reported by a binary job"):
        load_search(path)
    path = write_search(tmp_path, base_job_file)
    with pytest.raises(SpecError, match=r"search.yaml: invalid search\n  space.train.lr: give exactly one of"):
        load_search(path, ["space.train.lr={uniform: [0, 1], choice: [1]}"])
    with pytest.raises(SpecError, match=r"space.model.dropout.when: 'train.optimizer' must be a searched key"):
        load_search(path, ["space.model.dropout={uniform: [0, 0.3], when: {train.optimizer: sgd}}"])
    # Trial 0 is the base job: its weight_decay (default 0) cannot be enqueued on a log scale.
    with pytest.raises(SpecError, match=r"space.train.weight_decay: the base job's value 0.0 cannot be drawn"):
        load_search(path, ["space.train.weight_decay={loguniform: [1.0e-6, 0.1]}"])
    spec, _, _ = load_search(path, ["num_samples=9", "trial_overrides.train.epochs=1"])
    assert spec.num_samples == 9 and spec.trial_overrides == {"train.epochs": 1}


def test_search_stops_trials_early_writes_outputs_and_resumes(ray_session, tmp_path, base_job_file):
    # Two trials of 0.75 CPUs each would leave no CPU of the session's 2 for Ray Data: refused.
    spec, base, base_raw = load_search(write_search(tmp_path, base_job_file, max_concurrent_trials=2))
    with pytest.raises(SpecError, match="leave less than 1 of the cluster's 2 CPUs for reading data"):
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
    assert float(table[0]["val_loss"]) < float(table[1]["val_loss"])
    gap = float(table[0]["val_loss"]) - float(table[0]["train_eval_loss"])
    assert float(table[0]["loss_gap"]) == pytest.approx(gap)
    assert 1e-9 <= float(table[1]["train.lr"]) <= 1e-8

    best = load_job(out / "best_job.yaml")  # a runnable job: it validates
    assert best.name == "test_tuned" and best.train.lr == 3.0e-3 and best.model.head == "flatten"
    assert best.train.epochs == 2
    assert list((out / "tensorboard" / "trial_000").iterdir())
    # The worker placement group of a trial ASHA stopped is removed, so later trials can start.
    groups = ray_session.util.placement_group_table()
    recorded = [line.split() for line in (out / "trials" / "trial_001_resources.txt").read_text().splitlines()]
    placement_groups = [value for kind, value in recorded if kind == "placement_group"]
    assert placement_groups and all(groups[group]["state"] == "REMOVED" for group in placement_groups)

    # An interrupted session leaves a trial RUNNING in the study (its driver was killed mid-trial).
    study = optuna.load_study(study_name=spec.name, storage=storage_url(out))
    study.ask()
    # Resume with a larger budget: trials 0 and 1 are kept, the interrupted trial 2 is closed as
    # failed and not counted, and two new trials (3, 4) run in a second Tune session.
    result = CliRunner().invoke(app, ["tune", path, "--out", str(out), "--resume", "--set", "num_samples=4"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=spec.name, storage=storage_url(out))
    states = [t.state for t in study.trials]
    assert len(states) == 5 and states.count(optuna.trial.TrialState.COMPLETE) == 4
    assert study.trials[2].state == optuna.trial.TrialState.FAIL and study.trials[2].user_attrs["interrupted"]
    assert sorted(p.name for p in (out / "ray" / "session_00").glob("trial_*")) == ["trial_000", "trial_001"]
    assert sorted(p.name for p in (out / "ray" / "session_01").glob("trial_*")) == ["trial_003", "trial_004"]
    table = list(csv.DictReader((out / "trials.csv").open()))
    assert [row["state"] for row in table] == ["COMPLETE", "COMPLETE", "INTERRUPTED", "COMPLETE", "COMPLETE"]
    assert json.loads(table[1]["data.augment"]) in ([], ["hflip"])
    assert study.best_trial.number == 0
