"""What differs between binary, multiclass and regression: the truth column, the loss, the
per-epoch validation metric, and how raw outputs become scores."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from hepray.spec import TaskSpec


class Task:
    def __init__(self, spec: TaskSpec):
        self.kind = spec.kind
        self.loss_kind = spec.loss
        self.class_weights = torch.tensor(spec.class_weights, dtype=torch.float32) if spec.class_weights else None

    @property
    def truth_column(self) -> str:
        return "target" if self.kind == "regression" else "label"

    def loss(self, outputs: torch.Tensor, truth: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        outputs = outputs.float()
        if self.kind == "multiclass":
            weight = self.class_weights.to(outputs.device) if self.class_weights is not None else None
            return F.cross_entropy(outputs, truth.long(), weight=weight, reduction=reduction)
        if self.kind == "binary":
            losses = F.binary_cross_entropy_with_logits(outputs[:, 0], truth.float(), reduction="none")
            if self.class_weights is not None:
                losses = losses * self.class_weights.to(outputs.device)[truth.long()]
        else:
            prediction, target = outputs[:, 0], truth.float()
            if self.loss_kind == "huber":
                losses = F.huber_loss(prediction, target, reduction="none")
            elif self.loss_kind == "relative":
                losses = ((prediction - target) / target.abs().clamp_min(1e-6)) ** 2
            else:
                losses = (prediction - target) ** 2
        return losses.mean() if reduction == "mean" else losses.sum()

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """Probabilities for classifiers (signal probability for binary), predictions for regression."""
        if self.kind == "binary":
            return 1.0 / (1.0 + np.exp(-outputs[:, 0]))
        if self.kind == "multiclass":
            shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        return outputs[:, 0]

    def epoch_metrics(self, outputs: np.ndarray, truth: np.ndarray, prefix: str) -> dict[str, float]:
        """The metrics reported each epoch beside the loss, for early stopping and searches."""
        if len(truth) == 0:
            return {}
        scores = self.scores(outputs)
        if self.kind == "binary":
            auc = roc_auc_score(truth, scores) if len(np.unique(truth)) == 2 else float("nan")
            return {f"{prefix}_auc": float(auc), f"{prefix}_accuracy": float(np.mean((scores > 0.5) == truth))}
        if self.kind == "multiclass":
            present = np.unique(truth)
            auc = float("nan")
            if len(present) == scores.shape[1]:
                auc = roc_auc_score(truth, scores, multi_class="ovr", average="macro")
            return {f"{prefix}_auc_macro": float(auc), f"{prefix}_accuracy": float(np.mean(scores.argmax(1) == truth))}
        ratio = scores / np.where(truth == 0, np.nan, truth)
        q16, q50, q84 = np.nanpercentile(ratio, [16, 50, 84])
        return {f"{prefix}_response": float(q50), f"{prefix}_resolution": float((q84 - q16) / 2 / q50)}
