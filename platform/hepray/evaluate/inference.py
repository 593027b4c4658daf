"""Run a trained model over a dataset on Ray Data: an actor per model replica, loaded once.

`hepray run` evaluates its test split through this same path and `hepray predict` writes its
outputs from it, so evaluation and batch inference cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import ray
import torch

from hepray.data.batches import to_tensors
from hepray.data.events import OUTPUT
from hepray.models import build_model
from hepray.spec import JobSpec, SpecError, validate_job
from hepray.train.trainer import READ_CPUS, worker_cpus

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"  # written beside MODEL_FILE by `hepray run`
Engine = Literal["torch", "onnx"]


class ModelFileError(ValueError):
    """A model file hepray cannot use (not one, written for another model, or by an older
    hepray whose job no longer validates); the message names the file and why, on one line."""


def save_model(path: Path, job: JobSpec, state_dict: dict) -> None:
    torch.save({"job": job.model_dump(mode="json", by_alias=True), "state_dict": state_dict}, path)


def load_job(path: str | Path) -> JobSpec:
    """The job a model was trained with, without building the model."""
    return _saved_job(path, _read_saved(path, "cpu"))


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, JobSpec]:
    saved = _read_saved(path, device)
    job = _saved_job(path, saved)
    model = build_model(job.model, job.data.input_shapes(), job.n_outputs)
    _load_weights(model, saved["state_dict"], path)
    return model.to(device).eval(), job


def _read_saved(path: str | Path, device: str) -> dict:
    """model.pt's contents: tensors and JSON only (weights_only), so a model file cannot run code."""
    if not Path(path).is_file():
        raise ModelFileError(f"{path}: " + ("a directory, not a model file" if Path(path).is_dir() else "no such file"))
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if refused:
            reason = f"it holds Python objects ({refused.group(1)}), not only tensors and plain containers"
        elif "Weights only load failed" in str(error):
            reason = "torch.load cannot read it: not a PyTorch file"
        else:
            reason = f"torch.load cannot read it: {type(error).__name__}" + (
                f": {_first_line(error)}" if str(error) else ""
            )
        raise ModelFileError(f"{path}: not a model file written by `hepray run` ({reason})") from None
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("job"), dict)
        or not isinstance(saved.get("state_dict"), dict)
    ):
        raise ModelFileError(f"{path}: not a model file written by `hepray run` (no job and state_dict in it)")
    return saved


def _saved_job(path: str | Path, saved: dict) -> JobSpec:
    try:
        return validate_job(saved["job"], str(path))
    except SpecError as error:
        problems = "; ".join(line.strip() for line in str(error).splitlines()[1:])
        raise ModelFileError(
            f"{path}: the job saved in it does not validate with this hepray ({problems}); train the model again"
        ) from None


def _load_weights(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """The saved weights into the model the saved job describes; a mismatch is named, not dumped."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {tuple(getattr(state[key], 'shape', ()))} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and getattr(state[key], "shape", None) != value.shape
    ]
    problems = [
        f"{what}: {_some(names)}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("other shape (saved vs model)", shapes))
        if names
    ]
    try:
        if not problems:
            model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as error:
        problems = [_first_line(error)]
    if problems:
        raise ModelFileError(f"{path}: its weights do not fit the model its job describes ({'; '.join(problems)})")


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."


class ModelPredictor:
    """Callable class for `map_batches`: model inputs in, raw `output` out, every other column
    passed on (the images are dropped, so only small columns leave the actor)."""

    def __init__(self, model_path: str, engine: Engine = "torch"):
        self.engine = engine
        if engine == "onnx":
            self.session = onnx_session(Path(model_path).with_name(ONNX_FILE), gpu=torch.cuda.is_available())
            self.inputs = [node.name for node in self.session.get_inputs()]
        else:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model, job = load_model(model_path, self.device)
            self.inputs = list(job.data.inputs)

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        # sparse images densified as for training, on the model's device (ONNX Runtime reads numpy)
        batch = to_tensors(table, self.device if self.engine == "torch" else "cpu")
        if self.engine == "onnx":
            feeds = {name: np.ascontiguousarray(batch[name].numpy(), dtype=np.float32) for name in self.inputs}
            output = self.session.run(None, feeds)[0].astype(np.float32)
        else:
            with torch.no_grad():
                output = self.model({name: batch[name] for name in self.inputs}).float().cpu().numpy()
        carried = {key: value.cpu().numpy() for key, value in batch.items() if key not in self.inputs}
        return {**carried, OUTPUT: output}


def onnx_session(path: Path, gpu: bool = False):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # Ray sets OMP_NUM_THREADS to the actor's CPUs
    wanted = ["CUDAExecutionProvider"] if gpu else []
    providers = [p for p in wanted if p in onnxruntime.get_available_providers()] + ["CPUExecutionProvider"]
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime's own classes: InvalidProtobuf, Fail, NoSuchFile
        raise ModelFileError(f"{path}: ONNX Runtime cannot load it ({_first_line(error)})") from None


def check_model(model_path: str | Path, engine: Engine = "torch") -> None:
    """Load the model once here, on the CPU: an unusable file fails in the driver with its one-line
    ModelFileError, before any actor starts (Ray Data reports an actor's failed start at length)."""
    load_model(model_path)
    if engine == "onnx":
        onnx_session(Path(model_path).with_name(ONNX_FILE))


@dataclass(frozen=True)
class ActorPool:
    """The model actors of an evaluation or a `hepray predict`: how many, and each one's CPUs and GPUs."""

    size: int
    cpus: float
    gpus: float


def actor_pool(job: JobSpec, size: int | None = None, gpus: float | None = None) -> ActorPool:
    """Actors as the job trains: one per worker, each with a worker's CPUs (`auto` resolved on this
    cluster) and, when the job trains on GPUs the cluster has, its GPUs. Without GPUs, as many as
    leave one CPU for the read tasks (actors holding every CPU would starve the reads that feed them)."""
    scaling = job.scaling
    cpus = max(0.05, worker_cpus(scaling))
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    trains_on_gpus = scaling.use_gpu is True or (scaling.use_gpu == "auto" and has_gpus)
    if gpus is None:
        gpus = scaling.gpus_per_worker if trains_on_gpus else 0.0
    spare = int((ray.cluster_resources().get("CPU", 1) - READ_CPUS) // cpus)
    return ActorPool(size or max(1, min(scaling.num_workers, spare)), cpus, gpus)


def predict(
    dataset: ray.data.Dataset,
    model_path: Path,
    pool: ActorPool,
    batch_size: int = 1024,
    engine: Engine = "torch",
) -> ray.data.Dataset:
    """The dataset with the model's raw outputs: the pool's actors, each loading the model once."""
    check_model(model_path, engine)
    return dataset.map_batches(
        ModelPredictor,
        fn_constructor_kwargs={"model_path": str(model_path), "engine": engine},
        compute=ray.data.ActorPoolStrategy(size=pool.size),
        num_gpus=pool.gpus,
        num_cpus=pool.cpus,
        batch_size=batch_size,
        batch_format="pyarrow",
    )


def collect(dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    """Concatenate a (small) predicted dataset's columns in the driver."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in parts.items()}
