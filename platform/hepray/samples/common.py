"""Shared helpers for the sample generators: write chunks of event arrays to ROOT files.

A *chunk* is a mapping ``branch name -> array`` with one entry per event:
numpy arrays (or flat awkward arrays) for per-event values, and awkward arrays of
variable-length lists (``var * float32``) for per-object values such as towers.

TTree (the default, what real experiment data mostly is)
    uproot >= 5.6 writes an RNTuple for ``file["name"] = {...}``; a TTree needs
    ``file.mktree(name, types).extend(data)``, which is what we do. Jagged branches
    that share a name prefix (``tower_eta``, ``tower_phi``, ``tower_e``) and have the
    same counts in every event are zipped into one awkward record (uproot's
    dict-of-records convention), so they share one counter branch (``ntower``).
    A jagged branch without siblings gets its own counter ``n<name>``.

RNTuple (``fmt="rntuple"``)
    The same top-level names are written as RNTuple fields (jagged fields are
    ``var * float32`` collections); the counters of the TTree layout are written as
    explicit ``int32`` fields too, so both formats expose the same names and arrays.

Files are written chunk by chunk (memory stays at one chunk), split into files of at
most ``events_per_file`` events, and each file is written under a temporary name and
renamed when complete, so a crashed run never leaves a truncated file that looks done.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

FORMATS = ("ttree", "rntuple")
DEFAULT_EVENTS_PER_FILE = 5000
DEFAULT_TREE = "events"

Chunk = Mapping[str, Any]


def check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def _is_jagged(array: Any) -> bool:
    return isinstance(array, ak.Array) and array.ndim > 1


def _num_events(chunk: Chunk) -> int:
    lengths = {name: len(array) for name, array in chunk.items()}
    if not lengths:
        raise ValueError("a chunk must contain at least one branch")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"branches of a chunk have different numbers of events: {lengths}")
    return next(iter(lengths.values()))


def _regular(array: Any) -> np.ndarray:
    """A per-event branch as a numpy array (flat awkward arrays are converted)."""
    if isinstance(array, ak.Array):
        return ak.to_numpy(array)
    return np.asarray(array)


def _jagged_groups(chunk: Chunk) -> dict[str, list[str]]:
    """Jagged branches grouped by the prefix before their first underscore.

    A group of two or more branches becomes one record (shared counter ``n<prefix>``)
    only if all members have identical counts; otherwise each keeps its own counter.
    """
    by_prefix: dict[str, list[str]] = {}
    for name, array in chunk.items():
        if _is_jagged(array) and "_" in name.strip("_"):
            by_prefix.setdefault(name.split("_", 1)[0], []).append(name)
    groups = {}
    for prefix, names in by_prefix.items():
        if len(names) < 2 or prefix in chunk:
            continue
        counts = ak.num(chunk[names[0]], axis=1)
        if all(ak.all(ak.num(chunk[other], axis=1) == counts) for other in names[1:]):
            groups[prefix] = names
    return groups


def ttree_layout(chunk: Chunk) -> dict[str, Any]:
    """The chunk in uproot's TTree-writing layout: jagged siblings zipped into records.

    ``{"tower_eta": ..., "tower_phi": ...}`` becomes ``{"tower": ak.zip({"eta": ...,
    "phi": ...})}``, which ``mktree``/``extend`` writes as branches ``tower_eta``,
    ``tower_phi`` and one counter ``ntower``.
    """
    groups = _jagged_groups(chunk)
    grouped = {name for names in groups.values() for name in names}
    out: dict[str, Any] = {}
    for name, array in chunk.items():
        if name in grouped:
            prefix = name.split("_", 1)[0]
            if prefix not in out:
                fields = {member.split("_", 1)[1]: chunk[member] for member in groups[prefix]}
                out[prefix] = ak.zip(fields, depth_limit=None)
        elif _is_jagged(array):
            out[name] = array
        else:
            out[name] = _regular(array)
    return out


def rntuple_layout(chunk: Chunk) -> dict[str, Any]:
    """The chunk with flat field names, plus the ``n<prefix>`` counters of the TTree layout."""
    groups = _jagged_groups(chunk)
    grouped = {name for names in groups.values() for name in names}
    out: dict[str, Any] = {}
    for name, array in chunk.items():
        if name in grouped:
            prefix = name.split("_", 1)[0]
            if "n" + prefix not in out and "n" + prefix not in chunk:
                out["n" + prefix] = ak.to_numpy(ak.num(array, axis=1)).astype(np.int32)
            out[name] = array
        elif _is_jagged(array):
            if "n" + name not in chunk:
                out["n" + name] = ak.to_numpy(ak.num(array, axis=1)).astype(np.int32)
            out[name] = array
        else:
            out[name] = _regular(array)
    return out


def _types(layout: Mapping[str, Any]) -> dict[str, Any]:
    types = {}
    for name, array in layout.items():
        if isinstance(array, ak.Array):
            types[name] = array.type.content  # per-event type, e.g. var * {eta: float32, ...}
        else:
            types[name] = array.dtype
    return types


class _Writer:
    """One output file, written chunk by chunk, renamed into place on close."""

    def __init__(self, path: Path, tree: str, fmt: str):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.tree_name = tree
        self.fmt = check_fmt(fmt)
        self.file = uproot.recreate(self.tmp)
        self.tree = None
        self.events = 0

    def extend(self, chunk: Chunk) -> None:
        if self.fmt == "ttree":
            layout = ttree_layout(chunk)
            if self.tree is None:
                self.tree = self.file.mktree(self.tree_name, _types(layout))
            self.tree.extend(layout)
        else:
            layout = rntuple_layout(chunk)
            if self.tree is None:
                form = ak.Array(layout).layout.form
                self.tree = self.file.mkrntuple(self.tree_name, form)
            self.tree.extend(ak.Array(layout))
        self.events += _num_events(chunk)

    def close(self) -> Path:
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_file(path: str | Path, chunks: Iterable[Chunk], *, tree: str = DEFAULT_TREE, fmt: str = "ttree") -> int:
    """Write all chunks into one file; returns the number of events written."""
    writer = _Writer(Path(path), tree, fmt)
    try:
        for chunk in chunks:
            if _num_events(chunk):
                writer.extend(chunk)
    except BaseException:
        writer.abort()
        raise
    if writer.tree is None:
        writer.abort()
        raise ValueError(f"no events to write to {path}")
    writer.close()
    return writer.events


def _slice(chunk: Chunk, start: int, stop: int) -> dict[str, Any]:
    return {name: array[start:stop] for name, array in chunk.items()}


def remove_outputs(out_dir: str | Path, prefix: str) -> list[Path]:
    """Delete files named exactly like this generator's outputs (``{prefix}_NNN.root``).

    Called before writing so that a rerun with fewer events leaves no stale files that
    a ``{prefix}_*.root`` glob would pick up.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}_\d{{3,}}\.root$")
    removed = []
    out = Path(out_dir)
    if out.is_dir():
        for path in sorted(out.iterdir()):
            if pattern.match(path.name) and path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def write_split(
    out_dir: str | Path,
    prefix: str,
    chunks: Iterable[Chunk],
    *,
    events_per_file: int = DEFAULT_EVENTS_PER_FILE,
    tree: str = DEFAULT_TREE,
    fmt: str = "ttree",
) -> list[Path]:
    """Write a stream of chunks to ``out_dir/{prefix}_000.root, {prefix}_001.root, ...``.

    Each file holds at most ``events_per_file`` events (chunks are cut at file
    boundaries). Existing ``{prefix}_NNN.root`` files in ``out_dir`` are removed first.
    Returns the paths written, in order.
    """
    check_fmt(fmt)
    if events_per_file < 1:
        raise ValueError(f"events_per_file must be >= 1, got {events_per_file}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_outputs(out, prefix)
    paths: list[Path] = []
    writer: _Writer | None = None
    try:
        for chunk in chunks:
            n = _num_events(chunk)
            start = 0
            while start < n:
                if writer is None:
                    writer = _Writer(out / f"{prefix}_{len(paths):03d}.root", tree, fmt)
                stop = min(n, start + events_per_file - writer.events)
                writer.extend(_slice(chunk, start, stop) if (start, stop) != (0, n) else chunk)
                start = stop
                if writer.events >= events_per_file:
                    paths.append(writer.close())
                    writer = None
        if writer is not None:
            paths.append(writer.close())
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return paths


def chunk_sizes(events: int, chunk_size: int) -> Iterator[int]:
    """Sizes of the consecutive chunks that make up ``events`` events."""
    if events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    full, rest = divmod(events, chunk_size)
    yield from [chunk_size] * full
    if rest:
        yield rest


def write_classes(
    out_dir: str | Path,
    classes: Sequence[str],
    generate_chunk: Callable[[np.random.Generator, int, str], Chunk],
    events: int,
    seed: int,
    fmt: str,
    *,
    chunk_size: int,
    events_per_file: int = DEFAULT_EVENTS_PER_FILE,
    tree: str = DEFAULT_TREE,
    only: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``events`` events of each class (or of the subset ``only``) into
    ``<out_dir>/<class>_000.root, ...``, in class order.

    Chunk j of class i (its index in ``classes``) comes from ``generate_chunk(rng, n, class)`` with
    rng seeded by ``SeedSequence(seed, spawn_key=(i, j))``, so the events depend neither on
    ``events_per_file`` nor on which other classes are written.
    """
    check_fmt(fmt)
    if events < 1:
        raise ValueError(f"events must be >= 1, got {events}")
    unknown = sorted(set(only or ()) - set(classes))
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}: expected some of {tuple(classes)}")
    paths: list[Path] = []
    for index, kind in enumerate(classes):
        if only is not None and kind not in only:
            continue
        chunks = (
            generate_chunk(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, j))), n, kind)
            for j, n in enumerate(chunk_sizes(events, chunk_size))
        )
        paths += write_split(out_dir, kind, chunks, events_per_file=events_per_file, tree=tree, fmt=fmt)
    return paths
