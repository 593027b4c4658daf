"""Densify on the device and the training worker's GPU paths, exercised on CPU through the same code.

What travelled ragged is decoded by the encoders' torch ops (`decode_tensors`, `to_tensors`):
on CPU they give the numpy path's images bit for bit (index_add_ adds in the points' order, as
np.add.at does; the norms are one torch function). On CUDA, pixels that several points share are
summed by atomics in no fixed order and the norms reduce in CUDA's order: equal within float32
rounding (the CUDA test runs where a GPU is). The options train.amp, train.channels_last and train.sync_batchnorm fall back
where they cannot apply, and train a tiny job on CPU through the real trainer.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from hepray.data.batches import ModelBatch, to_block, to_tensors, unpack
from hepray.data.root_source import EventReader, plan_reads
from hepray.inputs import Ragged, encoder_for, make_input
from hepray.inputs.etaphi import EtaPhiImage
from hepray.inputs.hits_xy import HitsXYImage
from hepray.inputs.jet import JetImage
from hepray.inputs.points import PointCloud
from hepray.inputs.voxels import VoxelImage
from hepray.spec import JobSpec
from hepray.train.device import channels_last, precision_for, sync_batchnorm
from rootfiles import etaphi_job, towers, write_tree

NORMS = ["none", "max", "l1", "l2", "log1p"]
N_EVENTS = 60


def jagged(rng, counts: np.ndarray, low: float, high: float) -> ak.Array:
    return ak.unflatten(rng.uniform(low, high, counts.sum()), counts)


def values(rng, counts: np.ndarray) -> ak.Array:
    """Six decades of magnitude, one in ten negative (noise): the order of a pixel's sum shows in its bits."""
    magnitude = rng.exponential(1.0, counts.sum()) * 10.0 ** rng.uniform(-3, 3, counts.sum())
    return ak.unflatten(np.where(rng.random(counts.sum()) < 0.1, -magnitude, magnitude), counts)


def image_inputs() -> list[tuple]:
    """(spec, arrays) of every image kind that travels ragged; coarse grids, so many points share pixels."""
    rng = np.random.default_rng(7)
    counts, hcal_counts = rng.poisson(25, N_EVENTS), rng.poisson(10, N_EVENTS)
    counts[:2] = 0  # events without points: all-zero images
    towers_ = {
        "t_eta": jagged(rng, counts, -0.4, 0.4),
        "t_phi": jagged(rng, counts, -0.4, 0.4),
        "t_e": values(rng, counts),
        "t_layer": ak.unflatten(rng.integers(0, 4, counts.sum()), counts),  # 3 is no channel: dropped
        "h_eta": jagged(rng, hcal_counts, -0.4, 0.4),
        "h_phi": jagged(rng, hcal_counts, -0.4, 0.4),
        "h_e": values(rng, hcal_counts),
        "c_eta": rng.uniform(-0.05, 0.05, N_EVENTS),
        "c_phi": rng.uniform(-0.05, 0.05, N_EVENTS),
    }
    hits = {name: jagged(rng, counts, -2, 2) for name in ("XE", "XW", "YE", "YW")}
    hits.update(RC=values(rng, counts), TRK=ak.unflatten(rng.integers(0, 3, counts.sum()), counts))
    voxels = {name: jagged(rng, counts, 0, 3) for name in ("x", "y", "z")} | {"e": values(rng, counts)}
    tower_set = {"eta": "t_eta", "phi": "t_phi", "value": "t_e"}
    return [
        (
            EtaPhiImage(
                kind="etaphi",
                size=5,
                cell=0.15,
                center={"eta": "c_eta", "phi": "c_phi"},
                points=[tower_set, {"eta": "h_eta", "phi": "h_phi", "value": "h_e"}],
            ),
            towers_,
        ),
        (
            EtaPhiImage(kind="etaphi", size=4, cell=0.2, points=[tower_set], channel_branch="t_layer", n_channels=3),
            towers_,
        ),
        (JetImage(kind="jet", eta="t_eta", phi="t_phi", value="t_e", size=5, extent=0.4), towers_),
        (HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding="per_hit", track_branch="TRK", tracks=2), hits),
        (
            VoxelImage(
                kind="voxels",
                shape=(3, 3, 2),
                points={"x": "x", "y": "y", "z": "z", "value": "e"},
                range=[(0.0, 3.0), (0.0, 3.0), (0.0, 3.0)],
            ),
            voxels,
        ),
    ]


def on_device(encoder, rows: Ragged) -> np.ndarray:
    columns = {name: torch.from_numpy(column) for name, column in rows.columns.items()}
    return encoder.decode_tensors(torch.from_numpy(rows.offsets), columns).numpy()


def points_reversed(rows: Ragged) -> Ragged:
    """Each event's points in the opposite order (the events too, so the caller flips them back)."""
    offsets = np.concatenate([[0], np.cumsum(np.diff(rows.offsets)[::-1])])
    return Ragged(offsets, {name: column[::-1].copy() for name, column in rows.columns.items()})


@pytest.mark.parametrize("norm", NORMS)
def test_device_densify_equals_the_numpy_one_on_every_image_kind(norm):
    for spec, arrays in image_inputs():
        spec = spec.model_copy(update={"norm": norm})
        encoder = encoder_for(spec)
        rows = encoder.ragged(arrays)
        expected = encoder.decode(rows)  # the numpy path
        np.testing.assert_array_equal(expected, make_input(spec, arrays), err_msg=f"{spec.kind} {norm}")
        np.testing.assert_array_equal(on_device(encoder, rows), expected, err_msg=f"{spec.kind} {norm}")
        block = to_block({"entry": np.arange(N_EVENTS), "image": rows}, 3, N_EVENTS, {"image": spec})
        np.testing.assert_array_equal(to_tensors(block)["image"].numpy(), expected[3:], err_msg=f"{spec.kind} {norm}")


def test_a_shuffled_densify_equals_the_densify_then_the_permutation():
    """The training windows' shuffle (ModelBatch's shuffle_seed) puts each event into its new row as
    it is densified: bit for bit the unshuffled tensors reordered, images, point clouds and the
    carried columns alike."""
    point_spec = PointCloud(kind="points", features=["t_eta", "t_e"], sort_by="t_e", max=8)
    order = torch.from_numpy(np.random.default_rng(3).permutation(N_EVENTS - 3))
    for spec, arrays in [*image_inputs(), (point_spec, image_inputs()[0][1])]:
        rows = encoder_for(spec).ragged(arrays)
        block = to_block({"entry": np.arange(N_EVENTS), "image": rows}, 3, N_EVENTS, {"image": spec})
        plain, shuffled = to_tensors(block), to_tensors(block, order=order)
        assert not torch.equal(shuffled["image"], plain["image"]), spec.kind
        for name in ("image", "entry"):
            torch.testing.assert_close(shuffled[name], plain[name][order], rtol=0, atol=0, msg=f"{spec.kind} {name}")


def test_model_batch_shuffles_by_seed_and_window_not_by_call_order():
    spec, arrays = image_inputs()[0]
    block = to_block(
        {"entry": np.arange(N_EVENTS), "image": encoder_for(spec).ragged(arrays)}, 0, N_EVENTS, {"image": spec}
    )
    epoch_zero, again, epoch_one = (ModelBatch(shuffle_seed=(1, epoch))(block)["entry"] for epoch in (0, 0, 1))
    assert torch.equal(epoch_zero, again) and not torch.equal(epoch_zero, epoch_one)
    assert torch.equal(epoch_zero.sort().values, torch.arange(N_EVENTS))  # every event once
    assert not torch.equal(epoch_zero, torch.arange(N_EVENTS))
    assert torch.equal(ModelBatch()(block)["entry"], torch.arange(N_EVENTS))  # no seed: as read


def test_the_images_depend_on_the_order_of_each_pixels_sum():
    """What makes the exact comparison above worth having: summing the same points in another order
    changes some pixels' last bits, so a device path that reorders them would fail it."""
    for spec, arrays in image_inputs():
        encoder = encoder_for(spec)
        rows = encoder.ragged(arrays)
        forward, backward = on_device(encoder, rows), on_device(encoder, points_reversed(rows))[::-1]
        np.testing.assert_allclose(backward, forward, rtol=1e-5, atol=1e-3)
        assert not np.array_equal(backward, forward), spec.kind


def test_device_points_are_padded_and_masked_as_the_numpy_path():
    rng = np.random.default_rng(5)
    counts = rng.poisson(6, N_EVENTS)
    counts[0] = 0
    arrays = {"pt": values(rng, counts), "eta": jagged(rng, counts, -2, 2)}
    spec = PointCloud(kind="points", features=["eta", "log(abs(pt))"], sort_by="pt", max=8)
    encoder = encoder_for(spec)
    rows = encoder.ragged(arrays)
    padded = on_device(encoder, rows)
    np.testing.assert_array_equal(padded, encoder.decode(rows))
    np.testing.assert_array_equal(padded, make_input(spec, arrays))
    kept = np.minimum(counts, 8)
    assert counts.max() > 8 and (kept < 8).any()  # both truncation and padding happen
    np.testing.assert_array_equal(padded[:, :, 0].sum(axis=1), kept)  # the mask counts the kept points
    assert not padded[np.arange(8)[None, :] >= kept[:, None]].any()  # padding rows are all zero


@pytest.fixture(scope="module")
def root_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    write_tree(root / "sig.root", towers(300, 0, seed=1, mean_towers=30, spread=0.2))
    write_tree(root / "bkg.root", towers(250, 1000, seed=2, mean_towers=30, spread=0.2))
    raw = etaphi_job({"sig": str(root / "sig.root"), "bkg": str(root / "bkg.root")}, events_per_task=200)
    raw["data"]["inputs"]["image"]["norm"] = "log1p"
    raw["data"]["inputs"]["towers"] = {"kind": "points", "features": ["tower_eta", "tower_e"], "sort_by": "tower_e"}
    raw["data"]["inputs"]["towers"]["max"] = 16
    return JobSpec.model_validate(raw)


def read_table(job: JobSpec, sparse: bool) -> pa.Table:
    reader = EventReader(job.data, "train", shuffle=True, sparse=sparse)
    return pa.concat_tables(
        [block for task in plan_reads(job.data, reader.branches()).tasks for block in reader.read(task)]
    )


def test_device_densify_of_blocks_read_from_a_root_file(root_job):
    table = read_table(root_job, sparse=True)
    assert {"image__pixel", "image__value", "towers__0", "towers__1"} <= set(table.column_names)
    travelled = unpack(table)
    assert set(travelled.ragged) == {"image", "towers"} and "image" not in travelled.carried
    tensors = to_tensors(table)
    for name, rows in travelled.ragged.items():
        numpy_rows = Ragged(rows.offsets.numpy(), {column: value.numpy() for column, value in rows.columns.items()})
        np.testing.assert_array_equal(tensors[name].numpy(), rows.encoder.decode(numpy_rows), err_msg=name)
    # the read tasks' dense images (sparse: false) are the same tensors, column by column
    dense = to_tensors(read_table(root_job, sparse=False))
    assert set(dense) == set(tensors)
    for name, tensor in dense.items():
        torch.testing.assert_close(tensors[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_densify_equals_the_cpu_one_within_summation_order(root_job):
    table = read_table(root_job, sparse=True)
    on_cpu, on_gpu = to_tensors(table), to_tensors(table, "cuda")
    for name, tensor in on_cpu.items():
        assert on_gpu[name].device.type == "cuda"
        torch.testing.assert_close(on_gpu[name].cpu(), tensor, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------- GPU options, guarded


def test_amp_modes_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_for("auto", cpu).dtype is None and precision_for("off", cuda, True).dtype is None
    bf16_cpu = precision_for("bf16", cpu)
    assert (bf16_cpu.device_type, bf16_cpu.dtype, bf16_cpu.note) == ("cpu", torch.bfloat16, "")
    assert precision_for("auto", cuda, bf16_supported=True).dtype == torch.bfloat16
    assert precision_for("auto", cuda, bf16_supported=False).dtype == torch.float16  # V100, T4: with a scaler
    older = precision_for("bf16", cuda, bf16_supported=False)
    assert older.dtype == torch.float16 and "no bf16" in older.note
    assert precision_for("fp16", cuda, bf16_supported=True).dtype == torch.float16


def test_fp16_without_cuda_falls_back_to_float32_and_says_so():
    precision = precision_for("fp16", torch.device("cpu"))
    assert precision.dtype is None
    assert precision.note == "train.amp: fp16 needs a CUDA GPU and this worker has none; training in float32"
    # and the fallback trains: one step through its autocast and (pass-through) grad scaler
    model, scaler = nn.Linear(3, 1), precision.grad_scaler()
    assert not scaler.is_enabled()
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with precision.autocast():
        loss = model(torch.ones(4, 3)).square().mean()
    assert loss.dtype == torch.float32
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(model.weight, before)


def test_bf16_on_cpu_runs_under_cpu_autocast():
    with precision_for("bf16", torch.device("cpu")).autocast():
        assert nn.Linear(3, 2)(torch.ones(4, 3)).dtype == torch.bfloat16


def test_channels_last_changes_only_2d_images():
    image, voxels, points = torch.rand(2, 3, 4, 5), torch.rand(2, 1, 3, 3, 3), torch.rand(2, 8, 4)
    moved = channels_last({"image": image, "voxels": voxels, "points": points})
    assert moved["image"].is_contiguous(memory_format=torch.channels_last) and not image.is_contiguous(
        memory_format=torch.channels_last
    )
    torch.testing.assert_close(moved["image"], image, rtol=0, atol=0)  # same values, other memory order
    assert moved["voxels"] is voxels and moved["points"] is points


def test_sync_batchnorm_converts_only_where_it_can_train():
    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(1))

    def kinds(module: nn.Module) -> list[type]:
        return [type(m) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    kept, note = sync_batchnorm(model(), world_size=2, device=torch.device("cpu"))
    assert kinds(kept) == [nn.BatchNorm2d] and "needs CUDA" in note
    kept, note = sync_batchnorm(model(), world_size=1, device=torch.device("cuda"))
    assert kinds(kept) == [nn.BatchNorm2d] and "one worker" in note
    plain = model()
    converted, note = sync_batchnorm(plain, world_size=2, device=torch.device("cuda"))
    assert kinds(converted) == [nn.SyncBatchNorm] and note == ""
    # the same state-dict keys: a checkpoint trained with it loads into the plain model
    assert converted.state_dict().keys() == model().state_dict().keys()


def test_one_epoch_with_bf16_channels_last_and_sync_batchnorm(ray_session, tmp_path):
    from hepray.app.run import run_job
    from hepray.evaluate.inference import load_model

    write_tree(tmp_path / "narrow.root", towers(300, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(tmp_path / "wide.root", towers(300, 1000, seed=2, energy=2.0, spread=0.12))
    raw = etaphi_job(
        {"narrow": str(tmp_path / "narrow.root"), "wide": str(tmp_path / "wide.root")},
        split={"val": 0.2, "test": 0.3, "seed": 1},
    )
    raw["model"] = {"name": "cvn", "width": 0.1, "tower_inception": 0, "merged_inception": 1, "batchnorm": True}
    raw["train"] = {"epochs": 1, "batch_size": 32, "lr": 3e-3, "amp": "bf16", "channels_last": True}
    raw["train"]["sync_batchnorm"] = True
    metrics = run_job(JobSpec.model_validate(raw), tmp_path / "run")
    assert metrics["epochs_run"] == 1 and np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    assert metrics["test_auc"] > 0.6
    model, _ = load_model(tmp_path / "run" / "model.pt")  # BatchNorm kept (CPU), weights saved as usual
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.isfinite(model({"image": torch.rand(2, 1, 9, 9)})).all()
