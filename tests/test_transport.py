"""Sparse image transport: the points a read task ships densify to exactly make_input's images,
through the in-process reader, Arrow blocks and a real Ray Data iterator with the training collate."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
import torch

from hepray.data.batches import ModelBatch, to_tensors
from hepray.data.root_source import EventReader, RootDatasource, plan_reads
from hepray.inputs import Ragged, densify, encoder_for, make_input, make_sparse, sparse_supported
from hepray.inputs.etaphi import EtaPhiImage
from hepray.inputs.hits_xy import HitsXYImage
from hepray.inputs.jet import JetImage
from hepray.inputs.voxels import VoxelImage
from hepray.spec import JobSpec
from rootfiles import etaphi_job, towers, write_tree


def random_points(rng, n_events: int, names: list[str], low: float, high: float) -> dict[str, ak.Array]:
    counts = rng.poisson(8, n_events)
    return {name: ak.unflatten(rng.uniform(low, high, counts.sum()), counts) for name in names}


def point_inputs():
    """(spec, arrays) of every kind with a sparse form; coarse cells, so many points share pixels."""
    rng = np.random.default_rng(3)
    n = 40
    towers_ = random_points(rng, n, ["tower_eta", "tower_phi", "tower_e"], -0.5, 0.5)
    hcal = random_points(rng, n, ["hcal_eta", "hcal_phi", "hcal_e"], -0.5, 0.5)
    centres = {"c_eta": rng.uniform(-0.1, 0.1, n), "c_phi": rng.uniform(-0.1, 0.1, n)}
    two_sets = EtaPhiImage(
        kind="etaphi",
        size=5,
        cell=0.15,
        center={"eta": "c_eta", "phi": "c_phi"},
        points=[
            {"eta": "tower_eta", "phi": "tower_phi", "value": "tower_e"},
            {"eta": "hcal_eta", "phi": "hcal_phi", "value": "hcal_e"},
        ],
    )
    jet = JetImage(
        kind="jet",
        eta="tower_eta",
        phi="tower_phi",
        value="tower_e",
        size=6,
        extent=0.4,
        preprocess=["translate", "flip"],
    )
    hits = random_points(rng, n, ["XE", "XW", "YE", "YW", "RC"], -2, 2)
    voxels = random_points(rng, n, ["x", "y", "z", "e"], 0, 3)
    voxel_spec = VoxelImage(
        kind="voxels",
        shape=(3, 3, 2),
        points={"x": "x", "y": "y", "z": "z", "value": "e"},
        range=[(0.0, 3.0), (0.0, 3.0), (0.0, 3.0)],
    )
    return [
        (two_sets, {**towers_, **hcal, **centres}),
        (jet, towers_),
        (HitsXYImage(kind="hits_xy", size=4, extent=2.0, encoding="per_hit"), hits),
        (voxel_spec, voxels),
    ]


@pytest.mark.parametrize("norm", ["none", "max", "l1", "l2", "log1p"])
def test_densified_points_equal_the_dense_images(norm):
    for spec, arrays in point_inputs():
        spec = spec.model_copy(update={"norm": norm})
        assert sparse_supported(spec)
        sparse = make_sparse(spec, arrays)
        dense = make_input(spec, arrays)
        assert len(sparse) == len(dense) and sparse.shape == dense.shape[1:]
        assert len(sparse.value) < dense.size  # only points inside the image travel
        np.testing.assert_array_equal(densify(sparse, norm), dense, err_msg=f"{spec.kind} {norm}")


def test_kinds_that_are_not_point_sums_stay_dense():
    assert not sparse_supported(HitsXYImage(kind="hits_xy", encoding="average"))
    assert not sparse_supported(VoxelImage(kind="voxels", shape=(2, 2, 2), cells="ecal"))


def test_take_slice_concat_keep_each_events_points():
    spec, arrays = point_inputs()[0]
    encoder = encoder_for(spec)
    rows = encoder.ragged(arrays)
    dense = encoder.decode(rows)
    np.testing.assert_array_equal(dense, make_input(spec, arrays))
    order = np.random.default_rng(0).permutation(len(rows))
    np.testing.assert_array_equal(encoder.decode(Ragged.concat([rows], order)), dense[order])
    halves = [rows.slice(0, 13), rows.slice(13, len(rows))]
    np.testing.assert_array_equal(encoder.decode(halves[1]), dense[13:])
    np.testing.assert_array_equal(encoder.decode(Ragged.concat(halves)), dense)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("transport")
    write_tree(root / "sig.root", towers(600, 0, seed=1, mean_towers=30, spread=0.2))
    write_tree(root / "bkg.root", towers(500, 1000, seed=2, mean_towers=30, spread=0.2))
    return JobSpec.model_validate(
        etaphi_job({"sig": str(root / "sig.root"), "bkg": str(root / "bkg.root")}, events_per_task=400)
    )


def read_table(job: JobSpec, sparse: bool) -> pa.Table:
    reader = EventReader(job.data, "train", shuffle=True, sparse=sparse)
    plan = plan_reads(job.data, reader.branches())
    return pa.concat_tables([block for task in plan.tasks for block in reader.read(task)])


def test_sparse_blocks_are_smaller_and_give_the_dense_tensors(job):
    dense, sparse = read_table(job, sparse=False), read_table(job, sparse=True)
    assert "image" not in sparse.column_names and {"image__pixel", "image__value"} <= set(sparse.column_names)
    assert sparse.nbytes < dense.nbytes / 2
    from_dense, from_sparse = to_tensors(dense), to_tensors(sparse)
    assert set(from_dense) == set(from_sparse)
    for name, tensor in from_dense.items():
        torch.testing.assert_close(from_sparse[name], tensor, rtol=0, atol=0, msg=name)


def test_through_ray_data_with_the_training_collate(ray_session, job):
    import ray

    reader = EventReader(job.data, "train", shuffle=True, sparse=True)
    plan = plan_reads(job.data, reader.branches())
    dataset = ray.data.read_datasource(RootDatasource(plan, reader), override_num_blocks=len(plan.tasks))
    batches = list(dataset.iterator().iter_torch_batches(batch_size=64, collate_fn=ModelBatch()))
    images = torch.cat([batch["image"] for batch in batches])
    assert images.shape[1:] == (1, 9, 9) and images.dtype == torch.float32
    expected = to_tensors(read_table(job, sparse=False))
    order = torch.argsort(torch.cat([batch["obs_evt"] for batch in batches]))
    torch.testing.assert_close(images[order], expected["image"][torch.argsort(expected["obs_evt"])], rtol=0, atol=0)
