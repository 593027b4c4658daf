"""`points` inputs: sorted, truncated, padded and masked as a reference loop over a few events
does it, and the same tensors whether they travel ragged through Arrow blocks or dense."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from hepray.data.batches import to_block, to_tensors
from hepray.inputs import Ragged, encoder_for, make_input
from hepray.inputs.points import PointCloud


def constituents(seed: int = 4, events: int = 40) -> dict[str, ak.Array]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 12, events)
    counts[:3] = [0, 1, 11]
    total = int(counts.sum())
    return {
        "pt": ak.unflatten(rng.exponential(5.0, total), counts),
        "eta": ak.unflatten(rng.normal(0, 0.3, total), counts),
        "charge": ak.unflatten(rng.integers(-1, 2, total).astype(np.int32), counts),
    }


def reference(arrays: dict, features, sort_by: str | None, size: int) -> np.ndarray:
    """One event and one point at a time: the definition the vectorized encoder must meet."""
    pt, eta, charge = (ak.to_list(arrays[name]) for name in ("pt", "eta", "charge"))
    out = np.zeros((len(pt), size, 1 + len(features)), np.float32)
    for event in range(len(pt)):
        rows = [
            {"pt": p, "eta": e, "charge": c, "log(pt)": np.log(p)}
            for p, e, c in zip(pt[event], eta[event], charge[event])
        ]
        if sort_by:
            rows = sorted(rows, key=lambda row: -row[sort_by])  # stable: ties keep the file's order
        for slot, row in enumerate(rows[:size]):
            out[event, slot] = [1.0, *(row[name] for name in features)]
    return out


@pytest.mark.parametrize("sort_by,size", [(None, 16), ("pt", 16), ("pt", 4), ("eta", 1)])
def test_points_match_the_reference_loop(sort_by, size):
    arrays = constituents()
    features = ["eta", "log(pt)", "charge"]
    spec = PointCloud(kind="points", features=features, sort_by=sort_by, max=size)
    dense = make_input(spec, arrays)
    assert dense.shape == (40, size, 4) and dense.dtype == np.float32
    np.testing.assert_allclose(dense, reference(arrays, features, sort_by, size), rtol=1e-6)
    assert dense[0].sum() == 0 and dense[1, 0, 0] == 1 and dense[1, 1:, 0].sum() == 0  # mask: real points first


def test_points_travel_ragged_and_decode_to_the_dense_tensor():
    arrays = constituents()
    spec = PointCloud(kind="points", features=["eta", "pt"], sort_by="pt", max=8)
    encoder = encoder_for(spec)
    ragged = encoder.ragged(arrays)
    assert isinstance(ragged, Ragged) and np.diff(ragged.offsets).max() <= 8  # no padding travels
    halves = Ragged.concat([ragged.slice(0, 17), ragged.slice(17, 40)])
    block = to_block({"entry": np.arange(40), "cands": halves}, 5, 40, {"cands": spec})
    tensors = to_tensors(block)
    np.testing.assert_array_equal(tensors["cands"].numpy(), make_input(spec, arrays)[5:])
    np.testing.assert_array_equal(tensors["entry"].numpy(), np.arange(5, 40))
    shuffled = Ragged.concat([ragged], np.arange(40)[::-1])
    np.testing.assert_array_equal(encoder.decode(shuffled), make_input(spec, arrays)[::-1])


def test_points_name_what_is_wrong():
    arrays = constituents()
    spec = PointCloud(kind="points", features=["eta", "log(pt)"], max=8)
    with pytest.raises(ValueError, match="one value per event"):
        make_input(
            PointCloud(kind="points", features=["ak_sum_is_not_needed"], max=4), {"ak_sum_is_not_needed": np.ones(3)}
        )
    bad = dict(
        arrays,
        pt=ak.unflatten(np.where(ak.flatten(arrays["pt"]) > 9, -1.0, ak.flatten(arrays["pt"])), ak.num(arrays["pt"])),
    )
    with pytest.raises(ValueError, match=r"'log\(pt\)'.*NaN"):
        make_input(spec, bad)
    other = dict(arrays, eta=ak.unflatten(np.zeros(5), [5] + [0] * 39))
    with pytest.raises(ValueError, match="different numbers of points"):
        make_input(spec, other)


@pytest.mark.slow
def test_point_cloud_job_trains_and_predicts(ray_session, tmp_path):
    """Study 003's jets as point clouds through the whole path: read tasks ship ragged points, the
    workers pad them, the model trains, is exported and scores new files."""
    from hepray.app.predict import predict_files
    from hepray.app.run import run_job
    from hepray.spec import load_job

    overrides = [
        f"data.generate.out={tmp_path}/jets",
        f"data.files.qcd={tmp_path}/jets/qcd_*.root",
        f"data.files.hbb={tmp_path}/jets/hbb_*.root",
        "data.generate.events=300",
        "train.epochs=1",
        "model={name: deepsets, phi: [16, 16], head: [16]}",
        "evaluate.plots=false",
        "data.inputs.cands.max=24",
    ]
    job = load_job("jobs/jets_particlenet.yaml", overrides)
    metrics = run_job(job, tmp_path / "run")
    assert metrics["test_events"] > 100 and 0.5 < metrics["test_auc"] <= 1.0
    assert metrics["onnx_max_abs_difference"] < 1e-3
    report = predict_files(tmp_path / "run", [f"{tmp_path}/jets/hbb_000.root"], tmp_path / "scores")
    assert report.events == 300 and report.events_skipped == 0
