"""`hepray predict`: a trained run's model over new ROOT files, one output per input file.

Each output holds one row per entry of its input tree, in entry order, so ROOT can read it
as a friend tree: `entry`, the score columns (`score_<class>`, or `pred_<target>` for
regression), `pass_cut` when the job has a cut (friend trees need every entry, so events
failing the cut are scored and flagged rather than dropped), and the job's observers.

Ordering with bounded memory: the read plan is one task per (file, entry range) in file and
entry order, the dataset runs with `preserve_order`, so the driver receives the events of
file 1, then file 2, ... and streams them into one open output at a time, buffering at most
`FLUSH_EVENTS` small rows. The images never reach the driver (the model actors drop them), so
the driver handles ~20-40 bytes per event, far below uproot's write rate; writing there needs
no shared filesystem on a cluster and no merge of per-task partial files.
Ranges skipped under `on_error: skip` become rows of NaN scores, so the friend tree still
lines up; files skipped whole (unreadable, missing branches) get no output and are reported.

With `data.objects` a row is an object: `entry` and `object` (its index in the event) say which,
in (entry, object) order; events without objects have no row, so the output is a table to join
on (entry, object) rather than a friend tree, and a skipped range simply has no rows.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import ray

from hepray.app.session import ensure_ray
from hepray.data.events import ENTRY, FILE_KEY, OBJECT, OUTPUT, PASS_CUT, observer
from hepray.data.pipeline import build_dataset
from hepray.data.root_source import DataError, EventReader, ReadPlan, SkipLedger, file_key, labelled_files, plan_reads
from hepray.evaluate.inference import MODEL_FILE, ONNX_FILE, Engine, actor_pool, load_job, predict
from hepray.spec import DataSpec, JobSpec, TrackMomenta, class_pairs
from hepray.train.tasks import Task

TREE = "predictions"
FLUSH_EVENTS = 100_000  # rows buffered per output before a write: one TBasket / row group each
Format = Literal["root", "parquet"]


@dataclass
class PredictReport:
    out_dir: str
    outputs: list[str]
    events: int
    events_skipped: int  # rows written with NaN scores (ranges skipped under on_error: skip)
    files_skipped: int  # inputs without an output (skipped whole under on_error: skip)
    seconds: float
    skipped: list[str] = field(default_factory=list)


def column_name(text: str) -> str:
    """A branch name from a class name or expression: 'log(E)' -> 'log_E_'."""
    return re.sub(r"\W", "_", text)


def score_columns(job: JobSpec) -> list[str]:
    """Binary: the probability of label 1 (the second file group); multiclass: one softmax
    probability per class (with task.pair_heads then each pair head's probability of a over b,
    score_<a>_vs_<b>); regression: the prediction (track momenta: px, py, pz per slot)."""
    target = job.data.target
    if isinstance(target, TrackMomenta):
        return [
            f"pred_{column_name(text)}_{slot}"
            for slot in range(target.tracks)
            for text in (target.px, target.py, target.pz)
        ]
    if job.task.kind == "regression":
        return [f"pred_{column_name(target)}"]
    names = job.data.class_names
    if job.task.kind == "binary":
        return [f"score_{column_name(names[1])}"]
    pairs = class_pairs(len(names)) if job.task.pair_heads else []
    return [f"score_{column_name(name)}" for name in names] + [
        f"score_{column_name(names[a])}_vs_{column_name(names[b])}" for a, b in pairs
    ]


def prediction_spec(job: JobSpec, files: list[str], observers: list[str], tree: str | None = None) -> DataSpec:
    """The job's data spec over new files: same tree (or `tree`), inputs, norms, objects and cut;
    no labels, no target, no augmentation, nothing generated."""
    return job.data.model_copy(
        update={
            "files": files,
            "tree": job.data.tree if tree is None else tree,
            "label_branch": None,
            "target": None,
            "observers": observers,
            "augment": [],
            "generate": None,
        }
    )


class OutputSchema:
    """Column names and types of every output, and how to fill the rows of skipped entries."""

    def __init__(self, job: JobSpec, observers: list[str]):
        self.task = Task(job.task)
        self.scores = score_columns(job)
        self.observers = {observer(name): column_name(name) for name in observers}
        self.has_cut = job.data.cut is not None
        self.per_object = job.data.objects is not None
        self.types = {ENTRY: np.dtype(np.int64)}
        if self.per_object:
            self.types[OBJECT] = np.dtype(np.int64)
        self.types.update({name: np.dtype(np.float32) for name in self.scores})
        if self.has_cut:
            self.types[PASS_CUT] = np.dtype(np.bool_)
        self.types.update({name: np.dtype(np.float32) for name in self.observers.values()})
        if len(self.types) != len(self.scores) + len(self.observers) + 1 + self.has_cut + self.per_object:
            raise DataError(f"output columns collide: {list(self.types)} from observers {observers}")

    def rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = self.task.scores(batch[OUTPUT]).astype(np.float32).reshape(len(batch[ENTRY]), -1)
        if self.task.pair_heads:
            scores = np.hstack([scores, self.task.pair_scores(batch[OUTPUT]).astype(np.float32)])
        rows = {ENTRY: batch[ENTRY], **({OBJECT: batch[OBJECT]} if self.per_object else {})}
        rows.update({name: scores[:, k] for k, name in enumerate(self.scores)})
        if self.has_cut:
            rows[PASS_CUT] = batch[PASS_CUT]
        rows.update({name: batch[column] for column, name in self.observers.items()})
        return rows

    def missing(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows for entries that were not read: NaN scores and observers, failing the cut."""
        n = stop - start
        return {
            name: (
                np.arange(start, stop, dtype=np.int64)
                if name == ENTRY
                else np.zeros(n, np.bool_)
                if name == PASS_CUT
                else np.full(n, np.nan, np.float32)
            )
            for name in self.types
        }


class OutputWriter:
    """One output file, written under a temporary name and renamed when complete."""

    def __init__(self, path: Path, fmt: Format, types: dict[str, np.dtype]):
        self.path, self.fmt = path, fmt
        self.partial = path.with_name(path.name + ".partial")
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.written = 0
        if fmt == "root":
            import uproot

            self.file = uproot.recreate(self.partial)
            self.file.mktree(TREE, types)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([(name, pa.from_numpy_dtype(dtype)) for name, dtype in types.items()])
            self.file = pq.ParquetWriter(self.partial, schema)

    def write(self, rows: dict[str, np.ndarray]) -> None:
        self.buffer.append(rows)
        self.buffered += len(rows[ENTRY])
        if self.buffered >= FLUSH_EVENTS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        rows = {name: np.concatenate([part[name] for part in self.buffer]) for name in self.buffer[0]}
        if self.fmt == "root":
            self.file[TREE].extend(rows)
        else:
            import pyarrow as pa

            self.file.write_table(pa.table(rows, schema=self.file.schema))
        self.written += self.buffered
        self.buffer, self.buffered = [], 0

    def close(self, entries: int | None) -> None:
        """entries: the rows expected (one per entry), or None for rows per object."""
        self.flush()
        self.file.close()
        if entries is not None and self.written != entries:
            raise RuntimeError(f"{self.path}: wrote {self.written} rows for {entries} entries")
        self.partial.replace(self.path)

    def abandon(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


def output_paths(paths: list[str], out_dir: Path, fmt: Format) -> list[Path]:
    """`OUT/<input stem>.root|parquet`; two inputs of the same name would overwrite each other."""
    suffix = ".root" if fmt == "root" else ".parquet"
    outputs = [out_dir / (Path(path.split("?")[0]).stem + suffix) for path in paths]
    seen: dict[Path, str] = {}
    for path, output in zip(paths, outputs):
        if output in seen:
            raise DataError(
                f"{path} and {seen[output]} would both write {output}: predict them into separate --out dirs"
            )
        seen[output] = path
    return outputs


def checked_model_path(run_dir: Path, engine: Engine) -> Path:
    """RUN_DIR's model file, checked (with the ONNX export for engine onnx) before Ray starts, so a
    wrong directory fails at once with a hint."""
    model_path = run_dir / MODEL_FILE
    for needed in (model_path, *([run_dir / ONNX_FILE] if engine == "onnx" else [])):
        if not needed.is_file():
            raise DataError(f"{needed}: no such file (is {run_dir} the output directory of `hepray run`?)")
    return model_path


def planned_entries(spec: DataSpec, plan: ReadPlan) -> tuple[list[str], dict[str, int]]:
    """The inputs that get an output (those not skipped whole) and their entry counts, taken from the
    plan's ranges, which cover every entry: no file is opened again to count them."""
    skipped_files = {path for path, _, _ in plan.skipped}
    paths = [path for path, _ in labelled_files(spec) if path not in skipped_files]
    entries = dict.fromkeys(paths, 0)
    for ranges in plan.tasks:
        for entry_range in ranges:
            entries[entry_range.path] = max(entries[entry_range.path], entry_range.stop)
    return paths, entries


def predict_files(
    run_dir: str | Path,
    files: list[str],
    out_dir: str | Path | None = None,
    fmt: Format = "root",
    concurrency: int | None = None,
    num_gpus: float | None = None,
    engine: Engine = "torch",
    batch_size: int = 1024,
    observers: list[str] | None = None,
    tree: str | None = None,
) -> PredictReport:
    """Score every entry (or object) of `files` with RUN_DIR's model and write one output per
    file; `tree`: read this tree instead of the job's."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    model_path = checked_model_path(run_dir, engine)
    job = load_job(model_path)
    ensure_ray()
    observers = job.data.observers if observers is None else observers
    spec = prediction_spec(job, files, observers, tree)
    schema = OutputSchema(job, observers)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)

    plan = plan_reads(spec, EventReader(spec, None).branches(), allow_empty=True)
    paths, entries = planned_entries(spec, plan)
    outputs = output_paths(paths, out_dir, fmt)

    ledger_name = f"hepray-skips-{uuid.uuid4().hex[:12]}" if spec.on_error == "skip" else None
    ledger = SkipLedger.options(name=ledger_name).remote() if ledger_name else None
    ordered = OrderedOutputs(paths, outputs, entries, fmt, schema)
    try:
        if plan.tasks:
            # sparse images, densified in the model actors (to_tensors): ~8x fewer object-store bytes
            dataset = build_dataset(spec, None, plan, ledger_name, sparse=True, flag_cut=True, file_column=True)
            dataset.context.execution_options.preserve_order = True  # this dataset's own copy of the context
            predicted = predict(
                dataset,
                model_path,
                engine=engine,
                batch_size=batch_size,
                pool=actor_pool(job, concurrency, num_gpus),
            )
            index_of = FileIndex(paths)
            for batch in predicted.iter_batches(batch_size=None, batch_format="numpy"):
                ordered.write(index_of(batch[FILE_KEY]), schema.rows(batch))
        ordered.finish()
        ledger_skips = ray.get(ledger.skipped.remote()) if ledger is not None else []
    except BaseException:
        ordered.abandon()
        raise
    finally:
        if ledger is not None:
            ray.kill(ledger)

    reasons = [reason for _, _, reason in plan.skipped] + [reason for *_, reason in ledger_skips]
    report = PredictReport(
        out_dir=str(out_dir),
        outputs=[str(output) for output in outputs],
        events=sum(entries.values()),
        events_skipped=sum(stop - start for _, start, stop, _ in ledger_skips) if schema.per_object else ordered.filled,
        files_skipped=len(plan.skipped),
        seconds=time.perf_counter() - started,
        skipped=reasons,
    )
    (out_dir / "predict.json").write_text(
        json.dumps({"run": str(run_dir), "engine": engine, **asdict(report)}, indent=1)
    )
    return report


class FileIndex:
    """file_key column -> position of the file in the input list (vectorized)."""

    def __init__(self, paths: list[str]):
        self.keys = np.array([file_key(path) for path in paths], dtype=np.int64)
        if len(np.unique(self.keys)) != len(self.keys):
            raise DataError("two input paths share a 64-bit file key; predict them in separate runs")
        self.order = np.argsort(self.keys)

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        return self.order[np.searchsorted(self.keys, keys, sorter=self.order)]


class OrderedOutputs:
    """Rows arriving in (file, entry[, object]) order, written file after file: one output open at a
    time however many inputs; entries no read task delivered become `schema.missing` rows (not
    with objects: an event without objects has no row either)."""

    def __init__(
        self, paths: list[str], outputs: list[Path], entries: dict[str, int], fmt: Format, schema: OutputSchema
    ):
        self.paths, self.outputs, self.entries, self.fmt, self.schema = paths, outputs, entries, fmt, schema
        self.current = -1  # the file being written
        self.writer: OutputWriter | None = None
        self.next_entry, self.next_object = 0, 0  # the first (entry, object) the next row may have
        self.filled = 0  # rows of entries no read task delivered (skipped ranges)

    def write(self, file_index: np.ndarray, rows: dict[str, np.ndarray]) -> None:
        starts = np.flatnonzero(np.r_[True, np.diff(file_index) != 0])
        objects = rows[OBJECT] if self.schema.per_object else np.zeros(len(file_index), dtype=np.int64)
        for begin, end in zip(starts, [*starts[1:], len(file_index)]):
            index, entry, obj = int(file_index[begin]), rows[ENTRY][begin:end], objects[begin:end]
            if not self._in_order(index, entry, obj):
                raise RuntimeError(f"{self.paths[index]}: predictions arrived out of entry order (entry {entry[0]})")
            self._advance_to(index)
            if not self.schema.per_object:
                self._fill_until(int(entry[0]))
            self.writer.write({name: column[begin:end] for name, column in rows.items()})
            # per event: the next entry; per object: the next object of this entry or any later entry
            self.next_entry, self.next_object = (
                (int(entry[-1]), int(obj[-1]) + 1) if self.schema.per_object else (int(entry[-1]) + 1, 0)
            )

    def _in_order(self, index: int, entry: np.ndarray, obj: np.ndarray) -> bool:
        """Whether rows of file `index` come after those written, each after the one before, by (entry, object)."""
        if index < self.current:
            return False
        first = (self.next_entry, self.next_object) if index == self.current else (0, 0)
        step = np.diff(entry)
        return (int(entry[0]), int(obj[0])) >= first and not np.any((step < 0) | ((step == 0) & (np.diff(obj) <= 0)))

    def finish(self) -> None:
        self._advance_to(len(self.paths))

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.abandon()

    def _advance_to(self, index: int) -> None:
        while self.current < index:
            if self.writer is not None:
                total = self.entries[self.paths[self.current]]
                if not self.schema.per_object:
                    self._fill_until(total)
                self.writer.close(None if self.schema.per_object else total)
                self.writer = None
            self.current, self.next_entry, self.next_object = self.current + 1, 0, 0
            if self.current < len(self.paths):
                self.writer = OutputWriter(self.outputs[self.current], self.fmt, self.schema.types)

    def _fill_until(self, entry: int) -> None:
        if self.next_entry < entry:
            self.writer.write(self.schema.missing(self.next_entry, entry))
            self.filled += entry - self.next_entry
            self.next_entry = entry
