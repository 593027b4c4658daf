"""The per-worker training loop: plain PyTorch, with Ray only at the edges (shards in, reports out)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from hepray.monitoring import TrainMeter
from hepray.data.augment import augment
from hepray.data.batches import ModelBatch
from hepray.models import build_model
from hepray.spec import JobSpec
from hepray.train.tasks import Task

CHECKPOINT_FILE = "state.pt"
TRAIN_EVAL_EVENTS = 4096  # training events re-evaluated in eval mode each epoch (study 001's confusion)


def make_optimizer(job: JobSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = job.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    optimizer = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(job: JobSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    t = job.train
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.lr, epochs=t.epochs, steps_per_epoch=steps_per_epoch)
    if t.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    return None


def gather(array: np.ndarray) -> np.ndarray:
    """Concatenate an array across workers (validation outputs are sharded like training data)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class EarlyStopper:
    def __init__(self, job: JobSpec):
        self.rule = job.train.early_stopping
        self.best = None
        self.bad_epochs = 0

    def should_stop(self, metrics: dict[str, float]) -> bool:
        if self.rule is None:
            return False
        value = metrics[self.rule.metric]
        better = self.best is None or (value < self.best if self.rule.mode == "min" else value > self.best)
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.rule.patience

    def state(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def train_loop_per_worker(config: dict) -> None:
    job = JobSpec.model_validate(config["job"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(job.train.seed + rank)
    np.random.seed(job.train.seed + rank)

    task = Task(job.task)
    shapes = job.data.input_shapes()
    image_names = [name for name, shape in shapes.items() if len(shape) == 3]
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"
    model = ray.train.torch.prepare_model(build_model(job.model, shapes, job.n_outputs))
    optimizer = make_optimizer(job, model)
    steps_per_epoch = max(1, config["train_events"] // (job.train.batch_size * context.get_world_size()) + 1)
    scheduler = make_scheduler(job, optimizer, steps_per_epoch)
    stopper = EarlyStopper(job)
    history: list[dict] = []
    start_epoch = 0

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        stopper.load(state["early_stopping"])
        history, start_epoch = state["history"], state["epoch"] + 1
        if rank == 0:
            print(f"hepray: resumed from the checkpoint of epoch {state['epoch']}", flush=True)

    writer = None
    if rank == 0 and config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config["tensorboard_dir"])

    generator = torch.Generator().manual_seed(job.train.seed + rank)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    # ModelBatch densifies sparse images in Ray's prefetch threads, overlapping the training step.
    batch_kwargs = dict(batch_size=job.train.batch_size, device=device, prefetch_batches=2, pin_memory=use_cuda,
                        collate_fn=ModelBatch())
    # bf16 autocast only on CUDA: CPU autocast slows small convolutions and changes numerics in tests.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)

    meter = TrainMeter(job.name, rank, device)  # Prometheus metrics, published every few seconds
    for epoch in range(start_epoch, job.train.epochs):
        model.train()
        meter.start_epoch(epoch)
        loss_sum, seen, kept = 0.0, 0, []
        epoch_started = time.perf_counter()
        for batch in train_shard.iter_torch_batches(**batch_kwargs, local_shuffle_buffer_size=4 * job.train.batch_size,
                                                    local_shuffle_seed=job.train.seed + epoch):
            meter.waited()
            inputs = augment({name: batch[name] for name in shapes}, image_names, job.data.augment, generator)
            truth = batch[task.truth_column]
            with autocast:
                loss = task.loss(model(inputs), truth)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if job.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.grad_clip)
            optimizer.step()
            if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.last_epoch < scheduler.total_steps - 1:
                scheduler.step()
            step_loss = loss.item()
            loss_sum += step_loss * len(truth)
            meter.stepped(len(truth), step_loss)
            seen += len(truth)
            if sum(len(k[task.truth_column]) for k in kept) < TRAIN_EVAL_EVENTS:
                kept.append({name: batch[name].detach() for name in (*shapes, task.truth_column)})

        meter.flush()
        train_seconds = time.perf_counter() - epoch_started
        metrics = {"epoch": epoch, "train_loss": _global_mean(loss_sum, seen)}
        # Events trained on per second (all workers), data waits included: benchmarks/train.py compares it.
        metrics["train_events_per_s"] = _global_mean(seen, 1) * context.get_world_size() / train_seconds
        metrics.update(evaluate_batches(model, task, shapes, kept, "train_eval", autocast))
        val_batches = val_shard.iter_torch_batches(**batch_kwargs)
        metrics.update(evaluate_batches(model, task, shapes, val_batches, "val", autocast))
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metrics["val_loss"])
        elif isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            scheduler.step()
        # Plain floats: checkpoints are loaded with weights_only=True, which refuses numpy scalars.
        metrics = {key: value if key == "epoch" else float(value) for key, value in metrics.items()}
        stop = stopper.should_stop(metrics)
        history.append(dict(metrics))
        metrics["stopped_early"] = float(stop)
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(key, value, epoch)
            writer.flush()
            print(progress_line(metrics, job.train.epochs), flush=True)  # Ray forwards it to the driver
        _report(metrics, rank, {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "early_stopping": stopper.state(), "history": history, "epoch": epoch,
        })
        if stop:
            break
    if writer is not None:
        writer.close()


def evaluate_batches(model, task: Task, shapes, batches, prefix: str, autocast) -> dict[str, float]:
    """Loss and task metrics in eval mode over the batches, combined across workers."""
    model.eval()
    outputs, truths = [], []
    with torch.no_grad(), autocast:
        for batch in batches:
            outputs.append(model({name: batch[name] for name in shapes}).float().cpu())
            truths.append(batch[task.truth_column].cpu())
    model.train()
    width = outputs[0].shape[1] if outputs else 1
    output = gather(torch.cat(outputs).numpy() if outputs else np.zeros((0, width), np.float32))
    truth = gather(torch.cat(truths).numpy() if truths else np.zeros(0))
    if len(truth) == 0:
        return {f"{prefix}_loss": float("nan")}
    loss = task.loss(torch.from_numpy(output), torch.from_numpy(truth)).item()
    return {f"{prefix}_loss": loss, **task.epoch_metrics(output, truth, prefix)}


def _global_mean(total: float, count: int) -> float:
    if dist.is_available() and dist.is_initialized():
        sums = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(sums)
        total, count = sums.tolist()
    return total / max(count, 1)


def progress_line(metrics: dict, epochs: int) -> str:
    shown = " ".join(f"{key}={value:.4g}" for key, value in metrics.items()
                     if key.startswith(("train", "val")) and "accuracy" not in key)
    return f"epoch {metrics['epoch'] + 1}/{epochs}: {shown}" + ("  (early stop)" if metrics["stopped_early"] else "")


def _report(metrics: dict, rank: int, state: dict) -> None:
    """Every worker reports; rank 0 attaches the checkpoint (V2 keeps rank 0's metrics)."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, os.path.join(directory, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
