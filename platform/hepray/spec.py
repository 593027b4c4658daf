"""Job specification: YAML in, validated pydantic models out, clear errors naming the key path.

A job says which ROOT files to read, how to turn each event into named model inputs
(images and scalars), which model to train for which task, and how to evaluate it.
"""

from __future__ import annotations

import copy
import difflib
from itertools import combinations
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hepray.expr import Expression, ExpressionError
from hepray.inputs import InputSpec
from hepray.inputs.base import Norm, Strict
from hepray.models import ModelConfig
from hepray.samples import known_kinds


class SpecError(ValueError):
    """A job or search file that does not validate: the message names the file and key path."""


def did_you_mean(name: str, choices) -> str:
    """'; did you mean 'x'?' for the closest of `choices` to a misspelt name, or ''. A choice the
    name abbreviates (val_acc: val_accuracy) comes first."""
    choices = sorted(set(choices))
    close = [choice for choice in choices if choice.startswith(name)][:1] or difflib.get_close_matches(
        name, choices, n=1
    )
    return f"; did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------- data


class Generate(Strict):
    """Sample data to write when the job's files are missing (`hepray make-data KIND`)."""

    kind: str
    out: str = Field(description="directory the generator writes into")
    events: int = Field(4000, gt=0, description="events per class or sample")
    seed: int = 1
    format: Literal["ttree", "rntuple"] = Field("ttree", description="write TTrees or RNTuples")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in known_kinds():
            raise ValueError(
                f"unknown sample kind '{kind}' (known: {', '.join(known_kinds())}){did_you_mean(kind, known_kinds())}"
            )
        return kind


class Split(Strict):
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)
    seed: int = 1

    @model_validator(mode="after")
    def _fractions(self) -> Split:
        if self.val + self.test >= 1:
            raise ValueError("val + test must be < 1")
        return self


class TrackMomenta(Strict):
    """A regression target per track slot: each expression gives `tracks` values per event (one
    per slot, in the order of the branch), the true momentum components in GeV. The model
    predicts (px, py, pz) for every slot, slot after slot."""

    tracks: int = Field(gt=0)
    px: str
    py: str
    pz: str


class Reweight(Strict):
    """Weaver-style kinematic reweighting, for training: per class, each event's weight is
    multiplied by target(bin) / class(bin) in one or two variables, from the train split's
    weighted histograms, so the classes' spectra (e.g. jet pT, eta) cannot tell them apart."""

    vars: list[str] = Field(min_length=1, max_length=2, description="one or two per-event branches or expressions")
    bins: list[list[float]] = Field(description="bin edges per variable; values outside go to the edge bins")
    target: str = Field("flat", description="flat, or a class name whose spectrum the others are weighted to")
    max_weight: float = Field(10.0, gt=0, description="largest reweighting factor (rare bins are capped)")

    @model_validator(mode="after")
    def _edges(self) -> Reweight:
        if len(self.bins) != len(self.vars):
            raise ValueError("bins: one list of edges per variable in vars")
        for edges in self.bins:
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError("bins: each list needs two or more increasing edges")
        return self


class Objects(Strict):
    """Several objects per event (NanoAOD's electrons, Delphes' jets): each of an event's first
    `max_per_event` objects is one example. A branch holding a list per event with as many values
    as `count` in every entry read is per object (read at the object's index); any other branch
    is per event, shared by its objects. The split stays per event."""

    count: str = Field(description="the branch holding each event's number of objects, e.g. nElectron")
    max_per_event: int | None = Field(None, gt=0, description="the first N objects of each event, in file order")


class DataSpec(Strict):
    files: dict[str, list[str]] | list[str] = Field(
        description="class -> globs, one class per group with labels 0, 1, ... in order (binary: the "
        "second group is the signal), or plain globs with label_branch"
    )
    tree: str | dict[str, str] = Field(
        "events", description="the TTree or RNTuple, or class group -> its tree (signal: TreeS, background: TreeB)"
    )
    objects: Objects | None = Field(None, description="one example per object: {count: nElectron, max_per_event: 2}")
    label_branch: str | None = None
    classes: list[str] | None = Field(None, description="class names for label_branch values 0..n-1")
    generate: Generate | None = None
    cut: str | None = None
    target: str | TrackMomenta | None = Field(
        None, description="regression target: a branch or expression, or {tracks, px, py, pz} for track momenta"
    )
    observers: list[str] = []
    split: Split = Split()
    weight: str | None = Field(
        None,
        description="each event's weight: a branch or expression (negative allowed), used in the loss and "
        "in every evaluation number",
    )
    reweight: Reweight | None = Field(
        None, description="training weights that flatten (or match) the classes' spectra in one or two variables"
    )
    on_error: Literal["fail", "skip"] = "fail"
    events_per_task: int = Field(20000, gt=0)
    inputs: dict[str, InputSpec] = Field(min_length=1)
    augment: list[Literal["hflip", "vflip", "phi_roll"]] = []

    @field_validator("files", mode="before")
    @classmethod
    def _globs_as_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("tree")
    @classmethod
    def _tree_per_group(cls, tree: str | dict[str, str], info: ValidationInfo) -> str | dict[str, str]:
        files = info.data.get("files")
        if isinstance(tree, str) or files is None:
            return tree
        if not isinstance(files, dict):
            raise ValueError("a tree per class group needs data.files as class -> globs")
        if set(tree) != set(files):
            missing, unknown = [g for g in files if g not in tree], [g for g in tree if g not in files]
            raise ValueError(
                "one tree per class group of data.files"
                + (f"; no tree for {', '.join(missing)}" if missing else "")
                + (f"; {', '.join(unknown)} is not a class group{did_you_mean(unknown[0], files)}" if unknown else "")
            )
        return tree

    def tree_of(self, label: int | None) -> str:
        """The tree of a class group (by label); files without one (extra samples, `hepray predict`)
        read the single tree of a mapping that names one."""
        if isinstance(self.tree, str):
            return self.tree
        if label is not None:
            return self.tree[self.class_names[label]]
        if len(set(self.tree.values())) == 1:
            return next(iter(self.tree.values()))
        raise SpecError(
            f"data.tree names a tree per class group ({self.trees_text()}); files outside the class groups "
            "(evaluate.samples, hepray predict) need one: give data.tree one name, or hepray predict --tree NAME"
        )

    def trees_text(self) -> str:
        """The tree, or each class group's, as `hepray validate` prints it."""
        if isinstance(self.tree, str):
            return f"tree '{self.tree}'"
        return "trees " + ", ".join(f"{group}: '{self.tree[group]}'" for group in self.class_names)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the shape of one event's tensor (the model is built from these)."""
        return {name: tuple(spec.shape()) for name, spec in self.inputs.items()}

    @property
    def class_names(self) -> list[str]:
        if isinstance(self.files, dict):
            return list(self.files)
        return list(self.classes or [])

    def expressions(self) -> list[tuple[str, str]]:
        """(key path, expression) for every expression of branches the data names."""
        found = [("data.cut", self.cut)] if self.cut else []
        if isinstance(self.target, TrackMomenta):
            found += [(f"data.target.{axis}", getattr(self.target, axis)) for axis in ("px", "py", "pz")]
        elif self.target is not None:
            found.append(("data.target", self.target))
        found += [("data.observers", text) for text in self.observers]
        if self.weight is not None:
            found.append(("data.weight", self.weight))
        if self.reweight is not None:
            found += [("data.reweight.vars", text) for text in self.reweight.vars]
        for name, spec in self.inputs.items():
            if spec.kind == "scalars":
                found += [(f"data.inputs.{name}.branches", text) for text in spec.branches]
            elif spec.kind == "points":
                found += [(f"data.inputs.{name}.features", text) for text in spec.features]
                found += [(f"data.inputs.{name}.sort_by", spec.sort_by)] if spec.sort_by else []
        return found


# ---------------------------------------------------------------- task, training, scaling


def class_pairs(n_classes: int) -> list[tuple[int, int]]:
    """Every class pair (a, b), a < b, in class-index order: the order of the pair heads' outputs
    (task.pair_heads) and of the test_auc_<a>_vs_<b> metrics."""
    return list(combinations(range(n_classes), 2))


class TaskSpec(Strict):
    kind: Literal["binary", "multiclass", "regression"]
    class_weights: list[float] | None = None
    balance: bool = Field(
        False,
        description="class weights from the weighted class totals of the train split, "
        "so every class counts the same in the loss",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="classifiers: the target is 1 - s on the true class plus s spread evenly over the classes "
        "(binary: targets s/2 and 1 - s/2), as torch's cross_entropy(label_smoothing=s); 0 = off",
    )
    focal_gamma: float = Field(
        0.0,
        ge=0,
        description="classifiers: focal loss, each class's cross-entropy term times (1 - p)^gamma, so events "
        "already classified well count less; 0 = cross-entropy",
    )
    pair_heads: bool = Field(
        False,
        description="multiclass: one more output per class pair (a, b), a < b, trained as a binary a-vs-b "
        "logit on the events of those two classes; the pair's AUC (test_auc_<a>_vs_<b>) is then its score",
    )
    loss: Literal["mse", "huber", "relative"] = "mse"
    conservation_weight: float = Field(
        0.0,
        ge=0,
        description="track momenta: lambda of the loss term lambda * |sum of the event's predicted "
        "momenta - initial_momentum|^2 (GeV^2); 0 = off",
    )
    initial_momentum: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="track momenta: the initial state's (px, py, pz) in GeV, which the tracks sum to"
    )

    @model_validator(mode="after")
    def _classifier_losses(self) -> TaskSpec:
        if self.kind == "regression" and (self.label_smoothing or self.focal_gamma):
            raise ValueError("label_smoothing and focal_gamma shape a classifier's loss; a regression has none")
        if self.pair_heads and self.kind != "multiclass":
            raise ValueError(f"pair_heads: a head per class pair needs a multiclass task, not {self.kind}")
        return self


class EarlyStopping(Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, gt=0)


class TrainSpec(Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    weight_norm: Literal["batch", "global"] = Field(
        "batch",
        description="event-weighted loss: divided by the batch's summed |weight| (batch) or by the batch size "
        "times the train split's mean |weight| (global: batches with more weight count more)",
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["none", "cosine", "onecycle", "plateau"] = "none"
    grad_clip: float | None = Field(None, gt=0)
    early_stopping: EarlyStopping | None = None
    keep_checkpoints: int = Field(2, gt=0)
    seed: int = 1
    shuffle_buffer: int = Field(
        2048,
        ge=0,
        description="events each worker mixes at a time, on top of the read tasks' shuffle: it densifies "
        "this many in one go in a random order (seeded by seed, the epoch and the window's first entry) "
        "and cuts them into batches; fewer if their dense inputs would pass 32 MB; < batch_size: no mixing",
    )
    stall_seconds: float = Field(
        300.0, gt=0, description="stop when no batch arrives for this long while no CPU is free for the read tasks"
    )
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="mixed precision: auto = bf16 on GPUs that have it, fp16 with a grad scaler on older "
        "GPUs, off on CPU; bf16 also runs on CPU; fp16 without a GPU falls back to float32, saying so",
    )
    channels_last: bool = Field(
        False, description="CNNs and 2-D images in channels-last memory (faster on GPUs; on CPU: benchmarks/RESULTS.md)"
    )
    sync_batchnorm: bool = Field(
        False, description="BatchNorm statistics over all workers' batches (SyncBatchNorm: CUDA and >1 worker only)"
    )


class ScalingSpec(Strict):
    num_workers: int = Field(1, gt=0)
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="auto: up to 1 CPU per worker, leaving one CPU per node for Ray Data's read tasks"
    )
    gpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(1, ge=-1)


class CutsBaseline(Strict):
    """Binary: a rectangular cut on each variable, tuned on the train split for the most background
    rejection at `efficiency` signal efficiency (study 000's cut-based selection)."""

    kind: Literal["cuts"]
    vars: dict[str, Literal["below", "above"]] = Field(
        min_length=1, max_length=3, description="branch or expression -> which side passes"
    )
    efficiency: float = Field(0.9, gt=0, lt=1)


class LinearBaseline(Strict):
    """Regression: target ~ a * expr + b, fitted on the train split (a linear calibration)."""

    kind: Literal["linear"]
    expr: str


class GBDTBaseline(Strict):
    """Any task: scikit-learn's HistGradientBoosting on the features, fitted on the train split."""

    kind: Literal["gbdt"]
    features: list[str] = Field(min_length=1)
    max_iter: int = Field(200, gt=0)
    max_train_events: int = Field(200_000, gt=0)


def _baseline_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "expression"
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


Baseline = Annotated[
    Annotated[str, Tag("expression")]
    | Annotated[CutsBaseline, Tag("cuts")]
    | Annotated[LinearBaseline, Tag("linear")]
    | Annotated[GBDTBaseline, Tag("gbdt")],
    Discriminator(_baseline_kind),
]


class Robustness(Strict):
    """Study 000's robustness checks: the trained model, weights frozen, on a re-drawn split and
    with other input norms; metrics keyed `robust_split_*` and `robust_norm_<norm>_*`."""

    split_seed: int | None = Field(None, description="test split drawn with this seed instead")
    norms: list[Norm] = []


class EvaluateSpec(Strict):
    bins: dict[str, list[float]] = {}
    baselines: dict[str, Baseline] = Field(
        {}, description="name -> an expression (a classifier score or a target estimate) or a fitted baseline"
    )
    samples: dict[str, list[str]] = Field(
        {}, description="name -> globs of extra samples evaluated with the trained model (all their events)"
    )
    robustness: Robustness | None = None
    energy: str | None = Field(None, description="regression: observer holding the true energy for resolution fits")
    plots: bool = True
    unweighted: bool = Field(False, description="with data.weight: the unweighted numbers too (test_unweighted_*)")
    permutation_importance: bool = Field(
        False, description="importance_<scalar>: the test metric lost when each scalar input column is shuffled"
    )

    @field_validator("samples", mode="before")
    @classmethod
    def _sample_globs_as_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value


# What the training loop reports each epoch (train/loop.py): the losses, and Task.epoch_metrics
# (train/tasks.py) of the train_eval and val events; tests/test_preflight.py checks they agree.
EPOCH_LOSSES = ("train_loss", "train_eval_loss", "val_loss")
EPOCH_TASK_METRICS = {
    "binary": ("auc", "accuracy"),
    "multiclass": ("auc_macro", "auc_pair_min", "accuracy"),
    "regression": ("response", "resolution"),
    "track_momenta": ("response", "resolution", "imbalance"),
}
# Per-track observers a track-momentum evaluation adds (evaluate/momentum.py track_observers).
TRACK_OBSERVERS = ("track_pt", "track_p", "track_slot")


class JobSpec(Strict):
    name: str
    data: DataSpec
    model: ModelConfig
    task: TaskSpec
    train: TrainSpec = TrainSpec()
    scaling: ScalingSpec = ScalingSpec()
    evaluate: EvaluateSpec = EvaluateSpec()

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: str) -> str:
        # The name is a directory (runs/<name>) and part of cluster job ids.
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(f"'{name}' is not a safe directory name: one path component, no '/', not '..', not empty")
        return name

    def expressions(self) -> list[tuple[str, str]]:
        """(key path, expression) for every expression of branches the job names: the data's and
        the baselines' (an expression, cut variables, a linear calibration's, GBDT features)."""
        found = self.data.expressions()
        for name, baseline in self.evaluate.baselines.items():
            key = f"evaluate.baselines.{name}"
            if isinstance(baseline, str):
                found.append((key, baseline))
            elif isinstance(baseline, CutsBaseline):
                found += [(f"{key}.vars", text) for text in baseline.vars]
            elif isinstance(baseline, LinearBaseline):
                found.append((f"{key}.expr", baseline.expr))
            else:
                found += [(f"{key}.features", text) for text in baseline.features]
        return found

    def epoch_metrics(self) -> list[str]:
        """The metrics the training loop reports each epoch for this task (train/loop.py, Task.epoch_metrics)."""
        kind = "track_momenta" if isinstance(self.data.target, TrackMomenta) else self.task.kind
        return [
            *EPOCH_LOSSES,
            *(f"{split}_{metric}" for split in ("train_eval", "val") for metric in EPOCH_TASK_METRICS[kind]),
        ]

    def observer_names(self) -> list[str]:
        """What evaluate.bins and evaluate.energy can name: the observers, and for track momenta
        the per-track truth evaluate/momentum.py adds."""
        return [*self.data.observers, *(TRACK_OBSERVERS if isinstance(self.data.target, TrackMomenta) else ())]

    @model_validator(mode="after")
    def _task_matches_data(self) -> JobSpec:
        n_classes = len(self.data.class_names)
        if self.task.kind == "regression":
            if self.data.target is None:
                raise ValueError("data.target: a regression task needs a target branch or expression")
            if isinstance(self.data.target, TrackMomenta):
                self._check_track_momenta()
        else:
            if n_classes < 2:
                raise ValueError(
                    "data.files: a classifier needs two or more label groups (or label_branch and classes)"
                )
            if isinstance(self.data.files, list) and self.data.label_branch is None:
                raise ValueError("data.label_branch: plain file globs need a label branch")
            if self.task.kind == "binary" and n_classes != 2:
                raise ValueError(f"task.kind: binary needs 2 classes, data has {n_classes}")
            if self.task.class_weights is not None and len(self.task.class_weights) != n_classes:
                raise ValueError("task.class_weights: one weight per class")
            if self.task.class_weights is not None and self.task.balance:
                raise ValueError("task.balance: sets the class weights from the train split; drop task.class_weights")
        reweight = self.data.reweight
        if reweight is not None:
            if self.task.kind == "regression":
                raise ValueError("data.reweight: reweights classes; a regression has none")
            if reweight.target != "flat" and reweight.target not in self.data.class_names:
                raise ValueError(f"data.reweight.target: flat or one of the classes {self.data.class_names}")
        if self.task.balance and self.task.kind == "regression":
            raise ValueError("task.balance: balances classes; a regression has none")
        if self.task.conservation_weight > 0 and not (
            self.task.kind == "regression" and isinstance(self.data.target, TrackMomenta)
        ):
            raise ValueError(
                "task.conservation_weight: needs a regression of track momenta to sum "
                "(data.target: {tracks, px, py, pz})"
            )
        for name, baseline in self.evaluate.baselines.items():
            kind = getattr(baseline, "kind", "expression")
            if kind == "cuts" and self.task.kind != "binary":
                raise ValueError(f"evaluate.baselines.{name}: cuts need a binary task")
            if kind == "linear" and self.task.kind != "regression":
                raise ValueError(f"evaluate.baselines.{name}: a linear calibration needs a regression task")
        if self.evaluate.samples and self.task.kind != "regression" and self.data.label_branch is None:
            raise ValueError("evaluate.samples: extra samples of a classifier need data.label_branch for their labels")
        robustness = self.evaluate.robustness
        if robustness and robustness.norms and not any(hasattr(i, "norm") for i in self.data.inputs.values()):
            raise ValueError("evaluate.robustness.norms: the job has no image input with a norm")
        if self.evaluate.permutation_importance and not any(i.kind == "scalars" for i in self.data.inputs.values()):
            raise ValueError("evaluate.permutation_importance: the job has no scalars input to permute")
        return self

    def _check_track_momenta(self) -> None:
        """What a per-track momentum vector target cannot go with."""
        if self.task.loss == "relative":
            raise ValueError(
                "task.loss: relative divides by the target; momentum components cross zero (use mse or huber)"
            )
        if self.data.augment:
            raise ValueError(
                "data.augment: a mirrored image would need mirrored momenta; track momenta take no augmentation"
            )
        if self.evaluate.baselines:
            raise ValueError("evaluate.baselines: baselines give one number per event, not track momenta")
        if self.evaluate.permutation_importance:
            raise ValueError("evaluate.permutation_importance: not available for track momenta")

    @model_validator(mode="after")
    def _expressions_parse(self) -> JobSpec:
        errors = []
        for key, text in self.expressions():
            try:
                Expression(text)
            except ExpressionError as error:
                errors.append(f"{key}: {error}")
        if errors:
            raise ValueError("\n  ".join(errors))
        return self

    @model_validator(mode="after")
    def _named_things_exist(self) -> JobSpec:
        """The early-stopping metric is reported each epoch; bins and energy are observers."""
        rule, metrics = self.train.early_stopping, self.epoch_metrics()
        if rule is not None and rule.metric not in metrics:
            raise ValueError(
                f"train.early_stopping.metric: '{rule.metric}' is not reported each epoch by this "
                f"{self.task.kind} job (one of: {', '.join(metrics)}){did_you_mean(rule.metric, metrics)}"
            )
        observers = self.observer_names()
        known = f"data.observers: {', '.join(self.data.observers) or 'none'}"
        if isinstance(self.data.target, TrackMomenta):
            known += f"; per track: {', '.join(TRACK_OBSERVERS)}"
        for key, name in [
            *((f"evaluate.bins.{k}", k) for k in self.evaluate.bins),
            ("evaluate.energy", self.evaluate.energy),
        ]:
            if name is not None and name not in observers:
                raise ValueError(f"{key}: '{name}' is not an observer ({known}){did_you_mean(name, observers)}")
        return self

    @property
    def n_outputs(self) -> int:
        """The model's outputs: one per class (then one per class pair with task.pair_heads), the
        track slots' momenta, or one; every model family builds its last layer from this."""
        if self.task.kind == "multiclass":
            n_classes = len(self.data.class_names)
            return n_classes + (len(class_pairs(n_classes)) if self.task.pair_heads else 0)
        if isinstance(self.data.target, TrackMomenta):
            return 3 * self.data.target.tracks
        return 1


# ---------------------------------------------------------------- loading


def set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: '{key}' is not a mapping")
    node[keys[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b=value` overrides; values are parsed as YAML (numbers, lists, booleans)."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise SpecError(f"--set {item}: expected key=value")
        key, text = item.split("=", 1)
        set_path(raw, key.strip(), yaml.safe_load(text))
    return raw


ERROR_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def yaml_path(raw: Any, loc: tuple) -> str:
    """The key path as the user wrote it: pydantic's union tags (not keys in the YAML) dropped."""
    parts, node = [], raw
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif not last:
            continue
        parts.append(str(part))
    return ".".join(parts) or "(top)"


def accepted_keys(model: Any, loc: tuple) -> list[str]:
    """The keys a model accepts at an error's location (its path without the unknown key), found by
    following the path through fields, dicts, lists and unions (pydantic names a union member by its
    tag, e.g. `kind: etaphi`, or its class); [] where the path cannot be followed."""
    node = model
    for part in loc:
        node = _field_type(node, part)
        if node is None:
            return []
    node = _unwrapped(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [field.alias or name for name, field in node.model_fields.items()]
    return []


def _unwrapped(node: Any) -> Any:
    """The type under Annotated, and the one model of an Optional."""
    while get_origin(node) is Annotated:
        node = get_args(node)[0]
    if get_origin(node) in (Union, UnionType):
        members = [member for member in get_args(node) if member is not type(None)]
        if len(members) == 1:
            return _unwrapped(members[0])
    return node


def _field_type(node: Any, part: Any) -> Any:
    node = _unwrapped(node)
    origin = get_origin(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    if origin in (Union, UnionType):
        for member in map(_unwrapped, get_args(node)):
            literals = [
                get_args(field.annotation)
                for field in getattr(member, "model_fields", {}).values()
                if get_origin(field.annotation) is Literal
            ]
            if part == getattr(member, "__name__", None) or any(part in values for values in literals):
                return member
        return None
    if origin is dict:
        return get_args(node)[1]
    if origin is list:
        return get_args(node)[0]
    return None


def problem(model: Any, raw: Any, item: dict) -> tuple[str, str]:
    """(key path as written, message) of one pydantic error; an unknown key gets a "did you mean"
    from the keys accepted where it was written."""
    template = ERROR_MESSAGES.get(item["type"])
    message = template.format(**item.get("ctx", {})) if template else item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message += did_you_mean(str(item["loc"][-1]), accepted_keys(model, item["loc"][:-1]))
    return yaml_path(raw, item["loc"]), message


def format_validation_error(source: str, raw: Any, error: ValidationError) -> str:
    lines = [f"{source}: invalid job"]
    for item in error.errors():
        path, message = problem(JobSpec, raw, item)
        # A whole-job check's message starts with the key path it is about.
        lines.append(f"  {message}" if path == "(top)" else f"  {path}: {message}")
    return "\n".join(lines)


def validate_job(raw: dict, source: str = "<job>") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(format_validation_error(source, raw, error)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such job file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a job file must be a mapping of keys")
    return raw


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job file; relative data paths stay relative to the cwd."""
    raw = apply_overrides(read_yaml(path), overrides)
    return validate_job(raw, str(path))


def dump_job(job: JobSpec, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(job.model_dump(mode="json", by_alias=True), sort_keys=False))
