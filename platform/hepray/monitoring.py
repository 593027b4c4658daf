"""hepray's own Prometheus metrics, exported by Ray with a `ray_` prefix on each node's metrics port.

Metric objects are made once per process, on first use, and only inside a Ray process (a
driver, task or actor); elsewhere the recorders do nothing. Read tasks record once per entry
range and the training loop once every FLUSH_SECONDS, so no cost is paid per event or per
batch beyond adding a few numbers.
"""

from __future__ import annotations

import time
from functools import cache

import ray

FLUSH_SECONDS = 2.0


@cache
def _read_metrics():
    from ray.util.metrics import Counter

    tags = ("split",)
    return {
        "read": Counter("hepray_events_read", "Events read from ROOT files by read tasks", tags),
        "rasterized": Counter(
            "hepray_events_rasterized", "Events turned into model inputs (after cut and split)", tags
        ),
        "seconds": Counter("hepray_read_seconds", "Seconds read tasks spent reading and rasterizing", tags),
    }


@cache
def _train_metrics():
    from ray.util.metrics import Counter, Gauge

    tags = ("job", "rank")
    return {
        "samples": Counter("hepray_train_samples", "Training samples seen", tags),
        "steps": Counter("hepray_train_steps", "Optimizer steps taken", tags),
        "samples_per_second": Gauge("hepray_train_samples_per_second", "Training samples per second, per worker", tags),
        "step_seconds": Gauge("hepray_train_step_seconds", "Mean wall time of an optimizer step", tags),
        "data_wait_fraction": Gauge(
            "hepray_train_data_wait_fraction", "Fraction of training time spent waiting for the next batch", tags
        ),
        "loss": Gauge("hepray_train_loss", "Mean training loss since the last flush", tags),
        "epoch": Gauge("hepray_train_epoch", "Current epoch", tags),
        "gpu_utilization": Gauge("hepray_gpu_utilization", "GPU utilisation in percent (CUDA workers only)", tags),
        "gpu_memory_bytes": Gauge("hepray_gpu_memory_bytes", "GPU memory allocated by the worker", tags),
    }


def record_read(split: str | None, events_read: int, events_out: int, seconds: float) -> None:
    """Called by a read task once per entry range."""
    if not ray.is_initialized():
        return
    metrics, tags = _read_metrics(), {"split": split or "all"}
    metrics["read"].inc(events_read, tags)
    if events_out:
        metrics["rasterized"].inc(events_out, tags)
    metrics["seconds"].inc(seconds, tags)


class TrainMeter:
    """Accumulates per-step numbers in plain floats and publishes them every FLUSH_SECONDS.

    Usage per step: `meter.waited()` when the batch arrives, `meter.stepped(n, loss)` after the
    optimizer step; `meter.flush()` at the end of an epoch.
    """

    def __init__(self, job: str, rank: int, device=None):
        self.tags = {"job": job, "rank": str(rank)}
        self.device = device if device is not None and device.type == "cuda" else None
        self.metrics = _train_metrics() if ray.is_initialized() else None
        self.epoch = 0
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.window_start = self.mark = now
        self.samples = self.steps = 0
        self.loss_sum = self.wait = 0.0

    def start_epoch(self, epoch: int) -> None:
        """Starts a fresh window, so evaluation between epochs does not count as training time."""
        self.epoch = epoch
        self._reset(time.perf_counter())

    def waited(self) -> None:
        now = time.perf_counter()
        self.wait += now - self.mark
        self.mark = now

    def stepped(self, samples: int, loss: float) -> None:
        self.samples += samples
        self.steps += 1
        self.loss_sum += loss * samples
        now = time.perf_counter()
        self.mark = now
        if now - self.window_start >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        now = time.perf_counter()
        elapsed = now - self.window_start
        if self.metrics is not None and self.steps:
            m, tags = self.metrics, self.tags
            m["samples"].inc(self.samples, tags)
            m["steps"].inc(self.steps, tags)
            m["samples_per_second"].set(self.samples / elapsed, tags)
            m["step_seconds"].set(elapsed / self.steps, tags)
            m["data_wait_fraction"].set(self.wait / elapsed, tags)
            m["loss"].set(self.loss_sum / self.samples, tags)
            m["epoch"].set(self.epoch, tags)
            if self.device is not None:
                self._record_gpu(m, tags)
        self._reset(now)

    def _record_gpu(self, m, tags) -> None:
        import torch

        m["gpu_memory_bytes"].set(torch.cuda.memory_allocated(self.device), tags)
        try:
            m["gpu_utilization"].set(torch.cuda.utilization(self.device), tags)
        except Exception:  # needs pynvml / NVML; memory is still recorded without it
            pass
