"""Blocks between the read tasks and the model, and the one way back to dense tensors.

Point-sum images (etaphi, jet, voxel points, hits_xy per_hit) travel sparse: two list columns
`<name>__pixel` (int32, index into the flattened image) and `<name>__value` (float32), whose
Arrow field metadata carry the input's kind and spec, so the input's encoder decodes them. About 100 points of 8 bytes per event
travel instead of 2209 float32 pixels (8.8 KB), so the object store, the network of a cluster
and the read tasks handle ~10x fewer bytes. `to_tensors` turns any batch (sparse or dense) into
the model's dense, normalised tensors; the training loop (`ModelBatch`, run in Ray's prefetch
threads) and batch inference both use it, so they cannot disagree.
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import torch
from ray.data.block import BlockAccessor
from ray.data.collate_fn import ArrowBatchCollateFn

from hepray.inputs import SparseImages, encoder_from_json

PIXEL, VALUE = "__pixel", "__value"
KIND_KEY, SPEC_KEY = b"hepray.kind", b"hepray.spec"


def to_block(batch: dict[str, np.ndarray | SparseImages], begin: int, stop: int, specs: dict) -> pa.Table:
    """Events [begin, stop) of a read task's columns as an Arrow block; `specs` are the sparse
    inputs' specs, which ride along in the column metadata."""
    dense = {key: value[begin:stop] for key, value in batch.items() if not isinstance(value, SparseImages)}
    table = BlockAccessor.batch_to_block(dense)
    for name, images in batch.items():
        if not isinstance(images, SparseImages):
            continue
        part = images.slice(begin, stop)
        offsets = pa.array((part.offsets - part.offsets[0]).astype(np.int32))
        metadata = {KIND_KEY: specs[name].kind.encode(), SPEC_KEY: specs[name].model_dump_json(by_alias=True).encode()}
        for suffix, values in ((PIXEL, part.pixel), (VALUE, part.value)):
            column = pa.ListArray.from_arrays(offsets, pa.array(values))
            table = table.append_column(pa.field(name + suffix, column.type, metadata=metadata), column)
    return table


def to_tensors(batch: pa.Table) -> dict[str, torch.Tensor]:
    """Every column of a batch as a CPU tensor; sparse images decoded by their input's encoder."""
    sparse = {field.name[:-len(VALUE)]: field.metadata for field in batch.schema
              if field.name.endswith(VALUE) and field.metadata and SPEC_KEY in field.metadata}
    carried = [name for name in batch.column_names
               if not any(name in (image + PIXEL, image + VALUE) for image in sparse)]
    columns = BlockAccessor.for_block(batch.select(carried)).to_batch_format("numpy")
    tensors = {name: torch.from_numpy(np.require(array, requirements="W")) for name, array in columns.items()}
    for name, metadata in sparse.items():
        encoder = encoder_from_json(metadata[KIND_KEY].decode(), metadata[SPEC_KEY].decode())
        images = _sparse_column(batch, name, encoder.spec.shape())
        tensors[name] = torch.from_numpy(encoder.decode(images))
    return tensors


def _sparse_column(batch: pa.Table, name: str, shape: tuple[int, ...]) -> SparseImages:
    pixel = batch.column(name + PIXEL).combine_chunks()
    value = batch.column(name + VALUE).combine_chunks()
    offsets = value.offsets.to_numpy().astype(np.int64)  # a sliced list array's offsets need not start at 0
    return SparseImages(offsets - offsets[0], pixel.flatten().to_numpy(), value.flatten().to_numpy(), shape)


class ModelBatch(ArrowBatchCollateFn):
    """`iter_torch_batches(collate_fn=ModelBatch())`: densifies in Ray's prefetch threads, so it
    overlaps the training step; Ray then moves the tensors to the worker's device."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return to_tensors(batch)

