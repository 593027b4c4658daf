"""A Ray Data datasource over ROOT files: read tasks of entry ranges that mix the classes.

The driver plans from metadata only (entry counts, branch names, basket or cluster boundaries);
files are TTrees or RNTuples, local or at fsspec URLs (see rootio). Each read task opens its
file, reads only the needed branches for its entry range, validates them, applies the cut
and the split, and turns events into model inputs (images, scalars) with the vectorized
rasterizers. Blocks leave the task as Arrow tables of fixed-shape tensors.

Objects. With `data.objects` the events of the split become one row per object (per_object)
before anything else is computed, so the cut, labels, weights, observers and inputs see one
object per row: branches with a list of `count` values in every event of the range are read at
the object's index, all others repeated per object. The split is drawn per entry, before.

Bad input. An unreadable file or basket, a branch of the wrong type or shape is a DataError
naming the file, branch and entry range. Values are checked per event, and only in the events
the split and the cut keep (an event the cut removes is never an error): a NaN/inf in any
branch the event is read for (branches only observers read excepted), a `label_branch` value
outside 0..n_classes-1, a NaN/inf target, scalar input or extra column. `on_error: fail` stops
at the first bad event (the message names file, range, branch or value, and entry);
`on_error: skip` drops just the bad events, and skips whole ranges only when they cannot be
read. Skips go to a SkipLedger actor by entry, so retries, epochs and splits count each event
once: nothing is lost silently. NaN/inf observers are kept (they fall outside every bin) and
counted there too.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from hepray.data.batches import to_block
from hepray.data.events import ENTRY, FILE_KEY, LABEL, OBJECT, PASS_CUT, TARGET, WEIGHT, observer
from hepray.data.rootio import DataError, describe, entry_ranges, expand_glob, read_arrays
from hepray.expr import Expression
from hepray.inputs import Ragged, encoder_for
from hepray.monitoring import record_read
from hepray.spec import DataSpec, Objects, TrackMomenta

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
    """Read tasks of entry ranges, each holding about the same fraction of every label group
    (mixed_tasks), so every task (and every block it yields) mixes the classes in their overall
    proportions even though files hold one class each."""

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
    """Split files into entry ranges, checking branches exist, and deal them into read tasks of
    about `events_per_task` events that mix the label groups (mixed_tasks). allow_empty: empty
    trees are files of no events, not errors."""
    files = labelled_files(spec)
    labels = sorted({label for _, label in files}, key=lambda label: -1 if label is None else label)
    groups: dict[int | None, list[tuple[str, np.ndarray]]] = {label: [] for label in labels}
    skipped, total, opened = [], 0, 0
    # Metadata only (entries, basket/cluster boundaries), fetched concurrently: remote files cost a round trip each.
    with ThreadPoolExecutor(max(1, min(16, len(files)))) as pool:
        described = [pool.submit(describe, path, spec.tree_of(label), branches, allow_empty) for path, label in files]
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
        groups[label].append((path, np.asarray(boundaries, dtype=np.int64)))
    if total == 0 and not allow_empty:
        raise DataError("no events to read: " + ("; ".join(reason for _, _, reason in skipped) or "no files"))
    return ReadPlan(mixed_tasks(groups, spec.events_per_task), total, opened, skipped)


MIN_RANGE_SHARE = 50  # slices of >= events_per_task / 50 events: each costs a file open and a basket read
SNAP = 1 / 8  # a slice's ends move to a basket/cluster boundary within this fraction of its size


def mixed_tasks(groups: dict[int | None, list[tuple[str, np.ndarray]]], events_per_task: int) -> list[list[EntryRange]]:
    """Read tasks from each label group's files (path, basket/cluster boundaries), every task holding
    about the same fraction of every group.

    Each group's files are laid end to end and cut into T slices of equal size (the k-th slice of
    every group goes to task k), so a class of 1/11 of the events is 1/11 of every task, not the
    whole of the first ones. T is the number of ranges rootio.entry_ranges makes of the largest
    group at its share of a task (events_per_task x group / all events): tasks of ~events_per_task
    events, whose largest part mostly starts and stops where that group's ranges would. A
    slice's end moves to the nearest basket/cluster boundary (or file end) within SNAP of the slice's
    size, so most ranges start and stop on boundaries while the fractions stay within ~±2 SNAP; a
    group too small for T slices of events_per_task / MIN_RANGE_SHARE gets fewer, spread evenly over
    the tasks. A slice crossing file ends is one range per file."""
    axes = {label: _laid_end_to_end(files) for label, files in groups.items() if files}
    axes = {label: axis for label, axis in axes.items() if axis[0][-1] > 0}
    total = sum(int(offsets[-1]) for offsets, _ in axes.values())
    if total == 0:
        return []
    shares = {label: max(1.0, events_per_task * int(offsets[-1]) / total) for label, (offsets, _) in axes.items()}
    largest = max(axes, key=lambda label: axes[label][0][-1])
    n_tasks = len(entry_ranges(axes[largest][1], round(shares[largest])))
    smallest = max(1, events_per_task // MIN_RANGE_SHARE)
    tasks: list[list[EntryRange]] = [[] for _ in range(n_tasks)]
    for label, (offsets, edges) in axes.items():
        events = int(offsets[-1])
        slices = min(n_tasks, max(1, events // smallest))
        cuts = _snapped_cuts(edges, events, slices)
        for k, (begin, end) in enumerate(zip(cuts[:-1], cuts[1:])):
            tasks[(2 * k + 1) * n_tasks // (2 * slices)] += _file_ranges(groups[label], offsets, label, begin, end)
    return [task for task in tasks if task]


def _laid_end_to_end(files: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A group's files one after the other: where each file starts (and the total last), and every
    basket/cluster boundary and file end on that axis."""
    sizes = [int(boundaries[-1]) if len(boundaries) else 0 for _, boundaries in files]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    edges = [boundaries + offset for (_, boundaries), offset in zip(files, offsets) if len(boundaries)]
    return offsets, np.unique(np.concatenate([offsets, *edges]))


def _snapped_cuts(edges: np.ndarray, events: int, slices: int) -> np.ndarray:
    """`slices` + 1 cuts of [0, events) into equal parts, each moved to the nearest edge within SNAP
    of a part (so the cuts stay in order and every part keeps >= 1 - 2 SNAP of its size)."""
    exact = np.rint(np.arange(slices + 1) * (events / slices)).astype(np.int64)
    right = np.clip(np.searchsorted(edges, exact), 1, len(edges) - 1)
    left = right - 1
    nearest = np.where(exact - edges[left] <= edges[right] - exact, edges[left], edges[right])
    return np.where(np.abs(nearest - exact) <= SNAP * events / slices, nearest, exact)


def _file_ranges(
    files: list[tuple[str, np.ndarray]], offsets: np.ndarray, label: int | None, begin: int, end: int
) -> list[EntryRange]:
    """The entry ranges of [begin, end) on a group's laid-out axis: one per file it crosses."""
    ranges = []
    for index in range(int(np.searchsorted(offsets, begin, side="right")) - 1, len(files)):
        start, stop = max(begin, offsets[index]), min(end, offsets[index + 1])
        if start >= end:
            break
        if stop > start:
            ranges.append(EntryRange(files[index][0], label, int(start - offsets[index]), int(stop - offsets[index])))
    return ranges


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
    shuffle: bool = False  # training: permute events within each read task and the tasks' order, anew each epoch
    seed: int | None = None  # the shuffles' seed (train.seed), with the epoch; None: data.split.seed
    flag_cut: bool = False  # keep every event and add a pass_cut column instead of dropping (friend trees)
    file_column: bool = False  # add file_key(path) per event, so per-file outputs can regroup events
    with_inputs: bool = True  # False: labels, observers and extra columns only (fitting baselines)
    sparse: bool = False  # ship inputs that travel ragged (point-sum images: in-window points) as lists; consumers decode (data.batches)

    def __post_init__(self) -> None:
        self.cut = Expression(self.spec.cut) if self.spec.cut else None
        self.columns = {observer(name): Expression(name) for name in self.spec.observers}
        self.observers = set(self.columns)
        target = self.spec.target
        # track momenta: one (tracks, 3) target per event, from three per-track expressions
        self.track_momenta = (
            [Expression(text) for text in (target.px, target.py, target.pz)] if isinstance(target, TrackMomenta) else []
        )
        self.tracks = target.tracks if isinstance(target, TrackMomenta) else 0
        if isinstance(target, str):
            self.columns[TARGET] = Expression(target)
        if self.spec.weight is not None:
            self.columns[WEIGHT] = Expression(self.spec.weight)
        self.columns.update({column: Expression(text) for column, text in self.extra.items()})
        self.encoders = {name: encoder_for(spec) for name, spec in self.spec.inputs.items()} if self.with_inputs else {}
        self.sparse_inputs = {name for name, encoder in self.encoders.items() if self.sparse and encoder.travels_ragged}
        self.checked = self.checked_branches()
        self.n_classes = len(self.spec.class_names) if self.spec.label_branch else 0

    def branches(self) -> set[str]:
        needed: set[str] = set()
        for encoder in self.encoders.values():
            needed |= encoder.branches()
        for expr in (self.cut, *self.columns.values(), *self.track_momenta):
            if expr is not None:
                needed |= expr.branches
        if self.spec.label_branch:
            needed.add(self.spec.label_branch)
        if self.spec.objects is not None:
            needed.add(self.spec.objects.count)
        return needed

    def checked_branches(self) -> set[str]:
        """The branches whose NaN/inf makes an event bad: every branch read but those read by observers alone."""
        others = set().union(*(encoder.branches() for encoder in self.encoders.values()))
        for column, expr in self.columns.items():
            if column not in self.observers:
                others |= expr.branches
        for expr in (self.cut, *self.track_momenta):
            if expr is not None:
                others |= expr.branches
        if self.spec.label_branch:
            others.add(self.spec.label_branch)
        return others

    def bytes_per_event(self) -> int:
        """A planning estimate: a sparse image counted as 1/8 of its dense pixels (the blocks are cut by their real size)."""
        return (
            sum(
                4 * int(np.prod(encoder.spec.shape())) // (8 if name in self.sparse_inputs else 1)
                for name, encoder in self.encoders.items()
            )
            + 8 * (2 + len(self.columns))
            + 4 * 3 * self.tracks
        )

    def shuffled(self, *words: int) -> np.random.Generator:
        """The generator of a training shuffle: seeded by (seed, epoch, ...), the same on every run."""
        seed = self.spec.split.seed if self.seed is None else self.seed
        return np.random.default_rng([word % 2**64 for word in (seed, *words)])

    def task_order(self, tasks: int, epoch: int) -> np.ndarray:
        """The order the read tasks are handed to Ray Data in: shuffled per epoch for training, else plan order."""
        return self.shuffled(epoch).permutation(tasks) if self.shuffle else np.arange(tasks)

    def read(self, ranges: list[EntryRange], epoch: int = 0) -> Iterator:
        batches = []
        for entry_range in ranges:
            started = time.perf_counter()
            try:
                batch, skips = self._read_range(entry_range)
                if skips is not None:
                    self._record(entry_range, skips)
                batches.append(batch)
                record_read(
                    self.split, entry_range.stop - entry_range.start, len(batch[ENTRY]), time.perf_counter() - started
                )
            except DataError as error:
                if self.spec.on_error == "fail" or self.ledger is None:
                    raise
                # Waited for: the driver asks the ledger as soon as the last block arrives.
                ray.get(
                    ray.get_actor(self.ledger).record.remote(
                        entry_range.path, entry_range.start, entry_range.stop, str(error)
                    )
                )
        if not batches:
            return
        n = sum(len(b[ENTRY]) for b in batches)
        order = None
        if self.shuffle:
            # Seeded by (seed, epoch) and the task's first range, by file name as the split is: another
            # order each epoch, the same on every run, whether the file is read from disk or from a URL.
            first = ranges[0]
            order = self.shuffled(epoch, zlib.crc32(Path(first.path).name.encode()), first.start).permutation(n)
        batch = {key: _joined([b[key] for b in batches], order) for key in batches[0]}
        step = max(1, BLOCK_BYTES * n // max(1, sum(value.nbytes for value in batch.values())))
        specs = {name: self.encoders[name].spec for name in self.sparse_inputs}
        for begin in range(0, n, step):
            yield to_block(batch, begin, begin + step, specs)

    def _record(self, task: EntryRange, skips: Skips) -> None:
        """Dropped events and non-finite observers to the ledger, by entry (so counted once)."""
        if self.ledger is None:
            if skips.events:
                raise DataError(skips.message)  # skipping needs a ledger to count what it skips
            return
        ledger = ray.get_actor(self.ledger)
        ray.get(ledger.record_events.remote(task.path, task.start, task.stop, skips.by_reason, skips.observers))

    def _read_range(self, task: EntryRange) -> tuple[dict[str, np.ndarray], Skips | None]:
        """The range's events in this split that pass the cut, bad events dropped (on_error: skip)
        or raised (fail), as columns and encoded inputs; and what was skipped or flagged."""
        arrays = read_arrays(task.path, self.spec.tree_of(task.label), sorted(self.branches()), task.start, task.stop)
        nonfinite = sorted(_check_numbers(arrays, task) & self.checked)

        entries = np.arange(task.start, task.stop, dtype=np.int64)
        in_split = split_mask(
            split_of(task.path, entries, self.spec.split.seed), self.split, self.spec.split.val, self.spec.split.test
        )
        arrays, entries = {name: array[in_split] for name, array in arrays.items()}, entries[in_split]
        objects = None
        if self.spec.objects is not None:  # one row per object from here on: the cut and all else apply per object
            arrays, event, objects = per_object(arrays, self.spec.objects, task)
            entries = entries[event]
        keep, passed = np.ones(len(entries), dtype=bool), None
        if self.cut is not None:
            passed = self._one_per_row(self.cut.evaluate(arrays), self.cut.text, task).astype(bool)
            if not self.flag_cut:
                keep = passed
        arrays = {name: array[keep] for name, array in arrays.items()}
        batch = self._columns(arrays, entries[keep], None if passed is None else passed[keep], task)
        if objects is not None:
            batch[OBJECT] = objects[keep]

        skips = None
        problems = self._problems(arrays, batch, nonfinite, task)
        if problems:
            good, skips = self._settle(problems, batch[ENTRY], task)
            arrays = {name: array[good] for name, array in arrays.items()}
            batch = {name: column[good] for name, column in batch.items()}
        flagged = self._nonfinite_observers(batch)
        if flagged is not None:
            skips = skips or Skips()
            skips.observers = batch[ENTRY][flagged]
        n = len(batch[ENTRY])
        for name, encoder in self.encoders.items():
            batch[name] = self._encode(name, encoder, {b: arrays[b] for b in encoder.branches()}, n, task)
        return batch, skips

    def _columns(self, arrays: dict, entries: np.ndarray, passed: np.ndarray | None, task: EntryRange) -> dict:
        """Everything but the inputs, per event: entry, cut flag, file key, observers, target, extra columns, label."""
        batch: dict[str, np.ndarray] = {ENTRY: entries}
        if self.flag_cut and passed is not None:
            batch[PASS_CUT] = passed
        if self.file_column:
            batch[FILE_KEY] = np.full(len(entries), file_key(task.path), dtype=np.int64)
        with np.errstate(all="ignore"):  # NaN/inf values are found by _problems (or are observers, kept)
            for column, expr in self.columns.items():
                batch[column] = self._one_per_row(expr.evaluate(arrays), expr.text, task).astype(np.float32)
            if self.track_momenta:
                batch[TARGET] = np.stack(
                    [
                        _per_track(expr.evaluate(arrays), expr.text, self.tracks, task, entries)
                        for expr in self.track_momenta
                    ],
                    axis=2,
                )
            if self.spec.label_branch:
                batch[LABEL] = self._one_per_row(arrays[self.spec.label_branch], self.spec.label_branch, task).astype(
                    np.int64
                )
            elif task.label is not None:
                batch[LABEL] = np.full(len(entries), task.label, dtype=np.int64)
        return batch

    def _problems(self, arrays: dict, batch: dict, nonfinite: list[str], task: EntryRange) -> list[Problem]:
        """Why events of the batch cannot be used, in order of precedence, each as a mask over them:
        NaN/inf in a checked branch, a label out of range, a NaN/inf target, extra column or scalar input."""
        entries = batch[ENTRY]
        problems = [_nonfinite_branch(name, arrays[name], entries, task) for name in nonfinite]
        if self.n_classes:
            problems.append(self._label_problem(arrays[self.spec.label_branch], entries, task))
        derived = [
            (_derived_name(column, expr), batch[column])
            for column, expr in self.columns.items()
            if column not in self.observers
        ]
        derived += [(f"target '{expr.text}'", batch[TARGET][:, :, k]) for k, expr in enumerate(self.track_momenta)]
        for name, encoder in self.encoders.items():
            derived += [
                (f"input '{name}': {what}", values) for what, values in encoder.derived_values(arrays, len(entries))
            ]
        for what, values in derived:
            if values is not None and not np.isfinite(values).all():
                bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
                problems.append(
                    Problem(
                        f"{what} is NaN/inf",
                        bad,
                        f"{task.where}: {what} is NaN/inf in {_events(bad.sum())} (first at entry {entries[bad][0]})",
                    )
                )
        return [problem for problem in problems if problem is not None and problem.bad.any()]

    def _label_problem(self, labels, entries: np.ndarray, task: EntryRange) -> Problem | None:
        name, n = self.spec.label_branch, self.n_classes
        values = np.asarray(self._one_per_row(labels, name, task))
        with np.errstate(invalid="ignore"):
            bad = ~((values >= 0) & (values < n))
            if values.dtype.kind == "f":
                bad |= values != np.floor(values)
        if not bad.any():
            return None
        first = np.flatnonzero(bad)[0]
        return Problem(
            f"label branch '{name}' not in 0..{n - 1}",
            bad,
            f"{task.where}: label branch '{name}' has value {values[first].item()} at entry {entries[first]} "
            f"({_events(bad.sum())} outside 0..{n - 1}, the classes {', '.join(self.spec.class_names)})",
        )

    def _one_per_row(self, values, text: str, task: EntryRange) -> np.ndarray:
        """One value per example (event or object), else one error saying why the values are a list."""
        if isinstance(values, ak.Array) and values.ndim > 1:
            count = self.spec.objects.count if self.spec.objects is not None else None
            raise DataError(
                f"{task.where}: '{text}' has a list of values per "
                + (
                    f"object; one value per object expected (a branch is per object where it has as many "
                    f"values as '{count}' in every entry; other lists are per event)"
                    if count
                    else "event; one value per event expected"
                )
            )
        return np.asarray(values)

    def _settle(self, problems: list[Problem], entries: np.ndarray, task: EntryRange) -> tuple[np.ndarray, Skips]:
        """fail: the error of the first bad event. skip: which events to keep, and the skipped
        ones by reason (each under its first). Friend trees (flag_cut, `hepray predict`) need a row
        per entry and fill whole ranges only, so there the range is skipped instead."""
        first = min(problems, key=lambda problem: int(np.argmax(problem.bad)))
        if self.spec.on_error == "fail" or self.flag_cut:
            raise DataError(first.message)
        taken = np.zeros(len(entries), dtype=bool)
        skips = Skips(message=first.message)
        for problem in problems:
            new = problem.bad & ~taken
            if new.any():
                skips.by_reason[problem.reason] = entries[new]
                taken |= new
        return ~taken, skips

    def _nonfinite_observers(self, batch: dict) -> np.ndarray | None:
        """Events with a NaN/inf observer (kept: they fall outside every bin), or None."""
        flagged = None
        for column in self.observers:
            if not np.isfinite(batch[column]).all():
                bad = ~np.isfinite(batch[column])
                flagged = bad if flagged is None else flagged | bad
        return flagged

    def _encode(self, name: str, encoder, source: dict, n: int, task: EntryRange) -> np.ndarray | Ragged:
        """One input of a range's events, in slices that keep the kernel's working set in cache
        (~2x the events/s of one 20k-event call)."""
        sparse = name in self.sparse_inputs
        parts = [] if sparse else np.empty((n, *encoder.spec.shape()), dtype=np.float32)
        for begin in range(0, n, RASTER_EVENTS):
            part = {key: value[begin : begin + RASTER_EVENTS] for key, value in source.items()}
            try:
                if sparse:
                    parts.append(encoder.ragged(part))
                else:
                    parts[begin : begin + RASTER_EVENTS] = encoder.dense(part)
            except ValueError as error:
                raise DataError(f"{task.where}: input '{name}': {error}") from None
        if sparse:
            return Ragged.concat(parts) if parts else Ragged.empty(encoder.ragged_dtypes())
        return parts


def _joined(parts: list, order: np.ndarray | None) -> np.ndarray | Ragged:
    """The ranges' values of one column end to end, or in `order` (a permutation of their events)."""
    if isinstance(parts[0], Ragged):
        return Ragged.concat(parts, order)
    joined = np.concatenate(parts)
    return joined if order is None else joined[order]


@dataclass
class Problem:
    """Events of a range that cannot be used for one reason: the reason (the ledger's key), a mask
    over the events and the error `on_error: fail` raises for the first of them."""

    reason: str
    bad: np.ndarray
    message: str


@dataclass
class Skips:
    """What one read range skipped and flagged: the entries dropped, by reason (each event under its
    first), the entries kept with a NaN/inf observer, and the error `fail` would have raised."""

    by_reason: dict[str, np.ndarray] = field(default_factory=dict)
    observers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    message: str = ""

    @property
    def events(self) -> int:
        return sum(len(entries) for entries in self.by_reason.values())


def _derived_name(column: str, expr: Expression) -> str:
    if column in (TARGET, WEIGHT):
        return f"{column} '{expr.text}'"
    return f"column '{column}' ('{expr.text}')"


def _check_numbers(arrays: dict, task: EntryRange) -> set[str]:
    """Numbers only (point-count agreement is checked by the rasterizers); the names of the
    branches holding a NaN/inf anywhere in the range (which events: _nonfinite_branch)."""
    nonfinite = set()
    for name, array in arrays.items():
        values = _plain_numbers(array)
        strings = values is None and "string" in str(ak.type(array))
        if values is None and not strings:
            values = ak.to_numpy(ak.flatten(array, axis=None))
        if strings or not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise DataError(f"{task.where}: branch '{name}' has type {ak.type(array)}, expected numbers")
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            nonfinite.add(name)
    return nonfinite


def _plain_numbers(array) -> np.ndarray | None:
    """The values of a branch uproot read as numbers or lists of numbers, without a copy (ak.flatten
    and the type's string were half of _check_numbers' time); None for any other layout."""
    layout = ak.to_layout(array)
    if layout.parameters:
        return None
    if isinstance(layout, ak.contents.ListOffsetArray):
        content = layout.content
        if content.parameters or not isinstance(content, ak.contents.NumpyArray) or content.data.ndim != 1:
            return None
        offsets = np.asarray(layout.offsets.data)
        return np.asarray(content.data)[offsets[0] : offsets[-1]]
    if isinstance(layout, ak.contents.NumpyArray) and layout.data.ndim == 1:
        return np.asarray(layout.data)
    return None


def _nonfinite_branch(name: str, array, entries: np.ndarray, task: EntryRange) -> Problem:
    """The events holding a NaN/inf in the branch, in any of their values."""
    finite = np.isfinite(array)
    bad = ~finite
    while isinstance(bad, ak.Array) and bad.ndim > 1:
        bad = ak.any(bad, axis=-1)
    bad = np.asarray(ak.to_numpy(ak.fill_none(bad, False)) if isinstance(bad, ak.Array) else bad, dtype=bool)
    if not bad.any():
        return Problem("", bad, "")
    values = int(ak.count_nonzero(~finite, axis=None)) if isinstance(finite, ak.Array) else int(bad.sum())
    return Problem(
        f"branch '{name}' is NaN/inf",
        bad,
        f"{task.where}: branch '{name}' has {values} NaN/inf values (first at entry {entries[bad][0]})",
    )


def _events(count) -> str:
    return f"{int(count)} event{'s' * (int(count) != 1)}"


def per_object(arrays: dict, objects: Objects, task: EntryRange) -> tuple[dict, np.ndarray, np.ndarray]:
    """A range's events as one row per object, the first `max_per_event` of each event in file
    order (an event without objects gives no row): the branches with a list of `count` values in
    every event are read at the object's index, every other branch is repeated for each of its
    event's objects. Also each row's event (index into the arrays) and object index in its event."""
    counts = _object_counts(arrays[objects.count], objects.count, task)
    taken = counts if objects.max_per_event is None else np.minimum(counts, objects.max_per_event)
    event = np.repeat(np.arange(len(counts)), taken)
    object_index = np.arange(len(event)) - np.repeat(np.cumsum(taken) - taken, taken)
    rows = {}
    for name, array in arrays.items():
        if name != objects.count and _counted_by(array, counts):
            rows[name] = ak.flatten(array if objects.max_per_event is None else array[:, : objects.max_per_event])
        else:
            rows[name] = array[event]
        # contiguous lists again (a repeated event's list is shared): the rasterizers' fast path, ~70x faster
        rows[name] = ak.to_packed(rows[name])
    return rows, event, object_index


def _object_counts(values, name: str, task: EntryRange) -> np.ndarray:
    values = values if isinstance(values, ak.Array) else ak.Array(np.asarray(values))
    flat = ak.to_numpy(values) if values.ndim == 1 else None
    if flat is None or flat.dtype.kind not in "iub" or (flat < 0).any():
        raise DataError(
            f"{task.where}: count branch '{name}' (data.objects.count) has type {ak.type(values)}; "
            "one whole number of objects per entry expected"
        )
    return flat.astype(np.int64)


def _counted_by(array, counts: np.ndarray) -> bool:
    """Whether a branch holds a variable-length list of `counts[i]` values in every event i."""
    if not isinstance(array, ak.Array) or array.ndim < 2:
        return False
    if not isinstance(array.layout, (ak.contents.ListOffsetArray, ak.contents.ListArray)):
        return False  # fixed-size arrays are per event
    return bool(np.array_equal(ak.to_numpy(ak.num(array, axis=1)), counts))


def _per_track(values, text: str, tracks: int, task: EntryRange, entries: np.ndarray) -> np.ndarray:
    """A per-track expression as float32 (events, tracks): every event must have all its track slots."""
    values = values if isinstance(values, ak.Array) else ak.Array(np.asarray(values))
    if values.ndim != 2:
        raise DataError(
            f"{task.where}: '{text}' has {'one value' if values.ndim == 1 else 'nested lists'} per event; "
            f"track momenta need {tracks} per event (data.target.tracks)"
        )
    counts = ak.to_numpy(ak.num(values, axis=1))
    wrong = np.flatnonzero(counts != tracks)
    if len(wrong):
        raise DataError(
            f"{task.where}: '{text}' has {counts[wrong[0]]} values at entry {entries[wrong[0]]}; "
            f"track momenta need {tracks} per event (data.target.tracks)"
        )
    return ak.to_numpy(ak.flatten(values, axis=1)).astype(np.float32).reshape(len(counts), tracks)


@ray.remote(num_cpus=0)
class SkipLedger:
    """What read tasks skipped, keyed by entry range: whole ranges with their reason, and single bad
    events by entry with theirs (and events kept with a NaN/inf observer), so that retries, epochs
    and the splits each count an event once."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, int, int], str] = {}
        self.events: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}  # reason -> entries skipped
        self.observers: dict[tuple[str, int, int], np.ndarray] = {}  # entries kept with a NaN/inf observer

    def record(self, path: str, start: int, stop: int, reason: str) -> None:
        self.ranges.setdefault((path, start, stop), reason)

    def record_events(
        self, path: str, start: int, stop: int, by_reason: dict[str, np.ndarray], observers: np.ndarray
    ) -> None:
        key = (path, start, stop)
        known = self.events.setdefault(key, {})
        seen = np.concatenate([np.zeros(0, dtype=np.int64), *known.values()])
        for reason, entries in by_reason.items():
            new = entries[~np.isin(entries, seen)]
            if len(new):
                known[reason] = np.union1d(known.get(reason, new[:0]), new)
                seen = np.concatenate([seen, new])
        if len(observers):
            self.observers[key] = np.union1d(self.observers.get(key, observers[:0]), observers)

    def skipped(self) -> list[tuple[str, int, int, str]]:
        """Whole ranges skipped: (path, start, stop, reason)."""
        return [(*key, reason) for key, reason in sorted(self.ranges.items())]

    def skipped_events(self) -> list[tuple[str, int, int, str, int, int]]:
        """Single events skipped in ranges otherwise read: (path, start, stop, reason, events, first entry)."""
        return [
            (*key, reason, len(entries), int(entries[0]))
            for key, reasons in sorted(self.events.items())
            if key not in self.ranges
            for reason, entries in reasons.items()
        ]

    def observers_nonfinite(self) -> int:
        """Events delivered with a NaN/inf observer."""
        return sum(len(entries) for key, entries in self.observers.items() if key not in self.ranges)


class RootDatasource(Datasource):
    """The plan's read tasks; for training, in another order and each shuffled anew every epoch.

    How the epoch is known: Ray Data plans a dataset again each time it is executed, and every
    execution calls get_read_tasks once with its DataContext, when its input operator starts
    (Ray 2.60: planner/plan_read_op.py, InputDataBuffer.start). Other calls look at the plan without
    reading it and pass no DataContext: read_datasource in the driver, and in each execution
    the optimizer (SetReadParallelismRule; metadata inference, once). So `executions` counts the
    calls with a DataContext, and the epoch of a call is the count before it.
    A dataset fed to Ray Train is split by streaming_split (DataConfig.configure): one
    SplitCoordinator actor per dataset receives a pickled copy of the dataset, this object
    included, and at every epoch's start_epoch builds a new executor over it, so its copy's count
    is 0, 1, 2, ... for epochs 0, 1, 2 (tests/test_mixing.py). Each copy counts its own
    executions: iterating a dataset in the driver advances the driver's copy, which (if that
    happens before training) is the count the trainer's copy starts from; a run Ray Train
    restarts (max_failures) or resumes gets a new coordinator, whose count starts again from the
    dataset's as it was handed to the trainer. Either way the same job gives the same sequence of
    orders on every run.
    Validation and test datasets (shuffle off) are read in plan order every time.
    """

    def __init__(self, plan: ReadPlan, reader: EventReader):
        self.plan = plan
        self.reader = reader
        self.executions = 0  # get_read_tasks calls that started an execution (the epochs read so far)

    def estimate_inmemory_data_size(self) -> int:
        return self.plan.events * self.reader.bytes_per_event()

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        epoch = self.executions
        if data_context is not None:  # an execution starting, not a look at the plan (see the class)
            self.executions += 1
        reader = self.reader
        tasks = []
        for index in reader.task_order(len(self.plan.tasks), epoch):
            ranges = self.plan.tasks[index]
            n = sum(r.stop - r.start for r in ranges)
            metadata = BlockMetadata(
                num_rows=None,
                size_bytes=n * reader.bytes_per_event(),
                input_files=sorted({r.path for r in ranges}),
                exec_stats=None,
            )
            tasks.append(
                ReadTask(
                    lambda ranges=ranges: reader.read(ranges, epoch), metadata, per_task_row_limit=per_task_row_limit
                )
            )
        return tasks

    def get_name(self) -> str:
        return "ReadROOT"
