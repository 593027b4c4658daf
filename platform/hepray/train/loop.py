"""The per-worker training loop: plain PyTorch, with Ray only at the edges (shards in, reports out)."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from hepray.data.augment import augment
from hepray.data.batches import ModelBatch, shuffled_batches, window_events
from hepray.data.events import LABEL, WEIGHT
from hepray.models import build_model
from hepray.monitoring import TrainMeter
from hepray.spec import JobSpec
from hepray.train.device import channels_last, precision_for, sync_batchnorm
from hepray.train.reweight import ReweightTable
from hepray.train.reweight import column as reweight_column
from hepray.train.tasks import Task
from hepray.train.watchdog import TrainingStopped, watched

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
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=t.lr, epochs=t.epochs, steps_per_epoch=steps_per_epoch
        )
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


def worker_model(
    job: JobSpec, shapes: dict, device: torch.device, world_size: int
) -> tuple[torch.nn.Module, list[str]]:
    """The job's model on this worker's device (DDP-wrapped for several workers) with the GPU
    options that apply here; notes say which did not."""
    model = build_model(job.model, shapes, job.n_outputs)
    notes = []
    if job.train.sync_batchnorm:  # before DDP wraps the model, as PyTorch requires
        model, note = sync_batchnorm(model, world_size, device)
        notes += [note] if note else []
    if job.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return ray.train.torch.prepare_model(model), notes


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
    reweight = ReweightTable(**config["reweight"]) if config.get("reweight") else None
    run = WorkerRun(JobSpec.model_validate(config["job"]), config["train_events"], config.get("weight_scale"), reweight)
    start_epoch = run.restore(ray.train.get_checkpoint())
    writer = None
    if run.rank == 0 and config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config["tensorboard_dir"])
    for epoch in range(start_epoch, run.job.train.epochs):
        metrics = run.train_epoch(epoch)
        metrics.update(run.validate(epoch))
        stop = run.stopper.should_stop(metrics)
        run.history.append(dict(metrics))
        metrics["stopped_early"] = float(stop)
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(key, value, epoch)
            writer.flush()
            print(progress_line(metrics, run.job.train.epochs), flush=True)  # Ray forwards it to the driver
        _report(metrics, run.rank, run.state(epoch))
        if stop:
            break
    if writer is not None:
        writer.close()


class WorkerRun:
    """One Ray Train worker's model, optimizer, schedule and data shards, epoch by epoch."""

    def __init__(
        self, job: JobSpec, train_events: int, weight_scale: float | None = None, reweight: ReweightTable | None = None
    ):
        self.job = job
        self.weight_scale = weight_scale  # train.weight_norm global: the train split's mean |weight|
        self.reweight = reweight
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        torch.manual_seed(job.train.seed + self.rank)
        np.random.seed(job.train.seed + self.rank)
        self.task = Task(job.task)
        self.shapes = job.data.input_shapes()
        self.image_names = [name for name, shape in self.shapes.items() if len(shape) == 3]
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN times its kernels once
        self.model, notes = worker_model(job, self.shapes, self.device, self.world_size)
        precision = precision_for(job.train.amp, self.device)
        self.autocast, self.scaler = precision.autocast(), precision.grad_scaler()
        if self.rank == 0:
            for note in filter(None, [*notes, precision.note]):
                print(f"hepray: {note}", flush=True)  # Ray forwards it to the driver
        self.optimizer = make_optimizer(job, self.model)
        steps_per_epoch = max(1, train_events // (job.train.batch_size * self.world_size) + 1)
        self.scheduler = make_scheduler(job, self.optimizer, steps_per_epoch)
        self.stopper = EarlyStopper(job)
        self.history: list[dict] = []
        self.kept: list[dict] = []  # the epoch's first training batches, re-evaluated in eval mode
        self.generator = torch.Generator().manual_seed(job.train.seed + self.rank)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard("val")
        # ModelBatch, in Ray's prefetch threads: what travelled goes to the device as it is (pinned,
        # non-blocking) and is densified there, overlapping the training step. Its tensors arrive on
        # the device, so Ray has nothing left to pin or move.
        self.batch_kwargs = dict(
            batch_size=job.train.batch_size, device=self.device, prefetch_batches=2, collate_fn=ModelBatch(self.device)
        )
        self.meter = TrainMeter(job.name, self.rank, self.device)  # Prometheus metrics, every few seconds

    def restore(self, checkpoint) -> int:
        """Load a checkpoint's state (resume); the epoch to start from."""
        if not checkpoint:
            return 0
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=self.device, weights_only=True)
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load(state["early_stopping"])
        if state.get("grad_scaler"):  # fp16's loss scale
            self.scaler.load_state_dict(state["grad_scaler"])
        self.history = state["history"]
        if self.rank == 0:
            print(f"hepray: resumed from the checkpoint of epoch {state['epoch']}", flush=True)
        return state["epoch"] + 1

    def state(self, epoch: int) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": self.stopper.state(),
            "grad_scaler": self.scaler.state_dict(),
            "history": self.history,
            "epoch": epoch,
        }

    def batches(self, shard, what: str, **options):
        return watched(shard.iter_torch_batches(**self.batch_kwargs, **options), self.job.train.stall_seconds, what)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the train shard; the epoch's training loss and speed."""
        self.model.train()
        self.meter.start_epoch(epoch)
        loss_sum, seen, self.kept = 0.0, 0, []
        started = time.perf_counter()
        batches = watched(
            shuffled_batches(
                self.train_shard,
                self.job.train.batch_size,
                window_events(self.job.train.shuffle_buffer, self.shapes),
                (self.job.train.seed, epoch),
                self.device,
            ),
            self.job.train.stall_seconds,
            "training",
        )
        for number, batch in enumerate(batches):
            self.meter.waited()
            step_loss, events = self.step(batch, epoch, number)
            loss_sum += step_loss * events
            self.meter.stepped(events, step_loss)
            seen += events
            if sum(len(k[self.task.truth_column]) for k in self.kept) < TRAIN_EVAL_EVENTS:
                self.kept.append({name: value.detach() for name, value in batch.items()})
        self.meter.flush()
        seconds = time.perf_counter() - started
        # Events trained on per second (all workers), data waits included: benchmarks/train.py compares it.
        return {
            "epoch": epoch,
            "train_loss": _global_mean(loss_sum, seen),
            "train_events_per_s": _global_mean(seen, 1) * self.world_size / seconds,
        }

    def step(self, batch: dict, epoch: int, number: int) -> tuple[float, int]:
        """One optimizer step; the batch's loss and size. A non-finite loss stops the run."""
        inputs = augment(
            {name: batch[name] for name in self.shapes}, self.image_names, self.job.data.augment, self.generator
        )
        if self.job.train.channels_last:
            inputs = channels_last(inputs)
        truth = batch[self.task.truth_column]
        with self.autocast:
            loss = self.task.loss(self.model(inputs), truth, self.event_weight(batch), self.weight_scale)
        step_loss = loss.item()
        if not math.isfinite(step_loss):
            raise TrainingStopped(
                f"training loss is {step_loss} at epoch {epoch + 1}, batch {number + 1} (worker "
                f"{self.rank}): check the inputs' scale and norm, or lower train.lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # the scaler passes through unless train.amp is fp16
        if self.job.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.job.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        scheduler = self.scheduler
        if (
            isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
            and scheduler.last_epoch < scheduler.total_steps - 1
        ):
            scheduler.step()
        return step_loss, len(truth)

    def event_weight(self, batch: dict) -> torch.Tensor | None:
        """The batch's event weights (data.weight) times their reweighting factors (data.reweight)."""
        weight = batch.get(WEIGHT)
        if self.reweight is None:
            return weight
        factors = self.reweight.factors_for(batch[LABEL], [batch[reweight_column(text)] for text in self.reweight.vars])
        return factors if weight is None else weight * factors

    def validate(self, epoch: int) -> dict[str, float]:
        """Eval-mode metrics on the kept training events and the val shard; steps epoch-wise schedules."""
        kept = [{**batch, WEIGHT: self.event_weight(batch)} if self.reweight else batch for batch in self.kept]
        layout = self.job.train.channels_last
        metrics = evaluate_batches(self.model, self.task, self.shapes, kept, "train_eval", self.autocast, layout)
        val_batches = self.batches(self.val_shard, "validation")
        if self.reweight is not None:
            val_batches = ({**batch, WEIGHT: self.event_weight(batch)} for batch in val_batches)
        metrics.update(evaluate_batches(self.model, self.task, self.shapes, val_batches, "val", self.autocast, layout))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics["val_loss"])
        elif isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.scheduler.step()
        # Plain floats: checkpoints are loaded with weights_only=True, which refuses numpy scalars.
        return {key: float(value) for key, value in metrics.items()}


def evaluate_batches(
    model, task: Task, shapes, batches, prefix: str, autocast, in_channels_last: bool = False
) -> dict[str, float]:
    """Loss and task metrics in eval mode over the batches (event-weighted when they carry
    weights), combined across workers."""
    model.eval()
    outputs, truths, weights = [], [], []
    with torch.no_grad(), autocast:
        for batch in batches:
            inputs = {name: batch[name] for name in shapes}
            outputs.append(model(channels_last(inputs) if in_channels_last else inputs).float().cpu())
            truths.append(batch[task.truth_column].cpu())
            if WEIGHT in batch:
                weights.append(batch[WEIGHT].cpu())
    model.train()
    width = outputs[0].shape[1] if outputs else 1
    output = gather(torch.cat(outputs).numpy() if outputs else np.zeros((0, width), np.float32))
    truth = gather(torch.cat(truths).numpy() if truths else np.zeros(0))
    weight = gather(torch.cat(weights).numpy()) if weights else None
    if len(truth) == 0:
        return {f"{prefix}_loss": float("nan")}
    loss = task.loss(
        torch.from_numpy(output), torch.from_numpy(truth), None if weight is None else torch.from_numpy(weight)
    ).item()
    return {f"{prefix}_loss": loss, **task.epoch_metrics(output, truth, prefix, weight)}


def _global_mean(total: float, count: int) -> float:
    if dist.is_available() and dist.is_initialized():
        sums = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(sums)
        total, count = sums.tolist()
    return total / max(count, 1)


def progress_line(metrics: dict, epochs: int) -> str:
    shown = " ".join(
        f"{key}={value:.4g}"
        for key, value in metrics.items()
        if key.startswith(("train", "val")) and "accuracy" not in key
    )
    return f"epoch {metrics['epoch'] + 1}/{epochs}: {shown}" + ("  (early stop)" if metrics["stopped_early"] else "")


def _report(metrics: dict, rank: int, state: dict) -> None:
    """Every worker reports; rank 0 attaches the checkpoint (V2 keeps rank 0's metrics)."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, os.path.join(directory, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
