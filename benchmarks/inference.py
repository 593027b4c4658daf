"""Batch inference on CPU: `hepray predict` events/s (read, rasterize, model, write one output per
file) for the PyTorch and ONNX Runtime engines, the model alone, and the ratio to a bare uproot read.

    python -m benchmarks.inference

The electron-ID job's model with untrained weights (inference costs the same whatever the
weights), over the first INFERENCE_FILES files of the job's benchmark data.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import bare_read_rate, cores, electron_id_job, emit, load, start_ray
from hepray.app.predict import predict_files
from hepray.data.root_source import labelled_files
from hepray.evaluate.inference import MODEL_FILE, ONNX_FILE, actor_pool, save_model
from hepray.models import build_model
from hepray.models.export import export_onnx

INFERENCE_FILES = 2  # 10k events of the default benchmark data: the CNN, not the read, sets the pace
BATCH = 1024


def make_run_dir(job, directory: Path) -> torch.nn.Module:
    """What `hepray run` leaves for `hepray predict`: model.pt (weights and job) and model.onnx."""
    torch.manual_seed(0)
    model = build_model(job.model, job.data.input_shapes(), job.n_outputs).eval()
    save_model(directory / MODEL_FILE, job, model.state_dict())
    export_onnx(model, job.data.input_shapes(), directory / ONNX_FILE)
    return model


def model_only_rate(model: torch.nn.Module, job, batches: int = 4) -> float:
    """Events/s of the model alone on one thread (images already in memory): the ceiling per actor."""
    torch.set_num_threads(1)
    images = {name: torch.rand(256, *shape) for name, shape in job.data.input_shapes().items()}
    with torch.no_grad():
        model(images)
        started = time.perf_counter()
        for _ in range(batches):
            model(images)
    return batches * 256 / (time.perf_counter() - started)


def main() -> None:
    n_cores = cores()
    job = electron_id_job()
    files = [path for path, _ in labelled_files(job.data)][:INFERENCE_FILES]
    read = bare_read_rate(job)
    emit("bare_uproot_read", events_per_s_per_core=round(read), load=load())
    with tempfile.TemporaryDirectory() as directory:
        run_dir = Path(directory)
        model = make_run_dir(job, run_dir)
        emit(
            "inference_model_only",
            model=job.model.name,
            events_per_s_per_thread=round(model_only_rate(model, job)),
            batch=256,
            load=load(),
        )
        start_ray(n_cores)
        actors = actor_pool(job).size
        predict_files(run_dir, files[:1], run_dir / "warm-up")  # first-run imports and file cache, not throughput
        for engine in ("torch", "onnx"):
            report = predict_files(run_dir, files, run_dir / engine, engine=engine, batch_size=BATCH)
            rate = report.events / report.seconds
            emit(
                "inference_events_per_s",
                engine=engine,
                events_per_s=round(rate),
                events=report.events,
                files=len(files),
                actors=actors,
                cores=n_cores,
                ratio_to_read=round(rate / read, 3),
                ratio_to_read_x_cores=round(rate / (read * n_cores), 3),
                seconds=round(report.seconds, 2),
                load=load(),
                note="end to end: planning, actor start-up, read, rasterize, model, write",
            )


if __name__ == "__main__":
    main()
