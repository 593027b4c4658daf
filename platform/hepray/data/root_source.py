"""A Ray Data datasource over ROOT files: one read task per (file, entry range).

The driver plans from metadata only (entry counts, branch names, basket or cluster boundaries);
files are TTrees or RNTuples, local or at fsspec URLs (see rootio). Each read task opens its
file, reads only the needed branches for its entry range, validates them, applies the cut
and the split, and turns events into model inputs (images, scalars) with the vectorized
rasterizers. Blocks leave the task as Arrow tables of fixed-shape tensors.

Bad input is either one clear DataError naming the file, branch and entry range, or (with
`on_error: skip`) the range is skipped and recorded in a SkipLedger actor, so nothing is
lost silently.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import awkward as ak
import numpy as np
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from hepray.monitoring import record_read
from hepray.expr import Expression
from hepray.data.batches import to_block
from hepray.data.rootio import DataError, describe, entry_ranges, expand_glob, read_arrays
from hepray.inputs import SparseImages, encoder_for
from hepray.spec import DataSpec, TrackMomenta

SPLITS = ("train", "val", "test")
BLOCK_BYTES = 32 * 1024 * 1024  # Ray Data wants blocks of >= 1 MB; large ones strain the object store
RASTER_EVENTS = 2048


@dataclass(frozen=True)
class EntryRange:
    path: str
    label: int | None
    start: int
    stop: int

    @property
    def where(self) -> str:
        return f"{self.path}: entries [{self.start}, {self.stop})"


@dataclass
class ReadPlan:
    """Read tasks, each a stripe of entry ranges: one range of each label group, so every
    task (and every block it yields) mixes the classes even though files hold one class each."""

    tasks: list[list[EntryRange]]
    events: int
    files: int
    skipped: list[tuple[str, int, str]] = field(default_factory=list)  # (file, events, reason) at plan time


# ------------------------------------------------------------------ planning (driver, metadata only)


def expand_globs(patterns: list[str]) -> list[str]:
    """Local and URL globs expanded, each sorted (see rootio.expand_glob)."""
    return [path for pattern in patterns for path in expand_glob(pattern)]


def labelled_files(spec: DataSpec) -> list[tuple[str, int | None]]:
    if isinstance(spec.files, dict):
        return [(path, label) for label, patterns in enumerate(spec.files.values()) for path in expand_globs(patterns)]
    return [(path, None) for path in expand_globs(spec.files)]


def plan_reads(spec: DataSpec, branches: set[str], allow_empty: bool = False) -> ReadPlan:
    """Split files into entry ranges, checking branches exist, and stripe them into read tasks
    of about `events_per_task` events. allow_empty: empty trees are files of no events, not errors."""
    files = labelled_files(spec)
    groups = sorted({label for _, label in files}, key=lambda label: -1 if label is None else label)
    range_size = max(1, spec.events_per_task // len(groups))
    per_group: dict[int | None, list[EntryRange]] = {label: [] for label in groups}
    skipped, total, opened = [], 0, 0
    # Metadata only (entries, basket/cluster boundaries), fetched concurrently: remote files cost a round trip each.
    with ThreadPoolExecutor(max(1, min(16, len(files)))) as pool:
        described = [pool.submit(describe, path, spec.tree, branches, allow_empty) for path, _ in files]
    for (path, label), metadata in zip(files, described):
        try:
            entries, boundaries = metadata.result()
        except DataError as error:
            if spec.on_error == "fail":
                raise
            skipped.append((path, getattr(error, "events", 0), str(error)))
            continue
        opened += 1
        total += entries
        per_group[label] += [EntryRange(path, label, start, stop) for start, stop in entry_ranges(boundaries, range_size)]
    if total == 0 and not allow_empty:
        raise DataError("no events to read: " + ("; ".join(reason for _, _, reason in skipped) or "no files"))
    stripes = max(len(ranges) for ranges in per_group.values())
    tasks = [[ranges[k] for ranges in per_group.values() if k < len(ranges)] for k in range(stripes)]
    return ReadPlan(tasks, total, opened, skipped)


# ------------------------------------------------------------------ reading (in Ray tasks)


def split_of(path: str, entries: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per (file name, entry): stable across runs, task sizes and cluster sizes."""
    key = np.uint64(zlib.crc32(Path(path).name.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF))
    x = entries.astype(np.uint64) + (key << np.uint64(32))
    # splitmix64 finaliser: a well-mixed 64-bit hash of the key.
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def file_key(path: str) -> int:
    """A 64-bit id of a file path: a number column says where an event came from (a string
    column would not pass iter_torch_batches) and no path table rides along with every read task."""
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little", signed=True)


def split_mask(u: np.ndarray, split: str | None, val: float, test: float) -> np.ndarray:
    if split is None:
        return np.ones(len(u), dtype=bool)
    if split == "val":
        return u < val
    if split == "test":
        return (u >= val) & (u < val + test)
    return u >= val + test


@dataclass
class EventReader:
    """Everything a read task needs, small and picklable."""

    spec: DataSpec
    split: str | None
    ledger: str | None = None  # SkipLedger actor name, for on_error: skip
    extra: dict[str, str] = field(default_factory=dict)  # column -> expression (e.g. baseline)
    shuffle: bool = False  # permute events within each read task (training)
    flag_cut: bool = False  # keep every event and add a pass_cut column instead of dropping (friend trees)
    file_column: bool = False  # add file_key(path) per event, so per-file outputs can regroup events
    with_inputs: bool = True  # False: labels, observers and extra columns only (fitting baselines)
    sparse: bool = False  # ship point-sum images as (pixel, value) lists; consumers densify (data.batches)

    def __post_init__(self) -> None:
        self.cut = Expression(self.spec.cut) if self.spec.cut else None
        self.columns = {f"obs_{name}": Expression(name) for name in self.spec.observers}
        target = self.spec.target
        # track momenta: one (tracks, 3) target per event, from three per-track expressions
        self.track_momenta = ([Expression(text) for text in (target.px, target.py, target.pz)]
                              if isinstance(target, TrackMomenta) else [])
        self.tracks = target.tracks if isinstance(target, TrackMomenta) else 0
        if isinstance(target, str):
            self.columns["target"] = Expression(target)
        self.columns.update({column: Expression(text) for column, text in self.extra.items()})
        self.encoders = {name: encoder_for(spec) for name, spec in self.spec.inputs.items()} if self.with_inputs else {}
        self.sparse_inputs = {name for name, encoder in self.encoders.items() if self.sparse and encoder.travels_sparse}

    def branches(self) -> set[str]:
        needed: set[str] = set()
        for encoder in self.encoders.values():
            needed |= encoder.branches()
        for expr in (self.cut, *self.columns.values(), *self.track_momenta):
            if expr is not None:
                needed |= expr.branches
        if self.spec.label_branch:
            needed.add(self.spec.label_branch)
        return needed

    def bytes_per_event(self) -> int:
        """A planning estimate: a sparse image counted as 1/8 of its dense pixels (the blocks are cut by their real size)."""
        return sum(4 * int(np.prod(encoder.spec.shape())) // (8 if name in self.sparse_inputs else 1)
                   for name, encoder in self.encoders.items()) + 8 * (2 + len(self.columns)) + 4 * 3 * self.tracks

    def read(self, ranges: list[EntryRange]) -> Iterator:
        batches = []
        for entry_range in ranges:
            started = time.perf_counter()
            try:
                batches.append(self._read_range(entry_range))
                record_read(self.split, entry_range.stop - entry_range.start, len(batches[-1]["entry"]),
                            time.perf_counter() - started)
            except DataError as error:
                if self.spec.on_error == "fail" or self.ledger is None:
                    raise
                ray.get_actor(self.ledger).record.remote(entry_range.path, entry_range.start, entry_range.stop, str(error))
        if not batches:
            return
        batch = {key: SparseImages.concat([b[key] for b in batches]) if key in self.sparse_inputs
                 else np.concatenate([b[key] for b in batches]) for key in batches[0]}
        n = len(batch["entry"])
        if self.shuffle:
            # Seeded by the task's first range, by file name as the split is: the same order every
            # run, whether the file is read from disk or from a URL.
            first = ranges[0]
            seed = [zlib.crc32(Path(first.path).name.encode()), first.start, self.spec.split.seed]
            order = np.random.default_rng(seed).permutation(n)
            batch = {key: value.take(order) if key in self.sparse_inputs else value[order] for key, value in batch.items()}
        step = max(1, BLOCK_BYTES * n // max(1, sum(value.nbytes for value in batch.values())))
        specs = {name: self.encoders[name].spec for name in self.sparse_inputs}
        for begin in range(0, n, step):
            yield to_block(batch, begin, begin + step, specs)

    def _read_range(self, task: EntryRange) -> dict[str, np.ndarray]:
        names = sorted(self.branches())
        try:
            arrays = read_arrays(task.path, self.spec.tree, names, task.start, task.stop)
        except Exception as error:  # a corrupt basket, a file changed or a server gone since planning
            raise DataError(f"{task.where}: reading branches {names} failed ({type(error).__name__}: {error})") from None
        _validate(arrays, task)

        entries = np.arange(task.start, task.stop, dtype=np.int64)
        keep = split_mask(split_of(task.path, entries, self.spec.split.seed), self.split,
                          self.spec.split.val, self.spec.split.test)
        passed = None
        if self.cut is not None:
            passed = _one_per_event(self.cut.evaluate(arrays), self.cut.text, task).astype(bool)
            if not self.flag_cut:
                keep &= passed
        arrays = {name: array[keep] for name, array in arrays.items()}

        batch: dict[str, np.ndarray] = {"entry": entries[keep]}
        if self.flag_cut and passed is not None:
            batch["pass_cut"] = passed[keep]
        if self.file_column:
            batch["file_key"] = np.full(int(keep.sum()), file_key(task.path), dtype=np.int64)
        for column, expr in self.columns.items():
            batch[column] = _one_per_event(expr.evaluate(arrays), expr.text, task).astype(np.float32)
        if self.track_momenta:
            batch["target"] = np.stack([_per_track(expr.evaluate(arrays), expr.text, self.tracks, task, batch["entry"])
                                        for expr in self.track_momenta], axis=2)
        if self.spec.label_branch:
            batch["label"] = _one_per_event(arrays[self.spec.label_branch], self.spec.label_branch, task).astype(np.int64)
        elif task.label is not None:
            batch["label"] = np.full(int(keep.sum()), task.label, dtype=np.int64)
        n = int(keep.sum())
        for name, encoder in self.encoders.items():
            batch[name] = self._encode(name, encoder, {b: arrays[b] for b in encoder.branches()}, n, task)
        return batch

    def _encode(self, name: str, encoder, source: dict, n: int, task: EntryRange) -> np.ndarray | SparseImages:
        """One input of a range's events, in slices that keep the kernel's working set in cache
        (~2x the events/s of one 20k-event call)."""
        sparse = name in self.sparse_inputs
        parts = [] if sparse else np.empty((n, *encoder.spec.shape()), dtype=np.float32)
        for begin in range(0, n, RASTER_EVENTS):
            part = {key: value[begin:begin + RASTER_EVENTS] for key, value in source.items()}
            try:
                if sparse:
                    parts.append(encoder.sparse(part))
                else:
                    parts[begin:begin + RASTER_EVENTS] = encoder.dense(part)
            except ValueError as error:
                raise DataError(f"{task.where}: input '{name}': {error}") from None
        if sparse:
            return SparseImages.concat(parts) if parts else SparseImages.empty(encoder.spec.shape())
        return parts


def _validate(arrays: dict, task: EntryRange) -> None:
    """Numbers only, all finite (point-count agreement is checked by the rasterizers)."""
    for name, array in arrays.items():
        values = ak.to_numpy(ak.flatten(array, axis=None))
        if "string" in str(ak.type(array)) or not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise DataError(f"{task.where}: branch '{name}' has type {ak.type(array)}, expected numbers")
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise DataError(f"{task.where}: branch '{name}' has {bad} NaN/inf values "
                            f"(first at entry {_first_bad_entry(array, task.start)})")


def _one_per_event(values, text: str, task: EntryRange) -> np.ndarray:
    if isinstance(values, ak.Array) and values.ndim > 1:
        raise DataError(f"{task.where}: '{text}' has a list of values per event; one value per event expected")
    return np.asarray(values)


def _per_track(values, text: str, tracks: int, task: EntryRange, entries: np.ndarray) -> np.ndarray:
    """A per-track expression as float32 (events, tracks): every event must have all its track slots."""
    values = values if isinstance(values, ak.Array) else ak.Array(np.asarray(values))
    if values.ndim != 2:
        raise DataError(f"{task.where}: '{text}' has {'one value' if values.ndim == 1 else 'nested lists'} per event; "
                        f"track momenta need {tracks} per event (data.target.tracks)")
    counts = ak.to_numpy(ak.num(values, axis=1))
    wrong = np.flatnonzero(counts != tracks)
    if len(wrong):
        raise DataError(f"{task.where}: '{text}' has {counts[wrong[0]]} values at entry {entries[wrong[0]]}; "
                        f"track momenta need {tracks} per event (data.target.tracks)")
    return ak.to_numpy(ak.flatten(values, axis=1)).astype(np.float32).reshape(len(counts), tracks)


def _first_bad_entry(array: ak.Array, start: int) -> int:
    finite = np.isfinite(array)
    per_event = ak.all(finite, axis=1) if array.ndim > 1 else finite
    return start + int(np.argmin(ak.to_numpy(per_event)))


@ray.remote(num_cpus=0)
class SkipLedger:
    """Counts ranges skipped by read tasks; keyed by range so retries and epochs count once."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, int, int], str] = {}

    def record(self, path: str, start: int, stop: int, reason: str) -> None:
        self.ranges.setdefault((path, start, stop), reason)

    def skipped(self) -> list[tuple[str, int, int, str]]:
        return [(*key, reason) for key, reason in sorted(self.ranges.items())]


class RootDatasource(Datasource):
    def __init__(self, plan: ReadPlan, reader: EventReader):
        self.plan = plan
        self.reader = reader

    def estimate_inmemory_data_size(self) -> int:
        return self.plan.events * self.reader.bytes_per_event()

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        reader = self.reader
        tasks = []
        for ranges in self.plan.tasks:
            n = sum(r.stop - r.start for r in ranges)
            metadata = BlockMetadata(num_rows=None, size_bytes=n * reader.bytes_per_event(),
                                     input_files=sorted({r.path for r in ranges}), exec_stats=None)
            tasks.append(ReadTask(lambda ranges=ranges: reader.read(ranges), metadata, per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "ReadROOT"
