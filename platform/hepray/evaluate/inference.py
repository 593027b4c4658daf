"""Run a trained model over a dataset on Ray Data: an actor per model replica, loaded once.

`hepray run` evaluates its test split through this same path, so evaluation and batch
inference cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray
import torch

from hepray.data.pipeline import input_shapes
from hepray.models import build_model
from hepray.spec import JobSpec

MODEL_FILE = "model.pt"


def save_model(path: Path, job: JobSpec, state_dict: dict) -> None:
    torch.save({"job": job.model_dump(mode="json", by_alias=True), "state_dict": state_dict}, path)


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, JobSpec]:
    saved = torch.load(path, map_location=device, weights_only=False)
    job = JobSpec.model_validate(saved["job"])
    model = build_model(job.model, input_shapes(job.data), job.n_outputs)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), job


class ModelPredictor:
    """Callable class for `map_batches`: model inputs in, `output` out, everything else passed on."""

    def __init__(self, model_path: str):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, job = load_model(model_path, self.device)
        self.inputs = list(job.data.inputs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            tensors = {name: torch.as_tensor(batch[name], device=self.device) for name in self.inputs}
            output = self.model(tensors).float().cpu().numpy()
        carried = {key: value for key, value in batch.items() if key not in self.inputs}
        return {**carried, "output": output}


def predict(dataset: ray.data.Dataset, model_path: Path, concurrency: int = 1, num_gpus: float = 0,
            batch_size: int = 1024) -> ray.data.Dataset:
    return dataset.map_batches(ModelPredictor, fn_constructor_kwargs={"model_path": str(model_path)},
                               concurrency=concurrency, num_gpus=num_gpus, batch_size=batch_size,
                               batch_format="numpy")


def collect(dataset: ray.data.Dataset) -> dict[str, np.ndarray]:
    """Concatenate a (small) predicted dataset's columns in the driver."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in parts.items()}
