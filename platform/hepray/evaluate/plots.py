"""Evaluation plots (Agg backend, mplhep ROOT style applied locally, figures always closed).

Each function writes one PNG and returns its path. Large inputs are histogrammed or
down-sampled on a fixed grid so every plot stays well under a second. ``weights`` (one per
event, optional): ROC curves, histograms and the confusion matrix are weighted as the metrics
are (``metrics``); ``None`` draws exactly the unweighted plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from scipy.special import expit, softmax  # noqa: E402

from hepray.train.roc import roc_area, roc_points  # noqa: E402

from . import metrics, resolution  # noqa: E402

EFF_GRID = np.linspace(0.005, 1.0, 400)
DPI = 100  # tests/test_plots.py lowers it to keep its reference images small


@contextmanager
def _figure(path: Path, figsize=(8, 6), **kw):
    with plt.style.context(mplhep.style.ROOT):
        fig, ax = plt.subplots(figsize=figsize, **kw)
        try:
            yield fig, ax
            # no "Software" tag: the same figure gives the same bytes whatever matplotlib wrote it
            fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
        finally:
            plt.close(fig)


def _logx(ax) -> None:
    """Log x axis labelled at 1, 2, 5 x 10^n (ROOT style otherwise overlaps minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _headroom(ax, factor: float = 1.3) -> None:
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, lo + (hi - lo) * factor)


def _rej_curve(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None):
    """(efficiency grid, rejection on it, AUC) from one ROC computation, or None."""
    ok = np.isfinite(score)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)[ok]
    roc = roc_points(y[ok], score[ok], w)
    if roc is None:
        return None
    return (
        EFF_GRID,
        metrics.rejection_at(*roc, EFF_GRID, n_bkg=metrics.background_count(y[ok], w)),
        roc_area(*roc),
    )


def roc(
    path: Path,
    logits: np.ndarray,
    truth: np.ndarray,
    baselines: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
) -> Path:
    y = np.asarray(truth) == 1
    with _figure(path) as (fig, ax):
        series = {"model": logits, **(baselines or {})}
        for label, s in series.items():
            c = _rej_curve(y, np.asarray(s, dtype=np.float64).reshape(-1), weights)
            if c is not None:
                ax.plot(c[0], c[1], label=f"{label} (AUC = {c[2]:.4f})")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel("Signal efficiency")
        ax.set_ylabel("Background rejection 1/FPR")
        ax.legend()
    return path


def score_histogram(scores: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | None:
    """``np.histogram(..., density=True)``, weighted with ``weights``; None when the total weight is
    <= 0 (nothing to normalise)."""
    if weights is not None and not np.sum(weights) > 0:
        return None
    return np.histogram(scores, bins=edges, weights=weights, density=True)[0]


def score_hist(
    path: Path, logits: np.ndarray, truth: np.ndarray, class_names: Sequence[str], weights: np.ndarray | None = None
) -> Path:
    p = expit(np.asarray(logits, dtype=np.float64).reshape(-1))
    t = np.asarray(truth)
    edges = np.linspace(0, 1, 51)
    with _figure(path) as (fig, ax):
        for k, name in enumerate(class_names[:2]):
            sel = p[t == k]
            h = (
                score_histogram(sel, edges, None if weights is None else np.asarray(weights)[t == k])
                if sel.size
                else None
            )
            if h is not None:
                ax.stairs(h, edges, label=f"{name} ({sel.size})")
        ax.set_yscale("log")
        ax.set_xlabel(f"P({class_names[1] if len(class_names) > 1 else 'signal'})")
        ax.set_ylabel("Normalised events")
        ax.legend()
    return path


def roc_ovr(
    path: Path, logits: np.ndarray, truth: np.ndarray, class_names: Sequence[str], weights: np.ndarray | None = None
) -> Path:
    p = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    t = np.asarray(truth)
    with _figure(path) as (fig, ax):
        for k, name in enumerate(class_names):
            c = _rej_curve(t == k, p[:, k], weights)
            if c is not None:
                ax.plot(c[0], c[1], label=f"{name} vs rest (AUC = {c[2]:.4f})")
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel("Signal efficiency")
        ax.set_ylabel("Background rejection 1/FPR")
        ax.legend()
    return path


def confusion(
    path: Path, logits: np.ndarray, truth: np.ndarray, class_names: Sequence[str], weights: np.ndarray | None = None
) -> Path:
    k = len(class_names)
    frac = metrics.confusion_fractions(np.asarray(truth), np.argmax(logits, axis=1), k, weights)
    size = max(6.0, 0.8 * k + 3)
    with _figure(path, figsize=(size + 1, size)) as (fig, ax):
        im = ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
        fig.colorbar(im, ax=ax, label="Fraction of true class")
        ax.set_xticks(range(k), class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), class_names)
        ax.minorticks_off()
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if np.isfinite(frac[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{frac[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=10,
                            color="white" if frac[i, j] > 0.5 else "black",
                        )
    return path


def pred_vs_true(
    path: Path, pred: np.ndarray, truth: np.ndarray, label: str = "target", weights: np.ndarray | None = None
) -> Path:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    ok = np.isfinite(pred) & np.isfinite(truth)
    pred, truth = pred[ok], truth[ok]
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)[ok]
    with _figure(path, figsize=(8, 7)) as (fig, ax):
        if truth.size:
            lo, hi = np.percentile(truth, [0.5, 99.5])
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
            pad = 0.05 * (hi - lo)
            r = [[lo - pad, hi + pad]] * 2
            h, xe, ye = np.histogram2d(truth, pred, bins=100, range=r, weights=w)
            m = ax.pcolormesh(xe, ye, np.where(h > 0, h, np.nan).T, norm=LogNorm(), cmap="viridis")
            fig.colorbar(m, ax=ax, label="Events" if w is None else "Weighted events")
            ax.plot(r[0], r[0], color="red", lw=1, ls="--")
        ax.set_xlabel(f"True {label}")
        ax.set_ylabel(f"Predicted {label}")
    return path


def response(
    path: Path,
    pred: np.ndarray,
    truth: np.ndarray,
    baselines: Mapping[str, np.ndarray] | None = None,
    weights: np.ndarray | None = None,
) -> Path:
    series = [("model", *resolution.ratio_and_weights(pred, truth, weights))]
    series += [(name, *resolution.ratio_and_weights(b, truth, weights)) for name, b in (baselines or {}).items()]
    allx = np.concatenate([s for _, s, _ in series])
    with _figure(path) as (fig, ax):
        if allx.size:
            lo = min(np.percentile(s, 0.5) for _, s, _ in series if s.size)
            hi = max(np.percentile(s, 99.5) for _, s, _ in series if s.size)
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, 101)
            for name, x, w in series:
                total = x.size if w is None else np.sum(w)
                if not x.size or not total > 0:
                    continue
                s = resolution.response_summary(x, np.ones_like(x), w)
                h, _ = np.histogram(x, bins=edges, weights=w)
                ax.stairs(
                    h / max(total, 1) if w is None else h / total,
                    edges,
                    label=f"{name}: median {s['response_median']:.3f}, "
                    f"$\\sigma_{{core}}$ {100 * s['resolution_sigma']:.2f}%, "
                    f"$\\sigma_{{68}}$ {100 * s['resolution_iqr']:.2f}%",
                )
            ax.axvline(1.0, color="grey", lw=1, ls=":")
            _headroom(ax, 1.25)
        ax.set_xlabel("Predicted / true")
        ax.set_ylabel("Fraction of events" if weights is None else "Fraction of the weight")
        ax.legend(fontsize=12)
    return path


def resolution_vs_energy(path: Path, scans: Mapping[str, resolution.EnergyScan], unit: str = "GeV") -> Path:
    with _figure(path) as (fig, ax):
        emin, emax = np.inf, 0.0
        for name, sc in scans.items():
            ok = np.isfinite(sc.sigma_rel) & np.isfinite(sc.energy)
            if not ok.any():
                continue
            eb = ax.errorbar(
                sc.energy[ok],
                100 * sc.sigma_rel[ok],
                yerr=100 * np.nan_to_num(sc.sigma_rel_err[ok]),
                fmt="o",
                label=f"{name} (core $\\sigma$)",
            )
            emin, emax = min(emin, sc.energy[ok].min()), max(emax, sc.energy[ok].max())
            f = sc.fit
            if np.isfinite(f.get("fit_a", np.nan)):
                grid = np.geomspace(sc.energy[ok].min(), sc.energy[ok].max(), 200)
                ax.plot(
                    grid,
                    resolution.calo_resolution(grid, f["fit_a"], f["fit_b"], f["fit_c"]),
                    color=eb[0].get_color(),
                    label=f"a={f['fit_a']:.3g}%·√GeV, b={f['fit_b']:.3g}%, c={f['fit_c']:.3g}% GeV",
                )
        if emax > 0 and emin > 0:
            _logx(ax)
        _headroom(ax)
        ax.set_xlabel(f"True energy [{unit}]")
        ax.set_ylabel(r"$\sigma/E$ [%]")
        ax.legend(fontsize=12)
    return path


def response_vs_energy(path: Path, scans: Mapping[str, resolution.EnergyScan], unit: str = "GeV") -> Path:
    with _figure(path) as (fig, ax):
        for name, sc in scans.items():
            ok = np.isfinite(sc.response_median) & np.isfinite(sc.energy)
            if ok.any():
                ax.plot(sc.energy[ok], sc.response_median[ok], "o-", label=name)
        if any((sc.energy[np.isfinite(sc.energy)] > 0).all() and np.isfinite(sc.energy).any() for sc in scans.values()):
            _logx(ax)
        ax.axhline(1.0, color="grey", lw=1, ls=":")
        ax.set_xlabel(f"True energy [{unit}]")
        ax.set_ylabel("Median predicted / true")
        ax.legend()
    return path


def _history_series(history: Sequence[Mapping], key: str):
    x, y = [], []
    for i, h in enumerate(history):
        v = h.get(key)
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v):
            x.append(h.get("epoch", i))
            y.append(float(v))
    return np.asarray(x, dtype=float), np.asarray(y)


def loss(path: Path, history: Sequence[Mapping]) -> Path:
    labels = {
        "train_loss": "train (train mode, running)",
        "train_loss_eval": "train (eval mode)",
        "val_loss": "validation",
    }
    with _figure(path) as (fig, ax):
        for key, label in labels.items():
            x, y = _history_series(history, key)
            if y.size:
                ax.plot(x, y, "o-", label=label, ms=4)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.legend()
    return path


def metric_keys(history: Sequence[Mapping]) -> list[str]:
    keys = []
    for h in history:
        for k, v in h.items():
            if (
                k.startswith("val_")
                and k != "val_loss"
                and k not in keys
                and isinstance(v, (int, float, np.number))
                and not isinstance(v, bool)
            ):
                keys.append(k)
    return keys


def metric(path: Path, history: Sequence[Mapping], keys: Sequence[str]) -> Path:
    n = len(keys)
    ncol = min(n, 3)
    nrow = -(-n // ncol)
    with _figure(path, figsize=(6 * ncol, 4.5 * nrow), nrows=nrow, ncols=ncol, squeeze=False) as (fig, axes):
        for ax, key in zip(axes.flat, keys):
            for k, lab in ((key, "validation"), ("train_" + key[4:], "train")):
                x, y = _history_series(history, k)
                if y.size:
                    ax.plot(x, y, "o-", label=lab, ms=4)
            ax.set_xlabel("Epoch")
            ax.set_ylabel(key[4:])
            ax.legend(fontsize=11)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
    return path


def reweight_spectra(
    path: Path, edges: Sequence[float], before: np.ndarray, after: np.ndarray, class_names: Sequence[str], label: str
) -> Path:
    """Each class's train-split spectrum in one reweighting variable, before (dashed) and after
    (solid) the reweighting, each normalised to unit area."""
    edges = np.asarray(edges, dtype=np.float64)
    with _figure(path) as (_, ax):
        for c, name in enumerate(class_names):
            for counts, style, text in ((before[c], "--", "before"), (after[c], "-", "after")):
                total = counts.sum()
                if total > 0:
                    ax.stairs(counts / total, edges, linestyle=style, color=f"C{c}", label=f"{name} {text}")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of weight")
        _headroom(ax)
        ax.legend(fontsize=12, ncol=2)
    return path


def weight_distribution(path: Path, factors: np.ndarray, counts: np.ndarray, class_names: Sequence[str]) -> Path:
    """How the train split's events are reweighted: per class, the weight in each factor bin."""
    populated = counts > 0
    edges = (
        np.geomspace(max(factors[populated].min(), 1e-3) / 1.1, factors[populated].max() * 1.1, 31)
        if populated.any()
        else np.geomspace(0.1, 10, 31)
    )
    with _figure(path) as (_, ax):
        for c, name in enumerate(class_names):
            hist, _ = np.histogram(factors[c][populated[c]], edges, weights=counts[c][populated[c]])
            ax.stairs(hist, edges, color=f"C{c}", label=name)
        _logx(ax)
        ax.set_xlabel("reweighting factor")
        ax.set_ylabel("events (weighted)")
        ax.legend(fontsize=12)
    return path
