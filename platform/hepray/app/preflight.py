"""Preflight: everything a job names checked before Ray starts, from file metadata only.

`hepray validate`, `run`, `submit` and `tune` call `check_job` on a job that validated: spec.py
has checked what the YAML alone decides (expressions parse, sample kinds, the early-stopping
metric, bins and energy are observers, a safe name). Here every file the job reads (data.files
and evaluate.samples) is opened for its metadata only (keys, entries, basket or cluster
boundaries; no event is read) and its tree must hold every branch the job names, with a
"did you mean" from the tree's own names. Files that data.generate will write (local patterns
under generate.out that match nothing yet) are skipped. With data.on_error: skip a bad file is
a warning (it is skipped when the job plans its reads), not an error.

`Preflight.plan()` is what `hepray validate` prints: files and entries per class, read tasks,
the events expected per split.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hepray.data.root_source import mixed_tasks
from hepray.data.rootio import DataError, Events, Failed, describe, expand_glob, is_url, with_file
from hepray.expr import Expression
from hepray.inputs import encoder_for
from hepray.models import build_model
from hepray.spec import DataSpec, JobSpec, SpecError, did_you_mean

SHOWN_FILES = 4  # files listed per class in the plan
PLURAL = {"branch": "branches", "field": "fields"}


@dataclass
class FileMeta:
    """One file's metadata: its tree's entries and read boundaries, or what is wrong with it."""

    path: str
    kind: str = ""
    entries: int = 0
    boundaries: np.ndarray | None = None
    problem: str | None = None  # the error without the leading path


@dataclass
class Group:
    """The files of one class (or of all events, or of one extra sample) and the patterns behind them."""

    key: str  # key path: data.files.<class>, data.files or evaluate.samples.<name>
    label: str  # what the plan calls it
    patterns: list[str]
    tree: str
    files: list[FileMeta] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # patterns data.generate writes
    absent: list[str] = field(default_factory=list)  # patterns not found here (submit: the cluster's)

    @property
    def good(self) -> list[FileMeta]:
        return [meta for meta in self.files if meta.problem is None]

    @property
    def entries(self) -> int:
        return sum(meta.entries for meta in self.good)


@dataclass
class Preflight:
    job: JobSpec
    groups: list[Group]  # data.files
    samples: list[Group]  # evaluate.samples
    warnings: list[str] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        return any(group.pending or group.absent for group in self.groups)

    def read_tasks(self) -> int:
        """As data.root_source.plan_reads makes them (mixed_tasks), from the same metadata."""
        groups = {k: [(meta.path, meta.boundaries) for meta in group.good] for k, group in enumerate(self.groups)}
        return len(mixed_tasks(groups, self.job.data.events_per_task))

    def plan(self) -> list[str]:
        return plan_lines(self)


# ------------------------------------------------------------------ what the job names


def named_branches(job: JobSpec) -> dict[str, list[str]]:
    """Branch -> the key paths naming it: inputs, the job's expressions (spec.JobSpec.expressions),
    label_branch. The same branches the read tasks read (tests/test_preflight.py checks)."""
    named: dict[str, list[str]] = {}

    def add(key: str, names) -> None:
        for name in sorted(names):
            if key not in named.setdefault(name, []):
                named[name].append(key)

    for name, spec in job.data.inputs.items():
        add(f"data.inputs.{name}", encoder_for(spec).branches())
    for key, text in job.expressions():
        add(key, Expression(text).branches)
    if job.data.label_branch:
        add("data.label_branch", [job.data.label_branch])
    if job.data.objects is not None:
        add("data.objects.count", [job.data.objects.count])
    return named


# Values per point or per track, not per example: their branches may be lists of any length.
PER_POINT_KEYS = re.compile(r"data\.inputs\.[^.]+\.(features|sort_by)$|data\.target\.p[xyz]$")


def per_example_branches(job: JobSpec) -> dict[str, list[str]]:
    """Branch -> the key paths of the expressions that need one value per example (cut, target,
    observers, weight, scalars, baselines, label_branch): with data.objects, per event or per object."""
    named: dict[str, list[str]] = {}
    for key, text in job.expressions():
        if not PER_POINT_KEYS.match(key):
            for name in Expression(text).branches:
                named.setdefault(name, []).append(key)
    if job.data.label_branch:
        named.setdefault(job.data.label_branch, []).append("data.label_branch")
    return named


def _groups(job: JobSpec) -> tuple[list[Group], list[Group]]:
    try:
        return _file_groups(job)
    except SpecError as error:  # extra samples of a job with a tree per class group and several trees
        raise DataError(str(error)) from None


def _file_groups(job: JobSpec) -> tuple[list[Group], list[Group]]:
    files = job.data.files
    if isinstance(files, dict):
        groups = [
            Group(f"data.files.{name}", f"{name} (label {label})", patterns, job.data.tree_of(label))
            for label, (name, patterns) in enumerate(files.items())
        ]
    else:
        classes = (
            f" (labels from {job.data.label_branch}: {', '.join(job.data.class_names)})"
            if job.data.label_branch
            else ""
        )
        groups = [Group("data.files", "events" + classes, files, job.data.tree_of(None))]
    samples = [
        Group(f"evaluate.samples.{name}", name, patterns, job.data.tree_of(None))
        for name, patterns in job.evaluate.samples.items()
    ]
    return groups, samples


def _generated(spec: DataSpec, pattern: str) -> bool:
    """Whether data.generate writes the files of a pattern that matches nothing yet (app.job_data.ensure_data)."""
    if spec.generate is None or is_url(pattern):
        return False
    return Path(spec.generate.out).resolve() in Path(pattern).resolve().parents


def _expand(group: Group, spec: DataSpec, absent_ok: bool) -> list[str]:
    paths = []
    for pattern in group.patterns:
        try:
            paths += expand_glob(pattern)
        except DataError as error:
            if _generated(spec, pattern):
                group.pending.append(pattern)
            elif absent_ok and not is_url(pattern):
                group.absent.append(pattern)
            else:
                raise DataError(f"{group.key}: {error}") from None
    return paths


# ------------------------------------------------------------------ one file's metadata


def _trees(file) -> list[str]:
    """The TTrees and RNTuples in a file, subdirectories included, without cycle numbers."""
    return sorted(
        {
            re.sub(r";\d+", "", key)
            for key, classname in file.classnames().items()
            if classname == "TTree" or classname.endswith("RNTuple")
        }
    )


def _tree_suggestion(tree: str, trees: list[str]) -> str:
    same_name = [name for name in trees if name.rsplit("/", 1)[-1] == tree.rsplit("/", 1)[-1]]
    return f"; did you mean '{same_name[0]}'?" if same_name else did_you_mean(tree, trees)


def _missing(events: Events, names: dict[str, list[str]], tree: str) -> str | None:
    missing = events.missing(set(names))
    if not missing:
        return None
    known = list(events.columns)
    described = [f"'{name}' ({', '.join(names[name])}{did_you_mean(name, known)})" for name in missing]
    item = events.item if len(missing) == 1 else PLURAL[events.item]
    return f"{events.kind} '{tree}' has no {item} {', '.join(described)}"


def _inspect(file, path: str, tree: str, names: dict[str, list[str]], objects: ObjectsCheck | None) -> FileMeta:
    meta = FileMeta(path)
    if tree not in {re.sub(r";\d+", "", key) for key in file.keys()}:
        trees = _trees(file)
        meta.problem = (
            f"no tree '{tree}' (trees in the file: {', '.join(trees) or 'none'}){_tree_suggestion(tree, trees)}"
        )
        return meta
    events = Events(file, path, tree)
    meta.kind, meta.entries = events.kind, events.num_entries
    meta.problem = _missing(events, names, tree)
    if meta.problem is None and objects is not None:
        meta.problem = objects.problem(events)
    if meta.problem is None and meta.entries == 0:
        meta.problem = f"{events.kind} '{tree}' has no entries"
    if meta.problem is None:
        meta.boundaries = events.boundaries(set(names))
    return meta


def inspect_file(path: str, tree: str, names: dict[str, list[str]], objects: ObjectsCheck | None = None) -> FileMeta:
    """Entries, read boundaries and the branches named but missing, from the file's metadata
    (rootio.with_file: a remote file is opened again after transient errors)."""
    try:
        return with_file(path, lambda file: _inspect(file, path, tree, names, objects))
    except DataError as error:
        return FileMeta(path, problem=str(error).removeprefix(f"{path}: "))
    except Failed:  # worded as rootio words it for the read plan
        meta = FileMeta(path)
        try:
            meta.entries, meta.boundaries = describe(path, tree, set(names))
        except DataError as error:
            meta.problem = str(error).removeprefix(f"{path}: ")
        return meta


@dataclass
class ObjectsCheck:
    """data.objects against a TTree's metadata: the count is one number per entry, and a branch
    that needs one value per example and holds a counted list is counted by the count branch.
    (Lists without a counter branch, std::vector or RNTuple fields, are checked as they are read.)"""

    count: str
    per_example: dict[str, list[str]]

    def problem(self, events: Events) -> str | None:
        if events.kind != "tree":
            return None
        interpretation = events.obj[events.columns[self.count].key].interpretation
        if _counter(events, self.count) is not None or "AsJagged" in repr(interpretation):
            return f"branch '{self.count}' (data.objects.count) holds a list per entry, not a number of objects"
        for name, keys in sorted(self.per_example.items()):
            counter = _counter(events, name)
            if counter is None or counter == self.count:
                continue
            differs = _first_difference(events, counter, self.count)
            if differs is not None:
                entry, counted, objects = differs
                return (
                    f"branch '{name}' ({', '.join(keys)}) holds a list per entry counted by '{counter}', "
                    f"not one value per object counted by '{self.count}' (data.objects.count): "
                    f"entry {entry} has {counted} against {objects} objects"
                )
        return None


def _first_difference(events: Events, counter: str, count: str) -> tuple[int, int, int] | None:
    """The first entry where two count branches differ, over the first basket range they share.
    uproot's writer gives every jagged branch its own counter (`nElectron_eta`), holding the same
    numbers as `nElectron`: such a branch is per object, and the read task checks every range."""
    boundaries = events.boundaries({counter, count})
    if len(boundaries) < 2:  # no entries: said as such below
        return None
    values = events.arrays([counter, count], 0, int(boundaries[1]))
    counted, objects = (np.asarray(values[name]) for name in (counter, count))
    wrong = np.flatnonzero(counted != objects)
    return None if len(wrong) == 0 else (int(wrong[0]), int(counted[wrong[0]]), int(objects[wrong[0]]))


def _counter(events: Events, name: str) -> str | None:
    count_branch = getattr(events.obj[events.columns[name].key], "count_branch", None)
    return None if count_branch is None else count_branch.name


def _objects_check(job: JobSpec) -> ObjectsCheck | None:
    if job.data.objects is None:
        return None
    return ObjectsCheck(job.data.objects.count, per_example_branches(job))


# ------------------------------------------------------------------ the job


def check_job(job: JobSpec, absent_ok: bool = False) -> Preflight:
    """Check every file the job reads holds every branch it names; raises DataError (one line
    naming the file, the branch, the key naming it and a "did you mean"). absent_ok: local
    files not found here are noted, not errors (`hepray submit`: the cluster may hold them)."""
    groups, samples = _groups(job)
    paths = {id(group): _expand(group, job.data, absent_ok) for group in (*groups, *samples)}
    names = named_branches(job)
    every = sorted({(path, group.tree) for group in (*groups, *samples) for path in paths[id(group)]})
    objects = _objects_check(job)
    with ThreadPoolExecutor(max(1, min(16, len(every)))) as pool:
        described = dict(zip(every, pool.map(lambda read: inspect_file(*read, names, objects), every)))
    for group in (*groups, *samples):
        group.files = [described[path, group.tree] for path in paths[id(group)]]
    report = Preflight(job, groups, samples, _problems([described[read] for read in every], job.data.on_error))
    for group in (*groups, *samples):
        if group.files and not group.good and not group.pending:
            raise DataError(
                f"{group.key}: no events to read: all {len(group.files)} files are skipped "
                f"(data.on_error: skip), first {group.files[0].path}: {group.files[0].problem}"
            )
    check_model_fits(job)  # after the files: a misspelt branch is named before a model that cannot fit
    return report


def check_model_fits(job: JobSpec) -> None:
    """The model builds on the job's inputs and runs on a batch of two; one that does not fit them
    (a point-cloud model on an image, a tower naming no input, an image too small for its kernels)
    fails here in one line instead of in every training worker."""
    shapes = job.data.input_shapes()
    try:
        model = build_model(job.model, shapes, job.n_outputs).eval()
        with torch.no_grad():
            model({name: torch.zeros(2, *shape) for name, shape in shapes.items()})
    except (ValueError, RuntimeError, KeyError, IndexError) as error:
        inputs = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SpecError(f"model: {job.model.name} does not fit the job's inputs ({inputs}): {reason}") from None


def _problems(files: list[FileMeta], on_error: str) -> list[str]:
    """Fail on the first bad file (naming how many more fail alike), or warn under skip."""
    by_problem: dict[str, list[str]] = {}
    for meta in files:
        if meta.problem is not None:
            by_problem.setdefault(meta.problem, []).append(meta.path)
    lines = []
    for problem, paths in by_problem.items():
        more = f" (and {len(paths) - 1} more file{'s' if len(paths) > 2 else ''})" if len(paths) > 1 else ""
        line = f"{paths[0]}{more}: {problem}"
        if on_error == "fail":
            raise DataError(line)
        lines.append(f"{line} (skipped: data.on_error is skip)")
    return lines


# ------------------------------------------------------------------ the plan `hepray validate` prints


def _group_lines(group: Group, job: JobSpec) -> list[str]:
    good = group.good
    lines = [f"  {group.label}: {len(good)} file{'s' if len(good) != 1 else ''}, {group.entries} entries"]
    kinds = {"tree": " (TTree)", "RNTuple": " (RNTuple)"}
    lines += [f"    {meta.path}  {meta.entries} entries{kinds.get(meta.kind, '')}" for meta in good[:SHOWN_FILES]]
    if len(good) > SHOWN_FILES:
        lines.append(f"    ... and {len(good) - SHOWN_FILES} more files")
    generate = job.data.generate
    for pattern in group.pending:
        lines.append(
            f"    {pattern}: not generated yet (data.generate writes {generate.events} events per class "
            f"or sample of '{generate.kind}' into {generate.out} when the job runs)"
        )
    for pattern in group.absent:
        lines.append(f"    {pattern}: not found here (checked on the cluster when the job plans its reads)")
    return lines


def plan_lines(report: Preflight) -> list[str]:
    job, data = report.job, report.job.data
    total = sum(group.entries for group in report.groups)
    files = sum(len(group.good) for group in report.groups)
    lines = [f"plan: {data.trees_text()}, {files} file{'s' if files != 1 else ''}, {total} entries"]
    if data.objects is not None:
        first = data.objects.max_per_event
        lines.append(
            f"objects: one example per object counted by '{data.objects.count}'"
            + (f" (the first {first} of each event)" if first else " (all of each event)")
            + "; an event's objects stay in one split; the counts below are events"
        )
    for group in report.groups:
        lines += _group_lines(group, job)
    if report.incomplete:
        lines.append("read tasks and split sizes: planned when the missing files exist")
    else:
        val, test = round(total * data.split.val), round(total * data.split.test)
        lines.append(f"read tasks: {report.read_tasks()} (data.events_per_task: {data.events_per_task})")
        cut = ", before data.cut" if data.cut else ""
        lines.append(f"splits (expected events{cut}): train {total - val - test}, val {val}, test {test}")
    if report.samples:
        lines.append("evaluate.samples:")
        for group in report.samples:
            lines += _group_lines(group, job)
    return lines
