"""The GPU check (issue 21): what a GPU machine runs, in under 5 minutes, before anything else.

    python -m benchmarks.gpu [--events N] [--data DIR]

It says whether the driver and Ray see GPUs, then trains jobs/electron_id.yaml and jobs/jets_cvn.yaml
(their own models, on generated data of N events per class, one epoch) through hepray's own
training loop and TorchTrainer, with 1 worker, and with 2 if 2 GPUs exist. Per run, one JSON line:
what CUDA each Ray Train worker sees (the check that `use_gpu: auto` reached the workers), samples/s
(the loop's train_events_per_s, data waits included), the data-wait fraction and percentiles of
the wait for each next batch (as the loop's TrainMeter measures them), and GPU utilisation
(nvidia-smi, else torch.cuda.utilization, sampled every 0.5 s while training; null without a GPU).
On a machine without a GPU it runs the same way on CPU, at 2000 events per class unless told,
and says "gpu": false. tests/test_benchmark_gpu.py runs it so at a tiny size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import HERE, ROOT, cores, emit, load, start_ray
from hepray.app.job_data import build_job_data, ensure_data
from hepray.spec import JobSpec, load_job

JOBS = ("electron_id", "jets_cvn")
EVENTS_WITH_GPU, EVENTS_ON_CPU = 20000, 2000  # per class


def small_job(name: str, events: int, data_dir: Path, workers: int) -> JobSpec:
    """jobs/<name>.yaml on its own generated data (made once, then reused), one epoch, `workers` workers."""
    base = load_job(ROOT / "jobs" / f"{name}.yaml")
    out = data_dir / f"{name}_{events}"
    files = [f"data.files.{group}={out}/{Path(patterns[0]).name}" for group, patterns in base.data.files.items()]
    job = load_job(
        ROOT / "jobs" / f"{name}.yaml",
        [
            f"data.generate.out={out}",
            f"data.generate.events={events}",
            *files,
            "train.epochs=1",
            "train.early_stopping=null",
            f"scaling.num_workers={workers}",
            "scaling.use_gpu=auto",
        ],
    )
    ensure_data(job.data)
    return job


def gpu_utilization() -> list[float] | None:
    """Each GPU's utilisation in %: nvidia-smi if present, else torch.cuda.utilization (NVML), else None."""
    if shutil.which("nvidia-smi"):
        try:
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
            return [float(value) for value in out.split()]
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if torch.cuda.is_available():
        try:
            return [float(torch.cuda.utilization(index)) for index in range(torch.cuda.device_count())]
        except Exception:  # no NVML (pynvml) in this environment
            return None
    return None


class UtilizationSampler(threading.Thread):
    """Samples gpu_utilization() every 0.5 s until stopped; each GPU's mean and the highest sample."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.done = [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            sample = gpu_utilization()
            if sample:
                self.samples.append(sample)
            self.done.wait(0.5)

    def summary(self) -> tuple[list[float] | None, float | None]:
        self.done.set()
        self.join()
        if not self.samples:
            return None, None
        values = np.array(self.samples)
        return [round(float(mean), 1) for mean in values.mean(axis=0)], round(float(values.max()), 1)


def measured_loop(config: dict) -> None:
    """hepray's training loop as `hepray run` runs it, with its TrainMeter keeping every next-batch
    wait it measures, and what CUDA the worker sees: both written to config["out"] for the driver."""
    import ray.train
    import ray.train.torch

    from hepray.train import loop

    waits, span = [], {}

    class KeepingMeter(loop.TrainMeter):
        def start_epoch(self, epoch: int) -> None:
            super().start_epoch(epoch)
            span["start"] = self.mark

        def waited(self) -> None:
            mark = self.mark
            super().waited()
            waits.append(self.mark - mark)

        def stepped(self, samples: int, loss: float) -> None:
            super().stepped(samples, loss)
            span["end"] = self.mark

    rank = ray.train.get_context().get_world_rank()
    seen = {
        "rank": rank,
        "cuda": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count(),
        "device": str(ray.train.torch.get_device()),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    loop.TrainMeter = KeepingMeter  # this worker process only: the loop builds its meter from the module
    loop.train_loop_per_worker(config)
    seconds = span.get("end", 0.0) - span.get("start", 0.0)
    Path(config["out"], f"rank_{rank}.json").write_text(json.dumps({**seen, "waits": waits, "seconds": seconds}))


def train_once(job: JobSpec) -> dict:
    """One epoch of the job through TorchTrainer; the figures of the run (see the module)."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from hepray.train.trainer import ordered_ingest, scaling_config, torch_config

    data = build_job_data(job, splits=("train", "val"))
    scaling = scaling_config(job)
    split = job.data.split
    with tempfile.TemporaryDirectory() as out:
        trainer = TorchTrainer(
            measured_loop,
            train_loop_config={
                "job": job.model_dump(mode="json", by_alias=True),
                "train_events": int(data.plan.events * (1 - split.val - split.test)),
                "out": out,
            },
            scaling_config=scaling,
            torch_config=torch_config(scaling),
            datasets={"train": data.datasets["train"], "val": data.datasets["val"]},
            dataset_config=ordered_ingest(),
            run_config=RunConfig(storage_path=out, name="gpu_check"),
        )
        sampler = UtilizationSampler()
        sampler.start()
        result = trainer.fit()
        utilization, utilization_max = sampler.summary()
        workers = [json.loads(path.read_text()) for path in sorted(Path(out).glob("rank_*.json"))]
    return figures(job, bool(scaling.use_gpu), result.metrics["train_events_per_s"], workers) | {
        "gpu_utilization_pct": utilization,  # per GPU of the machine, used by this run or not
        "gpu_utilization_max_pct": utilization_max,
    }


def figures(job: JobSpec, use_gpu: bool, samples_per_s: float, workers: list[dict]) -> dict:
    """The JSON line's figures from each worker's waits: each worker's first wait is start-up, apart."""
    steady = np.concatenate([worker["waits"][1:] for worker in workers] + [np.zeros(0)])
    percentiles = np.percentile(steady, [50, 90, 99]) if len(steady) else [None] * 3
    fractions = [sum(worker["waits"]) / worker["seconds"] for worker in workers if worker["seconds"] > 0]
    return {
        "job": job.name,
        "workers": job.scaling.num_workers,
        "gpu": use_gpu,
        "cuda_in_workers": [
            {key: value for key, value in worker.items() if key not in ("waits", "seconds")} for worker in workers
        ],
        "samples_per_s": round(samples_per_s, 1),
        "batches_per_worker": [len(worker["waits"]) for worker in workers],
        "data_wait_fraction": round(float(np.mean(fractions)), 4) if fractions else None,
        "next_batch_wait_ms": {
            "first": round(1e3 * max(worker["waits"][0] for worker in workers if worker["waits"]), 2),
            **{
                name: None if value is None else round(1e3 * value, 3)
                for name, value in zip(("p50", "p90", "p99"), percentiles)
            },
            "max": round(1e3 * float(steady.max()), 3) if len(steady) else None,
        },
    }


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, help=f"events per class (default {EVENTS_WITH_GPU}, {EVENTS_ON_CPU} on CPU)"
    )
    parser.add_argument("--data", type=Path, default=HERE / ".data", help="where the generated data is kept")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    events = args.events or (EVENTS_WITH_GPU if gpus else EVENTS_ON_CPU)
    start_ray(cores())
    ray_gpus = ray.cluster_resources().get("GPU", 0)
    emit(
        "gpu_present",
        gpu=gpus > 0,
        cuda_devices=gpus,
        ray_gpus=ray_gpus,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        note=None if gpus else "no GPU present: the runs below train on CPU",
    )
    for name in JOBS:
        for workers in [1, 2] if gpus >= 2 and ray_gpus >= 2 else [1]:
            started = time.perf_counter()
            line = train_once(small_job(name, events, args.data, workers))
            emit(
                "gpu_training",
                **line,
                events_per_class=events,
                seconds=round(time.perf_counter() - started, 1),
                load=load(),
            )


if __name__ == "__main__":
    main()
