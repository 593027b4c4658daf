"""ROOT event data behind one interface: a TTree or an RNTuple, on local disk or at any fsspec URL.

Format. A job names branches as a TTree written by uproot spells them (`tower_eta`, with the
shared counter `ntower`), whatever the file holds. An RNTuple whose fields are records of
jagged fields (`tower: var * {eta, phi, e}`, which `file["events"] = {"tower": ak.zip(...)}`
writes) exposes the same names: `tower_eta` reads the field `tower.eta` and `ntower` counts
the entries of the collection `tower`. The dotted names work as well (outside expressions).

Storage. A path is a local file or a URL that fsspec opens: `file://`, `http(s)://`, `s3://`
(with s3fs), `root://` (XRootD, with fsspec-xrootd: `pip install "hepray[xrootd]"`). Globs are
expanded wherever the filesystem can list: local disks, `file://`, `s3://`, `root://`, and
HTTP servers that serve directory listings.

Planning uses metadata only: entry counts and the entry boundaries of TTree baskets (those
common to the branches read) or RNTuple clusters, so that read tasks start and stop on them.

Errors. Opening and reading a remote file (any URL but `file://`) is retried after transient
I/O errors (OSError, timeouts, HTTP 5xx/408/429) with back-off, RETRY_DELAYS; then, and for any
other failure of the data (a missing file, a corrupt basket, a decompression or deserialization
error), one DataError naming the file. MemoryError and programming errors (NOT_DATA) propagate
unchanged: they are never reported as bad data.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import reduce
from urllib.parse import urlsplit

import awkward as ak
import fsspec
import numpy as np
import uproot

from hepray.data.uproot_internals import inflate_with_isal

RNTuple = uproot.models.RNTuple.Model_ROOT_3a3a_RNTuple
ISAL_INFLATE = inflate_with_isal()  # in every process that reads: the driver, read tasks, predict


class DataError(ValueError):
    """Bad input data; the message names the file, the branch and the entry range."""


RETRY_DELAYS = (0.5, 1.0, 2.0)  # seconds slept before the 2nd, 3rd and 4th attempt of a remote open or read
# Never bad data: out of memory, interrupted, or a bug (ours or a library's) -- these propagate unchanged.
NOT_DATA = (
    MemoryError,
    TypeError,
    AttributeError,
    NameError,
    AssertionError,
    RecursionError,
    NotImplementedError,
    SystemError,
)
NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
TRANSIENT_STATUS = {408, 429}  # and every 5xx


# ------------------------------------------------------------------ paths


def is_url(path: str) -> bool:
    return "://" in path


def expand_glob(pattern: str) -> list[str]:
    """The files a local or URL glob names, sorted; a plain path or URL is returned as it is
    (it is checked when opened). A query string (`?X-Amz-...`) is not a glob."""
    if not is_url(pattern):
        matches = sorted(glob.glob(pattern))
    elif glob.has_magic(urlsplit(pattern).path):
        matches = _remote_glob(pattern)
    else:
        return [pattern]
    if not matches:
        raise DataError(f"{pattern}: no such file" + (" (no file matches the glob)" if glob.has_magic(pattern) else ""))
    return matches


def _remote_glob(pattern: str) -> list[str]:
    try:
        filesystem, path = fsspec.core.url_to_fs(pattern)
        return sorted(filesystem.unstrip_protocol(match) for match in filesystem.glob(path))
    except Exception as error:
        raise _storage_error(pattern, error) from None


def _storage_error(path: str, error: Exception) -> DataError:
    """One clear error for a file or URL that cannot be opened."""
    detail = _detail(error)
    if isinstance(error, FileNotFoundError):
        return DataError(f"{path}: no such file")
    if isinstance(error, PermissionError):
        return DataError(f"{path}: access denied ({detail})")
    if isinstance(error, ImportError) or (isinstance(error, ValueError) and "Protocol not known" in str(error)):
        hint = '; for root:// URLs: pip install "hepray[xrootd]"' if path.startswith("root://") else ""
        return DataError(f"{path}: no filesystem for this URL ({detail}){hint}")
    if is_remote(path) and (isinstance(error, (OSError, TimeoutError)) or is_transient(path, error)):
        return DataError(f"{path}: cannot reach the server ({detail})")
    return DataError(f"{path}: cannot be opened as a ROOT file ({detail})")


def _detail(error: BaseException) -> str:
    kind = type(error)
    name = (
        f"{kind.__module__}.{kind.__name__}" if kind.__name__ == "error" else kind.__name__
    )  # zlib.error, struct.error
    return f"{name}: {error}".splitlines()[0]


# ------------------------------------------------------------------ transient errors and retries


def is_remote(path: str) -> bool:
    return is_url(path) and not path.startswith("file://")


def is_transient(path: str, error: BaseException) -> bool:
    """Whether a failed open or read of `path` is worth another attempt: I/O errors and timeouts
    of remote files (fsspec, HTTP, XRootD), HTTP 5xx/408/429; not a missing file or a denial."""
    if not is_remote(path) or isinstance(error, NOT_TRANSIENT):
        return False
    if isinstance(error, (OSError, TimeoutError)):
        return True
    status = getattr(error, "status", None)  # aiohttp.ClientResponseError and the like
    if type(error).__module__.split(".")[0] in (
        "aiohttp",
        "fsspec",
        "requests",
        "urllib3",
        "botocore",
        "fsspec_xrootd",
    ):
        return not isinstance(status, int) or status >= 500 or status in TRANSIENT_STATUS
    return False


def io_error(error: BaseException) -> BaseException:
    """The error a failed fsspec byte-range read really was. uproot (5.7, scikit-hep/uproot5#1450)
    indexes the exception fsspec's cat_ranges returns in place of the bytes, so it surfaces as
    TypeError "'ClientResponseError' object is not subscriptable" raised in uproot/source/coalesce.py."""
    if not isinstance(error, TypeError) or "not subscriptable" not in str(error):
        return error
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None or not frame.tb_frame.f_code.co_filename.replace("\\", "/").endswith("uproot/source/coalesce.py"):
        return error
    try:
        result = frame.tb_frame.f_locals["self"]._parent.result(timeout=0)
    except Exception as raised:  # the future itself failed
        result = raised
    return result if isinstance(result, BaseException) else OSError(str(error))


class Failed(Exception):
    """An open or read that failed as data (after its retries): the error, the phase, the attempts."""

    def __init__(self, error: BaseException, opened: bool, attempts: int):
        super().__init__(str(error))
        self.error, self.opened, self.attempts = error, opened, attempts

    def after(self) -> str:
        return f" after {self.attempts} attempts" if self.attempts > 1 else ""


def with_file(path: str, action):
    """action(open uproot file), retried for a remote path after transient errors (RETRY_DELAYS
    between attempts). DataError and NOT_DATA errors propagate as they are; any other error is
    raised as Failed once the attempts are used up."""
    delays = iter(RETRY_DELAYS if is_remote(path) else ())
    attempts = 0
    while True:
        attempts += 1
        opened = False
        try:
            with uproot.open(path) as file:
                opened = True
                return action(file)
        except DataError:
            raise
        except Exception as raised:
            error = io_error(raised)
            if isinstance(error, NOT_DATA):
                raise
            delay = next(delays, None) if is_transient(path, error) else None
            if delay is None:
                raise Failed(error, opened, attempts) from None
            time.sleep(delay)


# ------------------------------------------------------------------ one format-independent view


@dataclass(frozen=True)
class Column:
    """Where a name's values come from: a TTree branch or RNTuple field, or a collection's counts."""

    key: str
    counts: bool = False


class Events:
    """The TTree or RNTuple `name` in an open file: entries, names, boundaries, arrays."""

    def __init__(self, file, path: str, name: str):
        self.file, self.path, self.name = file, path, name
        known = sorted({key.split(";")[0] for key in file.keys()})
        if name not in known:
            raise DataError(f"{path}: no tree '{name}' (objects in the file: {', '.join(known) or 'none'})")
        try:
            self.obj = file[name]
            if not isinstance(self.obj, (RNTuple, uproot.TTree)):
                raise DataError(f"{path}: '{name}' is a {self.obj.classname}, not a TTree or RNTuple")
            if isinstance(self.obj, RNTuple):
                self.kind, self.item = "RNTuple", "field"
                self.columns = _rntuple_columns(self.obj)
            else:
                self.kind, self.item = "tree", "branch"
                self.columns = {key: Column(key) for key in self.obj.keys()}
            self.num_entries = int(self.obj.num_entries)
        except DataError:
            raise
        except Exception as raised:  # a truncated or corrupt file fails here, in many ways
            error = io_error(raised)
            if isinstance(error, NOT_DATA):
                raise
            if is_transient(path, error):
                raise error from None  # for with_file to retry
            raise DataError(f"{path}: '{name}' cannot be read ({_detail(error)})") from None

    def missing(self, names: set[str]) -> list[str]:
        return sorted(names - set(self.columns))

    def boundaries(self, names: set[str]) -> np.ndarray:
        """Sorted entry numbers at which every column read can start without splitting a
        basket (TTree: basket starts common to the branches read) or a cluster (RNTuple)."""
        if self.kind == "RNTuple":
            starts = [summary.num_first_entry for summary in self.obj.cluster_summaries]
        else:
            offsets = [self.obj[self.columns[name].key].entry_offsets for name in sorted(names)]
            starts = reduce(np.intersect1d, offsets) if offsets else []
        return np.union1d(np.clip(starts, 0, self.num_entries), [0, self.num_entries]).astype(np.int64)

    def arrays(self, names: list[str], start: int, stop: int) -> dict[str, ak.Array]:
        if self.kind == "tree":
            return self.obj.arrays(names, entry_start=start, entry_stop=stop, how=dict)
        columns = {name: self.columns[name] for name in names}
        table = self.obj.arrays(sorted({column.key for column in columns.values()}), entry_start=start, entry_stop=stop)
        out = {}
        for name, column in columns.items():
            values = reduce(lambda array, part: array[part], column.key.split("."), table)
            out[name] = ak.num(values, axis=1) if column.counts else values
        return out


def _rntuple_columns(ntuple) -> dict[str, Column]:
    """Every field by its dotted path and by the TTree spelling of it (`tower.eta` -> `tower_eta`),
    and `n<name>` for each top-level collection (read from its first leaf field)."""
    keys = ntuple.keys()
    columns = {key: Column(key) for key in keys}
    for key in keys:
        columns.setdefault(key.replace(".", "_"), Column(key))
    for field in ntuple.fields:
        if field.record.struct_role == uproot.const.RNTupleFieldRole.COLLECTION:
            leaves = [key for key in keys if key.startswith(field.name + ".")] or [field.name]
            columns.setdefault("n" + field.name, Column(leaves[0], counts=True))
    return columns


def describe(path: str, tree: str, names: set[str], allow_empty: bool = False) -> tuple[int, np.ndarray]:
    """Entries and read boundaries of one file, from its metadata; checks the names exist."""

    def metadata(file) -> tuple[int, np.ndarray]:
        events = Events(file, path, tree)
        missing = events.missing(names)
        if missing:
            error = DataError(f"{path}: {events.kind} '{tree}' has no {events.item} {', '.join(map(repr, missing))}")
            error.events = events.num_entries
            raise error
        if events.num_entries == 0 and not allow_empty:
            raise DataError(f"{path}: {events.kind} '{tree}' has no entries")
        return events.num_entries, events.boundaries(names)

    try:
        return with_file(path, metadata)
    except Failed as failed:
        if failed.opened:
            raise DataError(f"{path}: '{tree}' cannot be read ({_detail(failed.error)}){failed.after()}") from None
        raise DataError(f"{_storage_error(path, failed.error)}{failed.after()}") from None


def read_arrays(path: str, tree: str, names: list[str], start: int, stop: int) -> dict[str, ak.Array]:
    """The named columns for entries [start, stop), from either format. A remote file is opened
    and read again after transient errors; a corrupt basket or a file gone is a DataError naming
    the entry range; MemoryError and programming errors propagate unchanged."""
    opened = OPEN_TREES.get(path, tree)
    if opened is not None:
        try:
            return opened.arrays(names, start, stop)
        except Exception:  # read again below, which words the error as every read does
            OPEN_TREES.forget(path, tree)
    try:
        return with_file(path, lambda file: Events(file, path, tree).arrays(names, start, stop))
    except Failed as failed:
        where = f"{path}: entries [{start}, {stop})"
        if failed.opened:
            raise DataError(f"{where}: reading {names} failed ({_detail(failed.error)}){failed.after()}") from None
        reason = str(_storage_error(path, failed.error)).removeprefix(f"{path}: ")
        raise DataError(f"{where}: {reason}{failed.after()}") from None


class OpenTrees:
    """The trees of the last few local files read in this process, kept open: a Ray worker runs
    one read task after another, and the same files come back in the next task and the next epoch,
    so each skips opening the file and deserializing the tree (~17 ms for a TTree of 20 branches,
    ~8 % of a 5000-event range). Keyed by the file's mtime and size, so a rewritten file is opened
    anew; a file that fails to open or read is left to read_arrays' own path and its errors."""

    def __init__(self, size: int = 32):
        self.size = size
        self.trees: OrderedDict[tuple, Events] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str, tree: str) -> Events | None:
        if is_remote(path):
            return None
        local = path.removeprefix("file://")
        try:
            stat = os.stat(local)
        except OSError:
            return None
        key = (path, tree, stat.st_mtime_ns, stat.st_size)
        with self.lock:
            if key in self.trees:
                self.trees.move_to_end(key)
                return self.trees[key]
        file = None
        try:
            file = uproot.open(path, array_cache=None)  # the tree, not its data: every epoch reads again
            events = Events(file, path, tree)
        except Exception:
            if file is not None:
                file.close()
            return None
        with self.lock:
            self.trees[key] = events
            while len(self.trees) > self.size:
                self.trees.popitem(last=False)[1].file.close()
        return events

    def forget(self, path: str, tree: str) -> None:
        with self.lock:
            for key in [key for key in self.trees if key[:2] == (path, tree)]:
                self.trees.pop(key).file.close()


OPEN_TREES = OpenTrees()


def entry_ranges(boundaries: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive ranges covering [0, last boundary) whose ends sit on boundaries, each as close
    to `size` entries as the boundaries allow. A cluster much longer than `size` is cut into
    round(length / size) equal parts: holding the task size matters more than reading it once."""
    cuts = [0]
    for begin, end in zip(boundaries[:-1], boundaries[1:]):
        parts = max(1, round((end - begin) / size))
        cuts += [begin + (end - begin) * k // parts for k in range(1, parts + 1)]
    cuts = np.asarray(cuts, dtype=np.int64)
    ranges, start = [], 0
    while start < cuts[-1]:
        i = int(np.searchsorted(cuts, start + size))
        candidates = [c for c in cuts[i - 1 : i + 1] if c > start]  # the cuts either side of start + size
        stop = int(min(candidates, key=lambda c: abs(c - start - size)))
        ranges.append((start, stop))
        start = stop
    return ranges
