"""Search files: a base job, a search space over its dotted keys, objectives, budget and scheduler.

    base_job: jobs/electron_id.yaml
    metric: val_auc                  # or two: [val_auc, loss_gap] with mode: [max, min]
    mode: max
    num_samples: 8
    space:
      model.blocks: {randint: [2, 4]}                    # low..high inclusive, as Optuna's suggest_int
      model.head: {choice: [flatten, maxavg]}
      model.dense: {choice: [64, 128], when: {model.head: flatten}}   # conditional key
      train.lr: {loguniform: [1.0e-4, 3.0e-3]}

Objectives are per-epoch metrics of the training loop (val_loss, val_auc, ...) or `loss_gap`
(val_loss - train_eval_loss, the overfitting gap). A trial's value is the metric at its best
epoch, the epoch with the best first objective so far.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from hepray.spec import (
    EPOCH_TASK_METRICS,
    JobSpec,
    SpecError,
    Strict,
    did_you_mean,
    problem,
    read_yaml,
    set_path,
    validate_job,
)

# What a search can optimize: the validation metrics the training loop reports each epoch, per
# task kind (spec.EPOCH_TASK_METRICS), the losses, and the loss gap.
_EPOCH_METRICS = {kind: [f"val_{name}" for name in names] for kind, names in EPOCH_TASK_METRICS.items()}
_COMMON_METRICS = ["val_loss", "train_loss", "train_eval_loss", "loss_gap"]
_SCALAR = (str, int, float, bool, type(None))


class Dimension(Strict):
    """One searched key: exactly one of choice / uniform / loguniform / randint, optionally `when`."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    when: dict[str, Any] | None = Field(
        None, description="searched only when each earlier key has this value (or one of this list)"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, randint")
        for kind in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: needs [low, high] with low < high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: low must be > 0")
        return self

    @property
    def encoded(self) -> bool:
        """Optuna's categorical values are scalars: lists (e.g. augmentations) travel as JSON text."""
        return self.choice is not None and not all(isinstance(v, _SCALAR) for v in self.choice)

    def suggest(self, trial, name: str) -> Any:
        if self.choice is not None:
            options = [json.dumps(v) for v in self.choice] if self.encoded else self.choice
            return trial.suggest_categorical(name, options)
        if self.randint is not None:
            return trial.suggest_int(name, *self.randint)
        if self.loguniform is not None:
            return trial.suggest_float(name, *self.loguniform, log=True)
        return trial.suggest_float(name, *self.uniform)

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded else value

    def example(self) -> Any:
        if self.choice is not None:
            return self.choice[0]
        return (self.randint or self.loguniform or self.uniform)[0]

    def can_fix(self, value: Any) -> bool:
        """Whether Optuna can enqueue this value: a listed choice, or a number (> 0 on a log scale);
        numbers outside [low, high] are allowed, e.g. a base job's value outside the searched range."""
        if self.choice is not None:
            return value in self.choice
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return value > 0 or self.loguniform is None

    def applies(self, chosen: dict[str, Any]) -> bool:
        for key, wanted in (self.when or {}).items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if key not in chosen or chosen[key] not in allowed:
                return False
        return True


class Scheduler(Strict):
    """ASHA on per-epoch reports: at each rung (epoch grace_period * reduction_factor^k, below the
    trials' epochs) a trial below the top 1/reduction_factor of the values other trials had at that
    same epoch stops, and reaches Optuna as pruned. A whole reduction factor keeps rungs on epochs."""

    kind: Literal["asha"] = "asha"
    grace_period: int = Field(1, gt=0, description="epochs every trial runs before it can be stopped")
    max_t: int | None = Field(None, gt=0, description="epochs of the longest trial (default: the trial's train.epochs)")
    reduction_factor: int = Field(2, ge=2)

    def budget(self, epochs: int) -> int:
        """The epochs of a trial that is not stopped: a trial stopped before them is pruned."""
        return min(self.max_t or epochs, epochs)

    def rungs(self, epochs: int) -> list[int]:
        """The epochs at which ASHA compares trials."""
        rungs, rung = [], self.grace_period
        while rung < self.budget(epochs):
            rungs.append(rung)
            rung *= self.reduction_factor
        return rungs


class TrialResources(Strict):
    """Per trial: its training workers (a placement group of their own) and its Tune driver's CPUs."""

    num_workers: int | None = Field(None, gt=0, description="default: the base job's scaling.num_workers")
    cpus_per_worker: float | None = Field(None, gt=0, description="default: the base job's scaling.cpus_per_worker")
    # The trial driver only waits on fit(): a fraction of a CPU leaves the rest to Ray Data's read tasks.
    driver_cpus: float = Field(0.25, ge=0)


class Report(Strict):
    """What `hepray tune --report` compares besides baseline and tuned job."""

    binary_jobs: list[str] = Field(
        [], description="dedicated two-class jobs; their AUC vs the tuned model's pairwise AUC"
    )
    pair_goal: float = Field(0.005, ge=0, description="largest acceptable binary - multiclass pairwise AUC gap")
    seeds: list[int] = Field(
        [],
        description="training seeds of the class-pair comparison: the baseline, the tuned and each binary job "
        "trained once per seed, every pair AUC and gap the mean over them; default: each job's own train.seed",
    )
    evaluation_files: dict[str, list[str]] = Field(
        {},
        description="class -> globs of a separate evaluation sample (e.g. generated with another seed), all of "
        "whose events every compared model scores for the error bars and gaps; default: the test split",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("each seed once: a repeated seed would count one training twice")
        return seeds

    @field_validator("evaluation_files", mode="before")
    @classmethod
    def _globs_as_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @property
    def evaluation(self) -> str:
        return "evaluation-sample" if self.evaluation_files else "test"


class TuneSpec(Strict):
    name: str
    base_job: str
    metric: str | list[str]
    mode: Literal["min", "max"] | list[Literal["min", "max"]]
    num_samples: int = Field(8, gt=0, description="trials in the whole search, resumed sessions included")
    max_concurrent_trials: int = Field(1, gt=0)
    seed: int = 1
    startup_trials: int = Field(10, gt=0, description="random trials before TPE models the results")
    evaluate_base_first: bool = Field(True, description="trial 0 uses the base job's values of the searched keys")
    first_trials: list[dict[str, Any]] = Field(
        [],
        description="trials run next (before Optuna proposes any): each the base job's values of the "
        "searched keys with these set, e.g. [{task.pair_heads: true}]",
    )
    trial_retries: int = Field(
        1, ge=0, description="a failed trial (e.g. a worker killed out of memory) is rerun this often"
    )
    scheduler: Scheduler = Scheduler()
    resources: TrialResources = TrialResources()
    trial_overrides: dict[str, Any] = Field(
        {}, description="job keys set for trials only (e.g. fewer epochs); the best job keeps the base job's"
    )
    job_overrides: dict[str, Any] = Field(
        {},
        description="job keys set in the base job (so in every trial, the baseline and the best job) and in "
        "every report.binary_jobs job, e.g. a larger sample; a data.files.<class> key only in the jobs of that class",
    )
    space: dict[str, Dimension] = Field(min_length=1)
    report: Report = Report()

    @field_validator("metric", "mode")
    @classmethod
    def _one_or_two(cls, value: Any) -> Any:
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            raise ValueError("one objective, or a list of two")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TuneSpec:
        if len(self.metrics) != len(self.modes):
            raise ValueError("mode: one mode per metric")
        keys = list(self.space)
        for index, (key, dimension) in enumerate(self.space.items()):
            for condition in dimension.when or {}:
                if condition not in keys[:index]:
                    raise ValueError(f"space.{key}.when: '{condition}' must be a searched key listed before it")
        return self

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return self.mode if isinstance(self.mode, list) else [self.mode]

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: conditional keys are asked only when their condition holds."""
        chosen: dict[str, Any] = {}
        for key, dimension in self.space.items():
            if dimension.applies(chosen):
                chosen[key] = dimension.decode(dimension.suggest(trial, key))
        return chosen

    def overridden(self, job_raw: dict) -> dict:
        """A job of this search (its base job or a binary job of the report) with job_overrides set.
        A binary job has two of the base job's classes: it takes the globs of those two only."""
        classes = job_raw.get("data", {}).get("files", {})
        return job_with(
            job_raw,
            {
                key: value
                for key, value in self.job_overrides.items()
                if not key.startswith("data.files.") or key.removeprefix("data.files.") in classes
            },
        )

    def binary_job(self, path: str) -> JobSpec:
        """A report.binary_jobs job as the report trains it: with job_overrides set."""
        return validate_job(self.overridden(read_yaml(path)), path)

    def base_point(self, base: dict, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The base job's values of the searched keys (with `changes` set), as Optuna params."""
        point = {}
        for key, dimension in self.space.items():
            value = (changes or {}).get(key, _get_path(base, key))
            if value is not _MISSING:
                point[key] = json.dumps(value) if dimension.encoded else value
        return point

    def first_points(self, base: dict) -> list[dict[str, Any]]:
        """The trials a new search starts with: the base job's (evaluate_base_first), then first_trials."""
        points = [self.base_point(base)] if self.evaluate_base_first else []
        return points + [self.base_point(base, changes) for changes in self.first_trials]


_MISSING = object()


def _get_path(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def job_with(base_raw: dict, values: dict[str, Any]) -> dict:
    """The base job with dotted keys set. A changed `*.name` or `*.kind` (e.g. another model family)
    drops the base's sibling keys, which belong to the old family; searched keys then fill it."""
    raw = json.loads(json.dumps(base_raw))
    discriminators = [k for k in values if k.rsplit(".", 1)[-1] in ("name", "kind") and "." in k]
    for key in discriminators:
        parent = key.rsplit(".", 1)[0]
        if _get_path(raw, key) != values[key]:
            set_path(raw, parent, {key.rsplit(".", 1)[1]: values[key]})
    for key, value in values.items():
        set_path(raw, key, value)
    return raw


def trial_values(spec: TuneSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna params (JSON text for list choices) back to job values."""
    return {key: spec.space[key].decode(value) for key, value in params.items() if key in spec.space}


def _problems(raw: Any, error: ValidationError, model: Any) -> list[str]:
    return [": ".join(problem(model, raw, item)) for item in error.errors()]


def _format(source: str, raw: Any, error: ValidationError) -> str:
    return "\n  ".join([f"{source}: invalid search", *_problems(raw, error, TuneSpec)])


def apply_search_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """`--set num_samples=4`, `--set scheduler.max_t=3`; under `space.`, `trial_overrides.` and
    `job_overrides.` the rest is one dotted job key (`--set trial_overrides.train.epochs=2`)."""
    raw = json.loads(json.dumps(raw))
    for item in overrides or []:
        if "=" not in item:
            raise SpecError(f"--set {item}: expected key=value")
        key, text = (part.strip() for part in item.split("=", 1))
        value = yaml.safe_load(text)
        head, _, rest = key.partition(".")
        if head in ("space", "trial_overrides", "job_overrides") and rest:
            raw.setdefault(head, {})[rest] = value
        else:
            set_path(raw, key, value)
    return raw


def load_search(path: str | Path, overrides: list[str] | None = None) -> tuple[TuneSpec, JobSpec, dict]:
    """Read and validate a search file and its base job; returns (spec, base job, base job as YAML dict).

    Every searched and trial-only key is checked against the base job now, so a typo fails before
    Ray starts, naming the search file and the key."""
    path = Path(path)
    raw = apply_search_overrides(read_yaml(path), overrides)
    raw.setdefault("name", path.stem)
    try:
        spec = TuneSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_format(str(path), raw, error)) from None
    base_raw = spec.overridden(read_yaml(spec.base_job))
    if spec.job_overrides:
        _check_job(base_raw, f"{path}: job_overrides")
    base = validate_job(base_raw, spec.base_job)

    known = _COMMON_METRICS + _EPOCH_METRICS[base.task.kind]
    for metric in spec.metrics:
        if metric not in known:
            raise SpecError(
                f"{path}: metric: '{metric}' is not reported by a {base.task.kind} job (one of {', '.join(known)})"
            )
    _check_binary_jobs(spec, base, path)
    for key, dimension in spec.space.items():
        values = {k: spec.space[k].example() for k in dimension.when or {}}
        _check_job(job_with(base_raw, {**values, key: dimension.example()}), f"{path}: space.{key}")
    _check_job(job_with(base_raw, spec.trial_overrides), f"{path}: trial_overrides")
    epochs = int(spec.trial_overrides.get("train.epochs", base.train.epochs))
    if spec.scheduler.grace_period > spec.scheduler.budget(epochs):
        raise SpecError(
            f"{path}: scheduler.grace_period: {spec.scheduler.grace_period} epochs, but trials train "
            f"{spec.scheduler.budget(epochs)}; ASHA needs grace_period <= the trials' epochs"
        )
    searched = set(spec.trial_overrides) & set(spec.space)
    if searched:
        raise SpecError(f"{path}: trial_overrides: {', '.join(sorted(searched))} is also searched")
    resolved = base.model_dump(mode="json", by_alias=True)
    for index, changes in enumerate(spec.first_trials):
        for key, value in changes.items():
            if key not in spec.space:
                raise SpecError(
                    f"{path}: first_trials[{index}]: '{key}' is not a searched key{did_you_mean(key, spec.space)}"
                )
            if not spec.space[key].can_fix(value):
                raise SpecError(f"{path}: first_trials[{index}]: {key}: {value!r} cannot be drawn from space.{key}")
    if spec.evaluate_base_first or spec.first_trials:
        for key, value in spec.base_point(resolved).items():
            if not spec.space[key].can_fix(spec.space[key].decode(value)):
                raise SpecError(
                    f"{path}: space.{key}: the base job's value {value!r} cannot be drawn from it, so the "
                    "first trials cannot start from the base job; add it or set evaluate_base_first: false "
                    "(and no first_trials)"
                )
    return spec, base, base_raw


def _check_binary_jobs(spec: TuneSpec, base: JobSpec, path: Path) -> None:
    """The report compares each binary job with the multiclass model on the same two classes: check
    the pairs before the search, not after it."""
    if spec.report.binary_jobs and base.task.kind != "multiclass":
        raise SpecError(f"{path}: report.binary_jobs: class pairs need a multiclass base job, not {base.task.kind}")
    classes, evaluation = base.data.class_names, spec.report.evaluation_files
    if evaluation and set(evaluation) != set(classes):
        raise SpecError(f"{path}: report.evaluation_files: needs globs for exactly the classes {classes}")
    for job_file in spec.report.binary_jobs:
        raw = spec.overridden(read_yaml(job_file))
        if spec.job_overrides:
            _check_job(raw, f"{path}: job_overrides", f"binary job {job_file}")
        job = validate_job(raw, job_file)
        names = job.data.class_names
        if job.task.kind != "binary" or len(names) != 2 or not set(names) <= set(classes):
            raise SpecError(
                f"{path}: report.binary_jobs: {job_file} is a {job.task.kind} job of classes {names}; "
                f"a pair needs a binary job of two of {classes}"
            )


def _check_job(raw: dict, where: str, job: str = "the base job") -> None:
    try:
        JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(f"{where}: makes {job} invalid ({'; '.join(_problems(raw, error, JobSpec))})") from None
