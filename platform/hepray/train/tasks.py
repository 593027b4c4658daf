"""What differs between binary, multiclass and regression: the truth column, the loss, the
per-epoch validation metric, and how raw outputs become scores.

Track momenta (a regression whose truth is (events, tracks, 3): px, py, pz per track slot, and
whose outputs are the same numbers slot after slot) have their own loss per event:

    mean over slots of sum over (px, py, pz) of l(predicted - true)
    + conservation_weight * |sum over slots of predicted (px, py, pz) - initial_momentum|^2

with l the squared error (mse) or the Huber loss (huber), momenta in GeV.

A multiclass task with pair heads (task.pair_heads) has n class logits, then one logit per class pair
(a, b), a < b (spec.class_pairs), positive for a. Its loss per event of class c is

    class loss of the n class logits + mean over the n - 1 pairs holding c of binary_losses(pair logit, c == a)

so a pair's logit learns from the events of its two classes only; scores and the per-epoch metrics
are the class logits'.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hepray.data.events import LABEL, TARGET
from hepray.spec import TaskSpec, class_pairs
from hepray.train.roc import safe_auc


class Task:
    def __init__(self, spec: TaskSpec):
        self.kind = spec.kind
        self.loss_kind = spec.loss
        self.class_weights = torch.tensor(spec.class_weights, dtype=torch.float32) if spec.class_weights else None
        self.label_smoothing, self.focal_gamma = spec.label_smoothing, spec.focal_gamma
        self.pair_heads = spec.pair_heads
        self.conservation_weight = spec.conservation_weight
        self.initial_momentum = np.asarray(spec.initial_momentum, dtype=np.float32)

    @property
    def truth_column(self) -> str:
        return TARGET if self.kind == "regression" else LABEL

    def loss(
        self,
        outputs: torch.Tensor,
        truth: torch.Tensor,
        weight: torch.Tensor | None = None,
        weight_scale: float | None = None,
    ) -> torch.Tensor:
        """The batch's loss. Without event weights: the mean over events (multiclass with class
        weights: divided by the events' summed class weights, as cross_entropy does). With them:
        sum(weight * loss) over the batch's summed |weight|, or, given `weight_scale` (the train
        split's mean |weight|: train.weight_norm global), over batch size * weight_scale."""
        losses, norm = self.class_weighted_losses(outputs.float(), truth)
        if weight is None:
            return (
                losses.sum() / norm.sum()
                if self.kind == "multiclass" and self.class_weights is not None
                else losses.mean()
            )
        weight = weight.to(losses.dtype)
        if weight_scale is not None:
            return (weight * losses).sum() / (len(losses) * weight_scale)
        return (weight * losses).sum() / (weight.abs() * norm).sum().clamp_min(1e-12)

    def class_weighted_losses(self, outputs: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per event: the loss times its class weight, and what the sum over events is divided by
        (a multiclass job's class weights, as cross_entropy does; else 1 per event)."""
        losses = self.event_losses(outputs, truth)
        norm = torch.ones_like(losses)
        if self.class_weights is not None and self.kind != "regression":
            class_weight = self.class_weights.to(outputs.device, losses.dtype)[truth.long()]
            losses = losses * class_weight
            if self.kind == "multiclass":
                norm = class_weight
        return losses, norm

    def event_losses(self, outputs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """One loss per event, before any weight."""
        if self.kind == "multiclass":
            truth = truth.long()
            losses = self.multiclass_losses(self.class_outputs(outputs), truth)
            return losses + self.pair_losses(outputs, truth) if self.pair_heads else losses
        if self.kind == "binary":
            return self.binary_losses(outputs[:, 0], truth.float())
        if truth.dim() == 3:
            return self.track_momentum_losses(outputs, truth.float())
        prediction, target = outputs[:, 0], truth.float()
        if self.loss_kind == "huber":
            return F.huber_loss(prediction, target, reduction="none")
        if self.loss_kind == "relative":
            return ((prediction - target) / target.abs().clamp_min(1e-6)) ** 2
        return (prediction - target) ** 2

    def multiclass_losses(self, outputs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with smoothed targets q: -sum_k q_k (1 - p_k)^gamma log p_k (focal for gamma > 0)."""
        smoothing, gamma = self.label_smoothing, self.focal_gamma
        if gamma == 0:
            return F.cross_entropy(outputs, truth, reduction="none", label_smoothing=smoothing)
        log_p = F.log_softmax(outputs, dim=1)
        target = F.one_hot(truth, outputs.shape[1]).to(log_p.dtype) * (1 - smoothing) + smoothing / outputs.shape[1]
        return -(target * (1 - log_p.exp()) ** gamma * log_p).sum(dim=1)

    def class_outputs(self, outputs):
        """The class logits of a multiclass model's outputs (numpy or torch): with pair heads the
        first n, the pair logits follow."""
        return outputs[:, : pair_head_classes(outputs.shape[1])] if self.pair_heads else outputs

    def pair_losses(self, outputs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Per event: the mean of binary_losses over the n - 1 pair logits of its class, each with
        target 1 for the pair's first class; pairs without the event's class do not enter."""
        n = pair_head_classes(outputs.shape[1])
        pairs = truth.new_tensor(class_pairs(n))
        label = truth[:, None]
        in_pair = (label == pairs[:, 0]) | (label == pairs[:, 1])
        losses = self.binary_losses(outputs[:, n:], (label == pairs[:, 0]).to(outputs.dtype))
        return torch.where(in_pair, losses, losses.new_zeros(())).sum(dim=1) / (n - 1)

    def binary_losses(self, logit: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """The two-class case of multiclass_losses, on one logit: target q = y (1 - s) + s / 2."""
        target = truth * (1 - self.label_smoothing) + self.label_smoothing / 2
        if self.focal_gamma == 0:
            return F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        p, gamma = torch.sigmoid(logit), self.focal_gamma
        return -(target * (1 - p) ** gamma * F.logsigmoid(logit) + (1 - target) * p**gamma * F.logsigmoid(-logit))

    def track_momentum_losses(self, outputs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Per event: the per-track loss plus the weighted momentum-conservation term (module doc)."""
        prediction = outputs.reshape(truth.shape)
        if self.loss_kind == "huber":
            per_component = F.huber_loss(prediction, truth, reduction="none")
        else:
            per_component = (prediction - truth) ** 2
        losses = per_component.sum(dim=2).mean(dim=1)
        if self.conservation_weight > 0:
            imbalance = prediction.sum(dim=1) - prediction.new_tensor(self.initial_momentum)
            losses = losses + self.conservation_weight * (imbalance**2).sum(dim=1)
        return losses

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """Probabilities for classifiers (signal probability for binary), predictions for regression
        (one column per output for track momenta)."""
        if self.kind == "binary":
            return 1.0 / (1.0 + np.exp(-outputs[:, 0]))
        if self.kind == "multiclass":
            outputs = self.class_outputs(outputs)
            shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        return outputs if outputs.shape[1] > 1 else outputs[:, 0]

    def pair_aucs(self, outputs: np.ndarray, truth: np.ndarray, weight: np.ndarray | None) -> list[float]:
        """Each class pair (a, b)'s AUC on the events of its two classes, a as signal, scored by
        pair_score. NaN for a pair missing a class; the search objective `val_auc_pair_min` is the lowest."""
        n = self.class_outputs(outputs).shape[1]
        aucs = []
        for a, b in class_pairs(n):
            events = (truth == a) | (truth == b)
            score = pair_score(outputs[events], n, a, b, self.pair_heads)
            aucs.append(safe_auc(truth[events] == a, score, None if weight is None else weight[events]))
        return aucs

    def pair_scores(self, outputs: np.ndarray) -> np.ndarray:
        """With pair heads: each pair (a, b)'s probability of a over b, sigmoid of its logit."""
        n = pair_head_classes(outputs.shape[1])
        return 1.0 / (1.0 + np.exp(-outputs[:, n:]))

    def epoch_metrics(
        self, outputs: np.ndarray, truth: np.ndarray, prefix: str, weight: np.ndarray | None = None
    ) -> dict[str, float]:
        """The metrics reported each epoch beside the loss, for early stopping and searches
        (classifiers' event-weighted when given weights; regression's are quantiles, unweighted)."""
        if len(truth) == 0:
            return {}
        scores = self.scores(outputs)
        if self.kind == "binary":
            auc = safe_auc(truth == 1, scores, weight)
            accuracy = np.average((scores > 0.5) == truth, weights=weight)
            return {f"{prefix}_auc": float(auc), f"{prefix}_accuracy": float(accuracy)}
        if self.kind == "multiclass":
            # one class against the rest, averaged (sklearn's ovr macro); NaN unless every class is present
            auc = np.mean([safe_auc(truth == c, scores[:, c], weight) for c in range(scores.shape[1])])
            accuracy = np.average(scores.argmax(1) == truth, weights=weight)
            return {
                f"{prefix}_auc_macro": float(auc),
                f"{prefix}_auc_pair_min": float(np.min(self.pair_aucs(outputs, truth, weight))),
                f"{prefix}_accuracy": float(accuracy),
            }
        if truth.ndim == 3:  # track momenta: the tracks' pT, and the events' momentum imbalance
            prediction = scores.reshape(truth.shape)
            imbalance = np.linalg.norm(prediction.sum(axis=1) - self.initial_momentum, axis=1)
            return {
                **_response(
                    np.hypot(prediction[..., 0], prediction[..., 1]).ravel(),
                    np.hypot(truth[..., 0], truth[..., 1]).ravel(),
                    prefix,
                ),
                f"{prefix}_imbalance": float(imbalance.mean()),
            }
        return _response(scores, truth, prefix)


def pair_score(outputs: np.ndarray, n_classes: int, a: int, b: int, pair_heads: bool) -> np.ndarray:
    """A multiclass model's score of class a over class b (any order, antisymmetric): with pair
    heads (task.pair_heads: n class logits, then one per pair of class_pairs) the pair's logit,
    else the class logits' difference (the softmax restricted to the pair)."""
    if not pair_heads:
        return outputs[:, a] - outputs[:, b]
    logit = outputs[:, n_classes + class_pairs(n_classes).index((min(a, b), max(a, b)))]
    return logit if a < b else -logit


def pair_head_classes(width: int) -> int:
    """The classes n of a model with pair heads, from its n + n(n-1)/2 = n(n+1)/2 outputs."""
    n = round((np.sqrt(8 * width + 1) - 1) / 2)
    if n * (n + 1) // 2 != width:
        raise ValueError(f"{width} outputs are not n class logits and n(n-1)/2 pair logits")
    return n


def _response(prediction: np.ndarray, truth: np.ndarray, prefix: str) -> dict[str, float]:
    """Median of prediction / truth, and the half-width of its 16-84 % range over that median."""
    ratio = prediction / np.where(truth == 0, np.nan, truth)
    q16, q50, q84 = np.nanpercentile(ratio, [16, 50, 84])
    return {f"{prefix}_response": float(q50), f"{prefix}_resolution": float((q84 - q16) / 2 / q50)}
