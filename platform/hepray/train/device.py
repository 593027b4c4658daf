"""The training worker's GPU paths, each guarded so that the same code runs, and is tested, on CPU:
mixed precision (train.amp), channels-last memory (train.channels_last) and SyncBatchNorm
(train.sync_batchnorm). A requested option that cannot apply on this worker falls back and says
why in a note, which rank 0 prints."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    """What train.amp means on this worker: autocast's dtype (None: float32 throughout) and, for
    fp16, a GradScaler (fp16's small range would flush small gradients to zero)."""

    device_type: str
    dtype: torch.dtype | None
    note: str = ""  # why the requested mode was changed, for the log

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that passes through unless fp16: one training step for every precision."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def precision_for(amp: str, device: torch.device, bf16_supported: bool | None = None) -> Precision:
    """train.amp on `device`: auto is bf16 on GPUs that have it (Ampere and later), fp16 on older
    GPUs, float32 on CPU; bf16 asked for runs on CPU too (CPU autocast), fp16 needs CUDA.
    bf16_supported: whether the GPU has bf16 (default: ask CUDA; emulated bf16 does not count)."""
    cuda = device.type == "cuda"
    if bf16_supported is None:
        bf16_supported = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if amp == "off" or (amp == "auto" and not cuda):
        return Precision(device.type, None)
    if amp == "fp16" and not cuda:
        return Precision(
            device.type, None, "train.amp: fp16 needs a CUDA GPU and this worker has none; training in float32"
        )
    if amp == "bf16" and cuda and not bf16_supported:
        return Precision("cuda", torch.float16, "train.amp: this GPU has no bf16; fp16 with a grad scaler instead")
    if amp == "fp16" or (amp == "auto" and not bf16_supported):
        return Precision("cuda", torch.float16)
    return Precision(device.type, torch.bfloat16)


def channels_last(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """2-D images (4-D batches) in channels-last memory, what cuDNN's fastest convolutions read
    once the model is too; every other input as it is."""
    return {
        name: tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor
        for name, tensor in inputs.items()
    }


def sync_batchnorm(model: nn.Module, world_size: int, device: torch.device) -> tuple[nn.Module, str]:
    """The model with SyncBatchNorm in place of BatchNorm, so its statistics cover every worker's
    batch, where that can run: CUDA (PyTorch's SyncBatchNorm does not train on CPU/gloo) and more
    than one worker. Otherwise the model as it is and a note saying why."""
    if device.type != "cuda":
        return model, "train.sync_batchnorm: SyncBatchNorm needs CUDA (not CPU/gloo); keeping BatchNorm"
    if world_size < 2:
        return model, "train.sync_batchnorm: one worker already normalizes over its whole batch; keeping BatchNorm"
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), ""
