"""Blocks between the read tasks and the model, and the one way back to dense tensors.

Inputs that travel ragged (point-sum images: etaphi, jet, voxel points, hits_xy per_hit; point
clouds) leave the read task as list columns `<name>__<column>` sharing one list structure, whose
Arrow field metadata carry the input's name, kind and spec, so the input's encoder decodes them.
About 100 points of 8 bytes per event travel instead of 2209 float32 pixels (8.8 KB), so the
object store, the network of a cluster and the read tasks handle ~10x fewer bytes.

They stay that small up to the model's device: `unpack` turns a batch into CPU tensors of what
travelled (the flat columns and offsets, with the encoder that decodes them), and `densify` moves
them there (pinned and non-blocking for CUDA) and builds the dense inputs with the encoders'
torch ops, the same function on CPU and GPU. `to_tensors` is the two in one: the training loop
(`ModelBatch`, run in Ray's prefetch threads) and batch inference both use it, so they cannot
disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from ray.data.block import BlockAccessor
from ray.data.collate_fn import ArrowBatchCollateFn

from hepray.inputs import Encoder, Ragged, encoder_from_json

SEPARATOR = "__"
INPUT_KEY, KIND_KEY, SPEC_KEY = b"hepray.input", b"hepray.kind", b"hepray.spec"


def to_block(batch: dict[str, np.ndarray | Ragged], begin: int, stop: int, specs: dict) -> pa.Table:
    """Events [begin, stop) of a read task's columns as an Arrow block; `specs` are the ragged
    inputs' specs, which ride along in the column metadata."""
    dense = {key: value[begin:stop] for key, value in batch.items() if not isinstance(value, Ragged)}
    table = BlockAccessor.batch_to_block(dense)
    for name, rows in batch.items():
        if not isinstance(rows, Ragged):
            continue
        part = rows.slice(begin, stop)
        offsets = pa.array(part.offsets.astype(np.int32))
        metadata = {
            INPUT_KEY: name.encode(),
            KIND_KEY: specs[name].kind.encode(),
            SPEC_KEY: specs[name].model_dump_json(by_alias=True).encode(),
        }
        for column_name, values in part.columns.items():
            column = pa.ListArray.from_arrays(offsets, pa.array(values))
            table = table.append_column(
                pa.field(name + SEPARATOR + column_name, column.type, metadata=metadata), column
            )
    return table


@dataclass
class TravelledInput:
    """One ragged input of a batch as it travelled: its rows' offsets (int64, from 0), its flat
    columns, and the encoder that decodes them."""

    encoder: Encoder
    offsets: torch.Tensor
    columns: dict[str, torch.Tensor]


@dataclass
class Travelled:
    """A batch as CPU tensors of what travelled: every other column as it is, ragged inputs undecoded."""

    carried: dict[str, torch.Tensor]
    ragged: dict[str, TravelledInput]


def unpack(batch: pa.Table, pin_memory: bool = False) -> Travelled:
    """A batch's columns as CPU tensors (in pinned memory if asked: CUDA copies them without waiting)."""
    ragged: dict[str, list[pa.Field]] = {}
    for field in batch.schema:
        if field.metadata and INPUT_KEY in field.metadata:
            ragged.setdefault(field.metadata[INPUT_KEY].decode(), []).append(field)
    travelled = {field.name for fields in ragged.values() for field in fields}
    carried = [name for name in batch.column_names if name not in travelled]
    columns = BlockAccessor.for_block(batch.select(carried)).to_batch_format("numpy")
    inputs = {}
    for name, fields in ragged.items():
        metadata = fields[0].metadata
        rows = _ragged_columns(batch, name, fields)
        inputs[name] = TravelledInput(
            encoder_from_json(metadata[KIND_KEY].decode(), metadata[SPEC_KEY].decode()),
            _tensor(rows.offsets, pin_memory),
            {column: _tensor(values, pin_memory) for column, values in rows.columns.items()},
        )
    return Travelled({name: _tensor(array, pin_memory) for name, array in columns.items()}, inputs)


def densify(batch: Travelled, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The model's tensors on `device`: what travelled is moved there as it is (non-blocking) and
    the ragged inputs are decoded there by their encoders' torch ops."""
    tensors = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.carried.items()}
    for name, rows in batch.ragged.items():
        columns = {column: values.to(device, non_blocking=True) for column, values in rows.columns.items()}
        tensors[name] = rows.encoder.decode_tensors(rows.offsets.to(device, non_blocking=True), columns)
    return tensors


def to_tensors(batch: pa.Table, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every column of a batch as a tensor on `device`, ragged inputs decoded there."""
    device = torch.device(device)
    return densify(unpack(batch, pin_memory=device.type == "cuda"), device)


def _tensor(array: np.ndarray, pin_memory: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.require(array, requirements="W"))  # Arrow's buffers are read-only
    return tensor.pin_memory() if pin_memory else tensor


def _ragged_columns(batch: pa.Table, name: str, fields: list[pa.Field]) -> Ragged:
    lists = {field.name[len(name) + len(SEPARATOR) :]: batch.column(field.name).combine_chunks() for field in fields}
    offsets = next(iter(lists.values())).offsets.to_numpy().astype(np.int64)  # a sliced list's need not start at 0
    return Ragged(offsets - offsets[0], {column: values.flatten().to_numpy() for column, values in lists.items()})


class ModelBatch(ArrowBatchCollateFn):
    """`iter_torch_batches(collate_fn=ModelBatch(device))`: `to_tensors` in Ray's prefetch threads,
    so unpacking, the copy to the device and the decoding there overlap the training step."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return to_tensors(batch, self.device)
