"""`data.reweight`: the factors that flatten (or match) each class's spectrum, from the train split.

One Ray Data pass over the train split's labels, weights and reweighting variables (no inputs
read) fills a weighted histogram per class and block; only the histograms reach the driver.
Per class c with histogram h_c and shape p_c = h_c / sum(h_c), the factor in a bin is
target(bin) / p_c(bin), scaled so the class's total weight is unchanged, then capped at
max_weight; bins a class does not populate keep factor 1. The training worker multiplies each
event's weight by its factor (train/reweight.py); evaluation numbers keep the physics weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepray.app.job_data import JobData
from hepray.data.events import LABEL, WEIGHT
from hepray.data.pipeline import build_dataset
from hepray.evaluate import plots
from hepray.spec import JobSpec, Reweight
from hepray.train.reweight import ReweightTable, bin_index, column


def reweight_table(job: JobSpec, data: JobData, out_dir: Path) -> tuple[ReweightTable, dict[str, float]]:
    """The factors, their summary numbers (`reweight_*`) and plots in out_dir/plots."""
    spec = job.data.reweight
    histograms = class_histograms(job, data)
    factors = reweight_factors(spec, histograms, job.data.class_names)
    after = histograms * factors
    metrics = reweight_metrics(spec, histograms, after, factors, job.data.class_names)
    if job.evaluate.plots:
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        for axis, name in enumerate(spec.vars):
            others = tuple(a + 1 for a in range(len(spec.vars)) if a != axis)
            plots.reweight_spectra(
                out_dir / "plots" / f"reweight_{axis}.png",
                spec.bins[axis],
                histograms.sum(others),
                after.sum(others),
                job.data.class_names,
                name,
            )
        plots.weight_distribution(out_dir / "plots" / "reweight_factors.png", factors, histograms, job.data.class_names)
    return ReweightTable(spec.vars, spec.bins, factors.tolist()), metrics


def class_histograms(job: JobSpec, data: JobData) -> np.ndarray:
    """(classes, bins...) weighted histograms of the train split's reweighting variables."""
    spec = job.data.reweight
    extra = {column(text): text for text in spec.vars}
    dataset = build_dataset(job.data, "train", data.plan, data.ledger_name, extra, with_inputs=False)
    n_classes = len(job.data.class_names)
    parts = dataset.map_batches(
        _block_histogram, fn_kwargs={"spec": spec, "n_classes": n_classes}, batch_format="numpy", batch_size=None
    ).take_all()
    shape = (n_classes, *(len(edges) - 1 for edges in spec.bins))
    return sum((np.asarray(part["histogram"], dtype=np.float64) for part in parts), np.zeros(shape))


def _block_histogram(batch: dict[str, np.ndarray], spec: Reweight, n_classes: int) -> dict[str, np.ndarray]:
    shape = (n_classes, *(len(edges) - 1 for edges in spec.bins))
    weights = batch[WEIGHT].astype(np.float64) if WEIGHT in batch else np.ones(len(batch[LABEL]))
    values = [batch[column(text)].astype(np.float64) for text in spec.vars]
    flat = np.ravel_multi_index((batch[LABEL], *bin_index(values, spec.bins)), shape)
    histogram = np.bincount(flat, weights, minlength=int(np.prod(shape))).reshape(shape)
    return {"histogram": histogram[None]}


def reweight_factors(spec: Reweight, histograms: np.ndarray, class_names: list[str]) -> np.ndarray:
    populated = histograms > 0
    shapes = np.where(populated, histograms, 0) / np.maximum(
        histograms.sum(axis=tuple(range(1, histograms.ndim)), keepdims=True), 1e-300
    )
    if spec.target == "flat":
        target = np.full(histograms.shape[1:], 1.0 / np.prod(histograms.shape[1:]))
    else:
        target = shapes[class_names.index(spec.target)]
    factors = np.where(populated, target / np.where(populated, shapes, 1.0), 1.0)
    axes = tuple(range(1, histograms.ndim))
    kept = (histograms * factors).sum(axis=axes, keepdims=True)
    factors = factors * np.where(kept > 0, histograms.sum(axis=axes, keepdims=True) / np.where(kept > 0, kept, 1), 1)
    return np.where(populated, np.minimum(factors, spec.max_weight), 1.0)


def reweight_metrics(
    spec: Reweight, before: np.ndarray, after: np.ndarray, factors: np.ndarray, class_names: list[str]
) -> dict[str, float]:
    """The largest relative deviation of a populated bin from the target after reweighting (per
    class and overall), the largest factor and the weight fraction in capped bins."""
    metrics: dict[str, float] = {}
    target_class = None if spec.target == "flat" else class_names.index(spec.target)
    for c, name in enumerate(class_names):
        populated = before[c] > 0
        if target_class is not None and populated.any():
            populated &= before[target_class] > 0
        target = (np.ones(before.shape[1:]) if target_class is None else before[target_class]) * populated
        if not populated.any() or target.sum() <= 0 or after[c][populated].sum() <= 0:
            continue
        shape = after[c] * populated / after[c][populated].sum()
        wanted = target / target.sum()
        metrics[f"reweight_max_deviation_{name}"] = float(np.max(np.abs(shape - wanted)[populated] / wanted[populated]))
    deviations = [value for key, value in metrics.items() if key.startswith("reweight_max_deviation_")]
    metrics["reweight_max_deviation"] = max(deviations) if deviations else float("nan")
    metrics["reweight_max_factor"] = float(factors[before > 0].max()) if (before > 0).any() else float("nan")
    capped = (factors >= spec.max_weight) & (before > 0)
    metrics["reweight_capped_fraction"] = float(before[capped].sum() / max(before[before > 0].sum(), 1e-300))
    return metrics
