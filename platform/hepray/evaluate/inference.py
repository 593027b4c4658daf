"""Run a trained model over a dataset on Ray Data: an actor per model replica, loaded once.

`hepray run` evaluates its test split through this same path and `hepray predict` writes its
outputs from it, so evaluation and batch inference cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import ray
import torch

from hepray.data.batches import to_tensors
from hepray.models import build_model
from hepray.spec import JobSpec

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"  # written beside MODEL_FILE by `hepray run`
Engine = Literal["torch", "onnx"]


def save_model(path: Path, job: JobSpec, state_dict: dict) -> None:
    torch.save({"job": job.model_dump(mode="json", by_alias=True), "state_dict": state_dict}, path)


def load_job(path: str | Path) -> JobSpec:
    """The job a model was trained with, without building the model."""
    return JobSpec.model_validate(torch.load(path, map_location="cpu", weights_only=True)["job"])


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, JobSpec]:
    saved = torch.load(path, map_location=device, weights_only=True)
    job = JobSpec.model_validate(saved["job"])
    model = build_model(job.model, job.data.input_shapes(), job.n_outputs)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), job


class ModelPredictor:
    """Callable class for `map_batches`: model inputs in, raw `output` out, every other column
    passed on (the images are dropped, so only small columns leave the actor)."""

    def __init__(self, model_path: str, engine: Engine = "torch"):
        self.engine = engine
        if engine == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # Ray sets OMP_NUM_THREADS to the actor's CPUs
            wanted = ["CUDAExecutionProvider"] if torch.cuda.is_available() else []
            providers = [p for p in wanted if p in onnxruntime.get_available_providers()] + ["CPUExecutionProvider"]
            self.session = onnxruntime.InferenceSession(str(Path(model_path).with_name(ONNX_FILE)), options,
                                                        providers=providers)
            self.inputs = [node.name for node in self.session.get_inputs()]
        else:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model, job = load_model(model_path, self.device)
            self.inputs = list(job.data.inputs)

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        batch = to_tensors(table)  # sparse images densified exactly as for training
        if self.engine == "onnx":
            feeds = {name: np.ascontiguousarray(batch[name].numpy(), dtype=np.float32) for name in self.inputs}
            output = self.session.run(None, feeds)[0].astype(np.float32)
        else:
            with torch.no_grad():
                tensors = {name: batch[name].to(self.device) for name in self.inputs}
                output = self.model(tensors).float().cpu().numpy()
        carried = {key: value.numpy() for key, value in batch.items() if key not in self.inputs}
        return {**carried, "output": output}


def predict(dataset: ray.data.Dataset, model_path: Path, concurrency: int = 1, num_gpus: float = 0,
            batch_size: int = 1024, engine: Engine = "torch", num_cpus: float = 1) -> ray.data.Dataset:
    """The dataset with the model's raw outputs: `concurrency` actors, each loading the model once."""
    return dataset.map_batches(ModelPredictor, fn_constructor_kwargs={"model_path": str(model_path), "engine": engine},
                               compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=num_gpus,
                               num_cpus=num_cpus, batch_size=batch_size, batch_format="pyarrow")


def collect(dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    """Concatenate a (small) predicted dataset's columns in the driver."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in parts.items()}
