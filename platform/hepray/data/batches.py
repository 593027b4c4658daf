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

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from ray.data.block import BlockAccessor
from ray.data.collate_fn import ArrowBatchCollateFn

from hepray.data.events import ENTRY
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


def densify(batch: Travelled, device: torch.device | str, order: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors on `device`: what travelled is moved there as it is (non-blocking) and
    the ragged inputs are decoded there by their encoders' torch ops. order: a permutation of the
    batch's events (row j of the result is event order[j]), applied where the events are gathered
    anyway: the carried columns are indexed by it, the ragged inputs decode each event into its row."""
    tensors = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.carried.items()}
    rows = None
    if order is not None:
        order = order.to(device, non_blocking=True)
        tensors = {name: tensor.index_select(0, order) for name, tensor in tensors.items()}
        rows = torch.empty_like(order)
        rows[order] = torch.arange(len(order), device=order.device)
    for name, ragged in batch.ragged.items():
        columns = {column: values.to(device, non_blocking=True) for column, values in ragged.columns.items()}
        tensors[name] = ragged.encoder.decode_tensors(ragged.offsets.to(device, non_blocking=True), columns, rows)
    return tensors


def to_tensors(
    batch: pa.Table, device: torch.device | str = "cpu", order: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Every column of a batch as a tensor on `device`, ragged inputs decoded there, events in `order` if given."""
    device = torch.device(device)
    return densify(unpack(batch, pin_memory=device.type == "cuda"), device, order)


def _tensor(array: np.ndarray, pin_memory: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.require(array, requirements="W"))  # Arrow's buffers are read-only
    return tensor.pin_memory() if pin_memory else tensor


def _ragged_columns(batch: pa.Table, name: str, fields: list[pa.Field]) -> Ragged:
    lists = {field.name[len(name) + len(SEPARATOR) :]: batch.column(field.name).combine_chunks() for field in fields}
    offsets = next(iter(lists.values())).offsets.to_numpy().astype(np.int64)  # a sliced list's need not start at 0
    return Ragged(offsets - offsets[0], {column: values.flatten().to_numpy() for column, values in lists.items()})


class ModelBatch(ArrowBatchCollateFn):
    """`iter_torch_batches(collate_fn=ModelBatch(device))`: `to_tensors` in Ray's prefetch threads,
    so unpacking, the copy to the device and the decoding there overlap the training step.
    shuffle_seed: each batch's events come out in a random order, seeded by these words, the
    batch's first entry and its size (Ray may collate batches in any order on its threads; the
    batches themselves arrive in a fixed order, so the same seed gives the same shuffle)."""

    def __init__(self, device: torch.device | str = "cpu", shuffle_seed: tuple[int, ...] | None = None):
        self.device = torch.device(device)
        self.shuffle_seed = shuffle_seed

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        order = None
        if self.shuffle_seed is not None and batch.num_rows > 1:
            first = batch.column(ENTRY)[0].as_py() if ENTRY in batch.column_names else 0
            words = [word % 2**64 for word in (*self.shuffle_seed, first, batch.num_rows)]
            order = torch.from_numpy(np.random.default_rng(words).permutation(batch.num_rows))
        return to_tensors(batch, self.device, order)


# glibc maps larger buffers afresh, page faults and all, every window: 4096 events of 47x47 ran 1/3 slower
WINDOW_BYTES = 32 * 2**20


def window_events(shuffle_buffer: int, shapes: dict[str, tuple[int, ...]]) -> int:
    """The events of a shuffle window: train.shuffle_buffer, fewer if their dense inputs (float32
    of `shapes`) would pass WINDOW_BYTES."""
    event_bytes = 4 * sum(math.prod(shape) for shape in shapes.values())
    return min(shuffle_buffer, WINDOW_BYTES // max(1, event_bytes))


def shuffled_batches(
    shard, batch_size: int, window: int, seed: tuple[int, ...], device: torch.device | str = "cpu", prefetch: int = 2
) -> Iterator[dict[str, torch.Tensor]]:
    """A training shard's batches of `batch_size` on `device`, mixed within windows of `window`
    events (rounded down to whole batches; < batch_size: no mixing beyond the read tasks' shuffle).

    Each window is collated as one batch whose events are permuted as they are densified (ModelBatch
    with shuffle_seed), then cut into views of batch_size events. That mixes as Ray's local shuffle
    buffer of the same size mixes stretches of the stream, without its Arrow concatenation and take
    of every event, and densifies a window in one call instead of many small ones."""
    windows = max(1, window // batch_size)
    collate = ModelBatch(device, seed if windows > 1 else None)
    for chunk in shard.iter_torch_batches(
        batch_size=windows * batch_size, collate_fn=collate, prefetch_batches=prefetch
    ):
        n = len(next(iter(chunk.values())))
        for begin in range(0, n, batch_size):
            yield {name: tensor[begin : begin + batch_size] for name, tensor in chunk.items()}
