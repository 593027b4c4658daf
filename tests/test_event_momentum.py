"""Track-momentum regression over whole events (study 002's next step): the loss with its
momentum-conservation term, per-track image channels, the per-track target, one tiny run."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from hepray.data.batches import to_tensors
from hepray.data.root_source import DataError, EventReader, plan_reads
from hepray.inputs import make_input
from hepray.inputs.hits_xy import HitsXYImage
from hepray.spec import SpecError, TaskSpec, load_job
from hepray.train.tasks import Task
from rootfiles import write_tree

JOB = Path(__file__).resolve().parents[1] / "jobs" / "drift_chamber_event_momentum.yaml"


# --- the loss -------------------------------------------------------------------------------

# Two events of two track slots. Event 0: slot 0 predicted 0.5 GeV high in px, slot 1 0.2 GeV off
# in py, so the predicted momenta sum to (0.5, 0.2, 0). Event 1: predicted exactly.
TRUTH = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]])
OUTPUTS = torch.tensor([[1.5, 0.0, 0.0, -1.0, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0, -1.0]])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # per track |dp|^2: 0.25 and 0.04, mean 0.145 in event 0, 0 in event 1; batch mean 0.0725
        (dict(), 0.145 / 2),
        # + 2 * |(0.5, 0.2, 0)|^2 = 0.58 in event 0
        (dict(conservation_weight=2.0), (0.145 + 0.58) / 2),
        # against an initial state (0.5, 0, 0): event 0 is off by (0, 0.2, 0), event 1 by (-0.5, 0, 0)
        (dict(conservation_weight=2.0, initial_momentum=(0.5, 0.0, 0.0)), (0.145 + 0.08 + 0.5) / 2),
        # Huber per component (0.5 * d^2 below 1): 0.125 and 0.02 in event 0
        (dict(loss="huber"), 0.0725 / 2),
    ],
)
def test_loss_is_per_track_error_plus_weighted_momentum_imbalance(spec, expected):
    task = Task(TaskSpec(kind="regression", **spec))
    assert task.loss(OUTPUTS, TRUTH).item() == pytest.approx(expected, rel=1e-6)


def test_conservation_term_pulls_the_sum_of_predictions_toward_the_initial_state():
    outputs = OUTPUTS.clone().requires_grad_()
    Task(TaskSpec(kind="regression", conservation_weight=1.0)).loss(outputs, TRUTH).backward()
    with_term = outputs.grad[0].reshape(2, 3)
    outputs.grad = None
    Task(TaskSpec(kind="regression")).loss(outputs, TRUTH).backward()
    without = outputs.grad[0].reshape(2, 3)
    # d/dp of 1/2 * 1 * |sum p|^2 (batch mean over 2 events) is sum p = (0.5, 0.2, 0) on every slot
    np.testing.assert_allclose((with_term - without).numpy(), [[0.5, 0.2, 0.0]] * 2, atol=1e-6)


def test_epoch_metrics_report_track_pt_response_and_event_imbalance():
    task = Task(TaskSpec(kind="regression", conservation_weight=1.0))
    metrics = task.epoch_metrics(OUTPUTS.numpy(), TRUTH.numpy(), "val")
    assert metrics["val_imbalance"] == pytest.approx(np.hypot(0.5, 0.2) / 2, rel=1e-6)
    assert set(metrics) == {"val_imbalance", "val_response", "val_resolution"}
    assert task.scores(OUTPUTS.numpy()).shape == (2, 6)  # every slot's px, py, pz


# --- inputs and target -------------------------------------------------------------------------


def track_hits() -> dict[str, ak.Array]:
    # size 4, extent 2: cell 1, pixel floor(x + 2). Event 0: track 1 has a hit at (0.5, -0.5) and one
    # outside the window, track 2 one at (1.5, 1.5); a noise hit (TRK 0) and a hit of track 3 (no
    # slot with tracks: 2) share the first pixel. Event 1: one hit of track 2 at (-0.5, 0.5).
    x = ak.Array([[0.5, 5.0, 1.5, 0.5, 0.5], [-0.5]])
    y = ak.Array([[-0.5, 0.0, 1.5, -0.5, -0.5], [0.5]])
    return {
        "XE": x,
        "XW": x,
        "YE": y,
        "YW": y,
        "RC": ak.Array([[10.0, 30.0, 20.0, 99.0, 7.0], [4.0]]),
        "TRK": ak.Array([[1, 1, 2, 0, 3], [2]]),
    }


@pytest.mark.parametrize(
    ("encoding", "track_1", "track_2"),
    [
        ("binary", 1.0, 1.0),
        ("per_hit", 10.0, 20.0),
        ("total", 40.0, 20.0),  # the track's hits only, its hit outside the window too
        ("average", 20.0, 20.0),
    ],
)
def test_track_channels_hold_each_tracks_hits_alone(encoding, track_1, track_2):
    spec = HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding=encoding, track_branch="TRK", tracks=2)
    expected = np.zeros((2, 2, 4, 4), np.float32)
    expected[0, 0, 1, 2] = track_1  # row i_y = 1, column i_x = 2
    expected[0, 1, 3, 3] = track_2
    expected[1, 1, 2, 1] = 4.0 if encoding != "binary" else 1.0
    np.testing.assert_array_equal(make_input(spec, track_hits()), expected)
    with pytest.raises(ValueError, match="track_branch and tracks go together"):
        HitsXYImage(kind="hits_xy", track_branch="TRK")


def tiny_job(path, **overrides):
    settings = [
        f"data.files=[{path}]",
        "data.generate=null",
        "data.target.tracks=2",
        "data.inputs.image={kind: hits_xy, size: 4, extent: 2.0, track_branch: TRK, tracks: 2}",
        *(f"{key}={value}" for key, value in overrides.items()),
    ]
    return load_job(JOB, settings)


def test_target_is_every_slots_momentum_and_a_missing_slot_is_an_error(tmp_path):
    branches = {
        **track_hits(),
        "trk_px": ak.Array([[1.0, -1.0], [0.5, -0.5]]),
        "trk_py": ak.Array([[0.1, 0.2], [0.3, 0.4]]),
        "trk_pz": ak.Array([[2.0, -2.0], [0.0, 0.0]]),
    }
    job = tiny_job(write_tree(tmp_path / "ok.root", branches))
    reader = EventReader(job.data, None)
    batch = to_tensors(next(reader.read(plan_reads(job.data, reader.branches()).tasks[0])))
    np.testing.assert_allclose(
        batch["target"].numpy(), [[[1.0, 0.1, 2.0], [-1.0, 0.2, -2.0]], [[0.5, 0.3, 0.0], [-0.5, 0.4, 0.0]]], rtol=1e-6
    )
    assert batch["image"].shape == (2, 2, 4, 4) and job.n_outputs == 6

    branches.update(trk_px=ak.Array([[1.0, -1.0], [0.5]]))
    job = tiny_job(write_tree(tmp_path / "short.root", branches))
    reader = EventReader(job.data, None)
    with pytest.raises(DataError, match=r"'trk_px' has 1 values at entry 1; track momenta need 2 .*data.target.tracks"):
        next(reader.read(plan_reads(job.data, reader.branches()).tasks[0]))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("data.target=trk_px", "task.conservation_weight: needs a regression of track momenta"),
        ("task.loss=relative", "task.loss: relative divides by the target"),
        ("data.augment=[hflip]", "data.augment: a mirrored image would need mirrored momenta"),
        ("evaluate.baselines={pt: trk_px}", "evaluate.baselines: baselines give one number per event"),
    ],
)
def test_job_rejects_what_track_momenta_cannot_go_with(setting, message):
    with pytest.raises(SpecError, match=message):
        load_job(JOB, ["task.conservation_weight=1", setting])


# --- one tiny run ---------------------------------------------------------------------------------


def test_event_momentum_job_runs_one_tiny_epoch(ray_session, tmp_path):
    from hepray.app.predict import predict_files
    from hepray.app.run import run_job

    data = tmp_path / "data"
    overrides = [
        f"data.generate.out={data}",
        "data.generate.events=100",
        f"data.files=[{data}/psip_ee_*.root, {data}/psip_mumu_*.root, {data}/continuum_*.root]",
        "data.inputs.image.size=32",
        "model.filters=8",
        "model.blocks=2",
        "model.dense=16",
        "train.epochs=1",
        "task.conservation_weight=1",
    ]
    metrics = run_job(load_job(JOB, overrides), tmp_path / "run")
    assert metrics["events_read"] == 300 and metrics["epochs_run"] == 1
    assert metrics["test_events"] == 4 * metrics["test_event_count"]  # the per-track numbers count tracks
    assert 0 < metrics["test_imbalance_pt_mean"] <= metrics["test_imbalance_mean"] < 10
    assert np.isfinite(metrics["val_imbalance"]) and np.isfinite(metrics["test_track_rmse_pz"])
    assert {"test_iqr_rel", "test_resolution_iqr", "test_events@track_slot[3,4)"} <= set(metrics)
    assert (tmp_path / "run" / "model.onnx").stat().st_size > 0

    # `hepray predict` writes every slot's predicted px, py, pz
    report = predict_files(tmp_path / "run", [str(data / "continuum_000.root")], tmp_path / "predicted")
    with uproot.open(report.outputs[0]) as file:
        rows = file["predictions"].arrays(library="np")
    assert {f"pred_trk_{c}_{slot}" for slot in range(4) for c in ("px", "py", "pz")} < set(rows)
    assert len(rows["entry"]) == 100 and np.isfinite(rows["pred_trk_pz_3"]).all()
