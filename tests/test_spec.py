"""Job files: validation errors name the file and key path, --set overrides, the CLI fails before Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hepray.cli import app
from hepray.spec import SpecError, dump_job, load_job

JOBS = Path(__file__).parent.parent / "jobs"


def write(tmp_path, raw: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def electron_id_raw() -> dict:
    return yaml.safe_load((JOBS / "electron_id.yaml").read_text())


@pytest.mark.parametrize("job", sorted(p.name for p in JOBS.glob("*.yaml")))
def test_every_shipped_job_validates(job):
    assert load_job(JOBS / job).name


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["model"].update(filters=0), "model.filters: must be > 0"),
        (lambda r: r["train"].update(learning_rate=0.1), "train.learning_rate: unknown key"),
        (lambda r: r["data"]["inputs"]["image"].update(norm="max2"), "data.inputs.image.norm: Input should be"),
        (lambda r: r["data"]["split"].update(val=0.6, test=0.5), "data.split: val + test must be < 1"),
        (lambda r: r.pop("task"), "task: required key is missing"),
        (lambda r: r["data"]["inputs"]["image"].update(kind="polar"), "data.inputs.image: Input tag 'polar'"),
    ],
)
def test_bad_values_name_the_file_and_key_path(tmp_path, change, message):
    raw = electron_id_raw()
    change(raw)
    path = write(tmp_path, raw)
    with pytest.raises(SpecError) as error:
        load_job(path)
    assert str(error.value).startswith(f"{path}: invalid job")
    assert message in str(error.value)


def test_set_overrides_any_key_with_yaml_values(tmp_path):
    job = load_job(
        JOBS / "electron_id.yaml",
        ["train.epochs=7", "data.inputs.image.norm=l2", "evaluate.bins={ele_pt: [10, 50]}", "scaling.use_gpu=false"],
    )
    assert job.train.epochs == 7 and job.data.inputs["image"].norm == "l2"
    assert job.evaluate.bins == {"ele_pt": [10.0, 50.0]} and job.scaling.use_gpu is False
    with pytest.raises(SpecError, match="model.filters: must be > 0"):
        load_job(JOBS / "electron_id.yaml", ["model.filters=-1"])
    with pytest.raises(SpecError, match="expected key=value"):
        load_job(JOBS / "electron_id.yaml", ["train.epochs"])


def test_resolved_job_round_trips(tmp_path):
    job = load_job(JOBS / "electron_id.yaml", ["train.lr=0.01"])
    dump_job(job, tmp_path / "resolved.yaml")
    again = load_job(tmp_path / "resolved.yaml")
    assert again == job and "keep_checkpoints" in (tmp_path / "resolved.yaml").read_text()  # defaults filled in


def test_cli_fails_before_ray_with_one_clear_error(tmp_path):
    raw = electron_id_raw()
    raw["model"]["filters"] = 0
    # A process of its own: the test session's Ray must not hide whether the command starts one.
    result = subprocess.run(
        [sys.executable, "-m", "hepray.cli", "run", str(write(tmp_path, raw))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "model.filters: must be > 0" in result.stderr and "Traceback" not in result.stderr
    assert "Ray" not in result.stdout + result.stderr
    missing = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such job file" in missing.output


def test_a_misspelt_key_at_any_depth_gets_a_did_you_mean(tmp_path):
    raw = electron_id_raw()
    raw["train"]["epochz"] = raw["train"].pop("epochs")
    raw["data"]["inputs"]["image"]["nrom"] = raw["data"]["inputs"]["image"].pop("norm")  # under the input's kind
    raw["model"]["filtrs"] = raw["model"].pop("filters")  # under the model's name
    raw["data"]["objects"] = {"count": "nElectron", "max_per_evnt": 2}  # under an optional section
    raw["evaluate"]["nothing_like_any_key"] = 1
    result = CliRunner().invoke(app, ["validate", str(write(tmp_path, raw))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for line in (
        "train.epochz: unknown key; did you mean 'epochs'?",
        "data.inputs.image.nrom: unknown key; did you mean 'norm'?",
        "model.filtrs: unknown key; did you mean 'filters'?",
        "data.objects.max_per_evnt: unknown key; did you mean 'max_per_event'?",
    ):
        assert line in result.output
    assert "evaluate.nothing_like_any_key: unknown key\n" in result.output  # nothing close: no guess
