"""Job specification: YAML in, validated pydantic models out, clear errors naming the key path.

A job says which ROOT files to read, how to turn each event into named model inputs
(images and scalars), which model to train for which task, and how to evaluate it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from hepray.models import ModelConfig


class SpecError(ValueError):
    """A job or search file that does not validate: the message names the file and key path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Per event, over all channels; log1p is sign(x) * log1p(|x|) so negative noise stays finite.
Norm = Literal["none", "l1", "l2", "max", "log1p"]


# ---------------------------------------------------------------- model inputs


class PointSet(Strict):
    """Jagged per-event points: branch names of their eta, phi and value (energy, pT)."""

    eta: str
    phi: str
    value: str


class EtaPhiCenter(Strict):
    eta: str
    phi: str


class EtaPhiImage(Strict):
    """Calorimeter towers around a centre on a centred eta-phi grid (study 000).

    Pixel of a point: floor(d / cell + size / 2), d the offset from the centre, phi offsets
    wrapped into [-pi, pi). One channel per point set, or per value of `channel_branch`.
    """

    kind: Literal["etaphi"]
    points: list[PointSet] = Field(min_length=1)
    center: EtaPhiCenter | Literal["centroid"] = "centroid"
    size: int = Field(47, gt=0)
    cell: float = Field(0.0174, gt=0, description="pixel size in eta (and in phi unless cell_phi is given)")
    cell_phi: float | None = Field(None, gt=0, description="pixel size in phi, e.g. 2*pi/360 for a 360-cell ring")
    channel_branch: str | None = None
    n_channels: int | None = Field(None, gt=0, description="number of channel_branch values, 0..n-1")
    norm: Norm = "none"

    @model_validator(mode="after")
    def _channels(self) -> "EtaPhiImage":
        if self.channel_branch is not None:
            if len(self.points) != 1:
                raise ValueError("channel_branch needs exactly one point set")
            if self.n_channels is None:
                raise ValueError("channel_branch needs n_channels")
        elif self.n_channels is not None:
            raise ValueError("n_channels goes with channel_branch (otherwise one channel per point set)")
        return self

    @property
    def phi_cell(self) -> float:
        return self.cell_phi or self.cell

    @property
    def channels(self) -> int:
        return self.n_channels if self.channel_branch else len(self.points)

    def shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)


class JetImage(Strict):
    """Jet constituents in the jet frame (study 003), with optional standard preprocessing."""

    kind: Literal["jet"]
    eta: str
    phi: str
    value: str
    size: int = Field(33, gt=0, description="odd, so the jet axis is a pixel centre after translate")
    extent: float = Field(0.825, gt=0, description="half-width of the image in eta and phi")
    preprocess: set[Literal["translate", "rotate", "flip"]] = Field(
        {"translate", "rotate", "flip"}, description="always applied in the order translate, rotate, flip")
    norm: Norm = "l1"

    def shape(self) -> tuple[int, ...]:
        return (1, self.size, self.size)


class HitsXYImage(Strict):
    """Drift-chamber hits in the transverse plane (study 002): X=(XE+XW)/2, Y=(YE+YW)/2.

    Encodings as the study defines them: binary (1 per hit pixel), total (every hit pixel
    carries the event's summed energy), average (summed energy / number of hits), per_hit
    (each pixel its hits' own energy).
    """

    kind: Literal["hits_xy"]
    xe: str = "XE"
    xw: str = "XW"
    ye: str = "YE"
    yw: str = "YW"
    energy: str = "RC"
    size: int = Field(64, gt=0)
    extent: float = Field(810.0, gt=0, description="half-width of the square window in the hits' length unit")
    encoding: Literal["binary", "total", "average", "per_hit"] = "per_hit"
    norm: Norm = "none"
    track_branch: str | None = Field(
        None, description="per-hit 1-based track index (the study's TRK): channel k holds the hits of track k + 1 "
                          "alone; hits of no track slot (0: noise) are dropped")
    tracks: int | None = Field(None, gt=0, description="track slots (channels) with track_branch")

    @model_validator(mode="after")
    def _track_channels(self) -> "HitsXYImage":
        if (self.track_branch is None) != (self.tracks is None):
            raise ValueError("track_branch and tracks go together (one channel per track slot)")
        return self

    def shape(self) -> tuple[int, ...]:
        return (self.tracks or 1, self.size, self.size)


class VoxelPoints(Strict):
    x: str
    y: str
    z: str
    value: str


class VoxelImage(Strict):
    """3D grids (study 001): a flat fixed-length cell branch reshaped to `shape`, or points binned."""

    kind: Literal["voxels"]
    shape_: tuple[int, int, int] = Field(alias="shape")
    cells: str | None = None
    points: VoxelPoints | None = None
    range: list[tuple[float, float]] | None = Field(None, description="(low, high) per axis for points")
    norm: Norm = "none"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_source(self) -> "VoxelImage":
        if (self.cells is None) == (self.points is None):
            raise ValueError("give exactly one of cells or points")
        if self.points is not None and (self.range is None or len(self.range) != 3):
            raise ValueError("points need range: [[xlo, xhi], [ylo, yhi], [zlo, zhi]]")
        if self.range is not None and any(low >= high for low, high in self.range):
            raise ValueError("range: each (low, high) needs low < high")
        if any(n <= 0 for n in self.shape_):
            raise ValueError("shape: every size must be > 0")
        return self

    def shape(self) -> tuple[int, ...]:
        return (1, *self.shape_)


class Scalars(Strict):
    """Per-event scalar branches (or expressions of them) passed beside the images."""

    kind: Literal["scalars"]
    branches: list[str] = Field(min_length=1)

    def shape(self) -> tuple[int, ...]:
        return (len(self.branches),)


InputSpec = Annotated[
    Union[EtaPhiImage, JetImage, HitsXYImage, VoxelImage, Scalars], Field(discriminator="kind")
]


# ---------------------------------------------------------------- data


class Generate(Strict):
    """Sample data to write when the job's files are missing (`hepray make-data KIND`)."""

    kind: str
    out: str = Field(description="directory the generator writes into")
    events: int = Field(4000, gt=0, description="events per class or sample")
    seed: int = 1
    format: Literal["ttree", "rntuple"] = Field("ttree", description="write TTrees or RNTuples")


class Split(Strict):
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)
    seed: int = 1

    @model_validator(mode="after")
    def _fractions(self) -> "Split":
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


class DataSpec(Strict):
    files: dict[str, list[str]] | list[str] = Field(
        description="class -> globs, one class per group with labels 0, 1, ... in order (binary: the "
                    "second group is the signal), or plain globs with label_branch"
    )
    tree: str = "events"
    label_branch: str | None = None
    classes: list[str] | None = Field(None, description="class names for label_branch values 0..n-1")
    generate: Generate | None = None
    cut: str | None = None
    target: str | TrackMomenta | None = Field(
        None, description="regression target: a branch or expression, or {tracks, px, py, pz} for track momenta")
    observers: list[str] = []
    split: Split = Split()
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

    @property
    def class_names(self) -> list[str]:
        if isinstance(self.files, dict):
            return list(self.files)
        return list(self.classes or [])


# ---------------------------------------------------------------- task, training, scaling


class TaskSpec(Strict):
    kind: Literal["binary", "multiclass", "regression"]
    class_weights: list[float] | None = None
    loss: Literal["mse", "huber", "relative"] = "mse"
    conservation_weight: float = Field(
        0.0, ge=0, description="track momenta: lambda of the loss term lambda * |sum of the event's predicted "
                               "momenta - initial_momentum|^2 (GeV^2); 0 = off")
    initial_momentum: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="track momenta: the initial state's (px, py, pz) in GeV, which the tracks sum to")


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
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["none", "cosine", "onecycle", "plateau"] = "none"
    grad_clip: float | None = Field(None, gt=0)
    early_stopping: EarlyStopping | None = None
    keep_checkpoints: int = Field(2, gt=0)
    seed: int = 1


class ScalingSpec(Strict):
    num_workers: int = Field(1, gt=0)
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(1, ge=-1)


class CutsBaseline(Strict):
    """Binary: a rectangular cut on each variable, tuned on the train split for the most background
    rejection at `efficiency` signal efficiency (study 000's cut-based selection)."""

    kind: Literal["cuts"]
    vars: dict[str, Literal["below", "above"]] = Field(min_length=1, max_length=3,
                                                       description="branch or expression -> which side passes")
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
    Union[Annotated[str, Tag("expression")], Annotated[CutsBaseline, Tag("cuts")],
          Annotated[LinearBaseline, Tag("linear")], Annotated[GBDTBaseline, Tag("gbdt")]],
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
        {}, description="name -> an expression (a classifier score or a target estimate) or a fitted baseline")
    samples: dict[str, list[str]] = Field(
        {}, description="name -> globs of extra samples evaluated with the trained model (all their events)")
    robustness: Robustness | None = None
    energy: str | None = Field(None, description="regression: observer holding the true energy for resolution fits")
    plots: bool = True
    permutation_importance: bool = Field(
        False, description="importance_<scalar>: the test metric lost when each scalar input column is shuffled")

    @field_validator("samples", mode="before")
    @classmethod
    def _sample_globs_as_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value


class JobSpec(Strict):
    name: str
    data: DataSpec
    model: ModelConfig
    task: TaskSpec
    train: TrainSpec = TrainSpec()
    scaling: ScalingSpec = ScalingSpec()
    evaluate: EvaluateSpec = EvaluateSpec()

    @model_validator(mode="after")
    def _task_matches_data(self) -> "JobSpec":
        n_classes = len(self.data.class_names)
        if self.task.kind == "regression":
            if self.data.target is None:
                raise ValueError("data.target: a regression task needs a target branch or expression")
            if isinstance(self.data.target, TrackMomenta):
                self._check_track_momenta()
        else:
            if n_classes < 2:
                raise ValueError("data.files: a classifier needs two or more label groups (or label_branch and classes)")
            if isinstance(self.data.files, list) and self.data.label_branch is None:
                raise ValueError("data.label_branch: plain file globs need a label branch")
            if self.task.kind == "binary" and n_classes != 2:
                raise ValueError(f"task.kind: binary needs 2 classes, data has {n_classes}")
            if self.task.class_weights is not None and len(self.task.class_weights) != n_classes:
                raise ValueError("task.class_weights: one weight per class")
        if self.task.conservation_weight > 0 and not (self.task.kind == "regression"
                                                      and isinstance(self.data.target, TrackMomenta)):
            raise ValueError("task.conservation_weight: needs a regression of track momenta to sum "
                             "(data.target: {tracks, px, py, pz})")
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
            raise ValueError("task.loss: relative divides by the target; momentum components cross zero (use mse or huber)")
        if self.data.augment:
            raise ValueError("data.augment: a mirrored image would need mirrored momenta; track momenta take no augmentation")
        if self.evaluate.baselines:
            raise ValueError("evaluate.baselines: baselines give one number per event, not track momenta")
        if self.evaluate.permutation_importance:
            raise ValueError("evaluate.permutation_importance: not available for track momenta")

    @property
    def n_outputs(self) -> int:
        if self.task.kind == "multiclass":
            return len(self.data.class_names)
        if isinstance(self.data.target, TrackMomenta):
            return 3 * self.data.target.tracks
        return 1


# ---------------------------------------------------------------- loading


def _set_path(tree: dict, dotted: str, value: Any) -> None:
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
        _set_path(raw, key.strip(), yaml.safe_load(text))
    return raw


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def _yaml_path(raw: Any, loc: tuple) -> str:
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


def format_validation_error(source: str, raw: Any, error: ValidationError) -> str:
    lines = [f"{source}: invalid job"]
    for item in error.errors():
        template = _MESSAGES.get(item["type"])
        message = template.format(**item.get("ctx", {})) if template else item["msg"].removeprefix("Value error, ")
        lines.append(f"  {_yaml_path(raw, item['loc'])}: {message}")
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
