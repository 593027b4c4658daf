"""Response and resolution of a regressed quantity, per bin, and the calorimeter resolution fit.

Everything is computed on the ratio ``x = pred / truth`` (the "response"); events with a
zero or non-finite truth, or a non-finite prediction, are left out of the ratio.

Widths (all *relative*, i.e. divided by a location of the same distribution, so that a
global miscalibration of the scale does not change them):

``resolution_iqr``
    half the 15.87–84.13 % inter-quantile range (the "68 % effective sigma") divided by
    the median: ``(q84 - q16) / 2 / median``. Equals sigma/mu for a Gaussian.
``iqr_rel``
    the true inter-quartile range divided by the median: ``(q75 - q25) / median``
    (DeepCalo-style relative IQR; ``rIQR`` improvements are computed from this).
``resolution_rms``
    standard deviation divided by the mean, over all events (tail-sensitive on purpose).
``resolution_sigma``
    the Gaussian core: sigma/mu of a Gaussian fitted (``scipy.optimize.curve_fit``, chi2 on a
    histogram with Poisson errors, the model being the Gaussian *integrated* over each bin)
    to the events within mu ± 2 sigma, iterated from (median, 68 % half-width) until
    mu and sigma move by less than 1e-3 sigma (at most 10 iterations). NaN with fewer
    than ``MIN_CORE_EVENTS`` events in the window or if a fit fails.
    ``resolution_sigma_err`` is its statistical error from the fit covariance.

Calorimeter resolution (``fit_calo_resolution``): sigma/E in percent fitted as
``a/sqrt(E) (+) b (+) c/E`` (quadrature sum) with ``a`` in %·sqrt(GeV), ``b`` in %,
``c`` in %·GeV — the energy must therefore be in GeV. The per-bin sigma/E are the core
``resolution_sigma`` values, with their fit errors, at the mean true energy of the bin.
Bounds a, b, c ≥ 0; starting values from a non-negative linear least-squares fit of
(sigma/E)^2 = a^2/E + b^2 + c^2/E^2.

Per-event weights (``weights=``, e.g. generator weights, negative allowed; ``None``: every
event counts once, exactly the unweighted numbers): quantiles are ``weighted_quantile``'s;
means and the RMS are weighted means; the Gaussian core and Crystal Ball fits are weighted
least squares on the weighted histogram (bin content sum w, error sqrt(sum w^2), at least
the mean |w| of the fitted events, as the unweighted fit's error is at least one event), the
normalisation starting at the window's weight sum; ``MIN_CORE_EVENTS`` still counts events.
Negative-weight events keep their signed weight everywhere (cumulative sums, histograms,
means). Where the total weight of the events is <= 0 (a bin, a fit window) the numbers are
NaN, as they are for an empty bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit, nnls
from scipy.special import ndtr

NAN = float("nan")
MIN_CORE_EVENTS = 50
CORE_NSIGMA = 2.0
CORE_MAX_ITER = 10
# Gaussian quantiles of -1 sigma / +1 sigma
Q16, Q84 = 15.865525393145708, 84.13447460685429


@dataclass
class CoreFit:
    mu: float = NAN
    sigma: float = NAN
    mu_err: float = NAN
    sigma_err: float = NAN
    n_window: int = 0


def valid_ratio(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """pred/truth on events where it is defined and finite."""
    return ratio_and_weights(pred, truth, None)[0]


def ratio_and_weights(pred: np.ndarray, truth: np.ndarray, weights: np.ndarray | None):
    """(pred/truth, the same events' weights or None) on events where the ratio is defined and
    finite and the weight finite."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    ok = np.isfinite(pred) & np.isfinite(truth) & (truth != 0)
    if weights is None:
        return pred[ok] / truth[ok], None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    ok &= np.isfinite(w)
    return pred[ok] / truth[ok], w[ok]


def weighted_quantile(values: np.ndarray, weights: np.ndarray | None, q):
    """Quantile(s) ``q`` (fractions in [0, 1], scalar or array) of ``values`` with per-event weights.

    Zero-weight events are dropped; the others, sorted by value, get the plotting positions
    ``p_i = (C_i - C_1) / (C_n - C_1)`` with ``C_i = S_i - w_i / 2`` (``S_i`` the cumulative weight
    through event i: ``C_i`` is the middle of the event's weight), and the quantile interpolates
    the values linearly in p. With all weights equal ``p_i = (i - 1) / (n - 1)``: numpy's default
    ("linear", Hyndman-Fan type 7) definition, and then ``np.quantile`` itself is returned, so the
    numbers are exactly the unweighted ones (``weights=None`` is ``np.quantile`` too). Scaling all
    weights changes nothing. An integer weight k approximates k copies of the event (exact at the
    events' own positions when the first and last event weigh 1; in between the copies' steps are
    smoothed): no definition can repeat events exactly and also equal np.quantile for all-equal
    weights (weights 2, 2 would have to give both type 7 of [a, b] and of [a, a, b, b]).
    Negative weights keep their sign in ``S_i``; positions that step back are raised to the
    running maximum and clipped to [0, 1]. NaN when the total weight is <= 0 or nothing is left.
    """
    if weights is None:
        return np.quantile(np.asarray(values, dtype=np.float64), q)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    x, w = x[w != 0], w[w != 0]
    nan = np.full(np.shape(q), NAN)[()]
    if x.size == 0 or not w.sum() > 0:
        return nan
    if np.all(w == w[0]):
        return np.quantile(x, q)
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    middle = np.cumsum(w) - 0.5 * w
    span = middle[-1] - middle[0]
    if not span > 0:
        return nan
    p = np.clip(np.maximum.accumulate((middle - middle[0]) / span), 0.0, 1.0)
    return np.interp(np.asarray(q, dtype=np.float64), p, x)[()]


def weighted_mean(x: np.ndarray, weights: np.ndarray | None) -> float:
    """np.mean (``weights=None``) or sum(w x) / sum(w); NaN when there are no events or sum(w) <= 0."""
    if x.size == 0:
        return NAN
    if weights is None:
        return float(np.mean(x))
    total = np.sum(weights)
    return float(np.sum(weights * x) / total) if total > 0 else NAN


def _histogram(x: np.ndarray, weights: np.ndarray | None, bins: int, lo: float, hi: float):
    """(contents, their errors, edges) for a chi2 fit: counts and sqrt(max(count, 1)), or with weights
    sum w and sqrt(max(sum w^2, mean|w|^2)) (identical for unit weights)."""
    if weights is None:
        counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
        return counts.astype(np.float64), np.sqrt(np.maximum(counts, 1.0)), edges
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi), weights=weights)
    sumw2, _ = np.histogram(x, bins=bins, range=(lo, hi), weights=weights * weights)
    floor = np.mean(np.abs(weights)) if weights.size else 1.0
    return counts, np.sqrt(np.maximum(sumw2, floor * floor)), edges


def _finite(x: np.ndarray, weights: np.ndarray | None):
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if weights is None:
        ok = np.isfinite(x)
        return x[ok], None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    ok = np.isfinite(x) & np.isfinite(w) & (w != 0)
    return x[ok], w[ok]


def _select(x: np.ndarray, weights: np.ndarray | None, mask: np.ndarray):
    return x[mask], (None if weights is None else weights[mask])


def _weight_sum(x: np.ndarray, weights: np.ndarray | None) -> float:
    return float(x.size) if weights is None else float(np.sum(weights))


def gaussian_core(
    x: np.ndarray,
    nsigma: float = CORE_NSIGMA,
    max_iter: int = CORE_MAX_ITER,
    min_events: int = MIN_CORE_EVENTS,
    *,
    weights: np.ndarray | None = None,
) -> CoreFit:
    """Iterative ±nsigma-clipped binned Gaussian fit to the core of ``x`` (see module doc)."""
    x, w = _finite(x, weights)
    if x.size < min_events or not _weight_sum(x, w) > 0:
        return CoreFit(n_window=int(x.size))
    q16, mu, q84 = weighted_quantile(x, w, [Q16 / 100, 0.5, Q84 / 100])
    sigma = 0.5 * (q84 - q16)
    if not sigma > 0:
        return CoreFit(n_window=int(x.size))
    popt = pcov = None
    n_window = 0
    for _ in range(max_iter):
        lo, hi = mu - nsigma * sigma, mu + nsigma * sigma
        sel, ws = _select(x, w, (x >= lo) & (x <= hi))
        n_window = int(sel.size)
        if n_window < min_events or not _weight_sum(sel, ws) > 0:
            return CoreFit(n_window=n_window)
        nb = int(np.clip(n_window // 25, 10, 80))
        counts, err, edges = _histogram(sel, ws, nb, lo, hi)

        def model(_i, n, m, s, _e=edges):  # Gaussian integrated over each histogram bin
            s = abs(s) + 1e-300
            return n * (ndtr((_e[1:] - m) / s) - ndtr((_e[:-1] - m) / s))

        p0 = (_weight_sum(sel, ws), float(mu), float(sigma))
        try:
            popt, pcov = curve_fit(model, np.arange(nb), counts, p0=p0, sigma=err, absolute_sigma=True, maxfev=4000)
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            return CoreFit(n_window=n_window)
        new_mu, new_sigma = float(popt[1]), abs(float(popt[2]))
        if not (np.isfinite(new_mu) and np.isfinite(new_sigma) and new_sigma > 0) or not (lo < new_mu < hi):
            return CoreFit(n_window=n_window)
        converged = abs(new_sigma - sigma) < 1e-3 * sigma and abs(new_mu - mu) < 1e-3 * sigma
        mu, sigma = new_mu, new_sigma
        if converged:
            break
    perr = np.sqrt(np.abs(np.diag(pcov))) if pcov is not None else np.full(3, np.nan)
    perr = np.where(np.isfinite(perr), perr, np.nan)
    return CoreFit(mu=mu, sigma=sigma, mu_err=float(perr[1]), sigma_err=float(perr[2]), n_window=n_window)


CB_KEYS = ("cb_mu", "cb_sigma", "cb_sigma_err", "cb_beta", "cb_m")
CB_WINDOW = (6.0, 3.0)  # fit range: median - 6 / + 3 of the 68 % half-width (room for the low tail)


def crystal_ball_fit(
    x: np.ndarray, min_events: int = MIN_CORE_EVENTS, *, weights: np.ndarray | None = None
) -> dict[str, float]:
    """Crystal Ball (``scipy.stats.crystalball``: Gaussian core, power-law tail on the low side,
    as energy losses give) fitted to ``x`` by binned chi2 (Poisson errors, model integrated over
    each bin through the CDF) within ``CB_WINDOW`` around the median. Keys: ``cb_mu`` (core
    location), ``cb_sigma`` (core width relative to ``cb_mu``, like ``resolution_sigma``),
    ``cb_sigma_err`` (its fit error), ``cb_beta`` and ``cb_m`` (where the tail starts, in
    sigmas, and its power). All NaN with fewer than ``min_events`` events or a failed fit.
    With ``weights``: weighted quantiles and histogram (module doc); NaN if the weight is <= 0."""
    from scipy.stats import crystalball

    out = dict.fromkeys(CB_KEYS, NAN)
    x, w = _finite(x, weights)
    if x.size < min_events or not _weight_sum(x, w) > 0:
        return out
    q16, med, q84 = weighted_quantile(x, w, [Q16 / 100, 0.5, Q84 / 100])
    width = 0.5 * (q84 - q16)
    if not width > 0:
        return out
    lo, hi = med - CB_WINDOW[0] * width, med + CB_WINDOW[1] * width
    sel, ws = _select(x, w, (x >= lo) & (x <= hi))
    if not _weight_sum(sel, ws) > 0:
        return out
    counts, err, edges = _histogram(sel, ws, int(np.clip(sel.size // 25, 20, 100)), lo, hi)

    def model(_i, n, beta, m, loc, scale):
        return n * np.diff(crystalball.cdf(edges, beta, m, loc=loc, scale=scale))

    p0 = (_weight_sum(sel, ws), 1.5, 3.0, float(med), float(width))
    bounds = ([0.0, 0.1, 1.01, lo, 1e-6 * width], [np.inf, 10.0, 100.0, hi, 10.0 * width])
    try:
        popt, pcov = curve_fit(
            model, np.arange(len(counts)), counts, p0=p0, sigma=err, absolute_sigma=True, bounds=bounds, maxfev=4000
        )
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return out
    _, beta, m, loc, scale = (float(v) for v in popt)
    if loc == 0:
        return out
    scale_err = float(np.sqrt(abs(pcov[4, 4]))) if np.isfinite(pcov[4, 4]) else NAN
    out.update(cb_mu=loc, cb_sigma=scale / abs(loc), cb_sigma_err=scale_err / abs(loc), cb_beta=beta, cb_m=m)
    return out


def response_summary(pred: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Response and relative resolutions of pred/truth (keys without prefix, see module doc).

    Keys: ``response_median``, ``response_core`` (fitted core mean), ``resolution_iqr``,
    ``resolution_rms``, ``resolution_sigma``, ``resolution_sigma_err``, ``iqr_rel``.
    All NaN when there are no usable events (or, with ``weights``, their weight is <= 0).
    """
    x, w = ratio_and_weights(pred, truth, weights)
    if w is not None:
        x, w = x[w != 0], w[w != 0]
    out = dict.fromkeys(
        (
            "response_median",
            "response_core",
            "resolution_iqr",
            "resolution_rms",
            "resolution_sigma",
            "resolution_sigma_err",
            "iqr_rel",
        ),
        NAN,
    )
    if x.size == 0 or not _weight_sum(x, w) > 0:
        return out
    q16, q25, med, q75, q84 = weighted_quantile(x, w, np.array([Q16, 25.0, 50.0, 75.0, Q84]) / 100)
    out["response_median"] = float(med)
    if med != 0:
        out["resolution_iqr"] = float(0.5 * (q84 - q16) / med)
        out["iqr_rel"] = float((q75 - q25) / med)
    mean = weighted_mean(x, w)
    if x.size > 1 and mean != 0:
        rms = np.std(x) if w is None else np.sqrt(max(weighted_mean((x - mean) ** 2, w), 0.0))
        out["resolution_rms"] = float(rms / mean)
    core = gaussian_core(x, weights=w)
    out["response_core"] = core.mu
    if np.isfinite(core.mu) and core.mu != 0:
        out["resolution_sigma"] = core.sigma / core.mu
        out["resolution_sigma_err"] = core.sigma_err / abs(core.mu)
    return out


# ------------------------------------------------------------------ energy binning


def _round_sig(x: np.ndarray, sig: int, how: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    mag = np.where(x != 0, np.floor(np.log10(np.abs(np.where(x != 0, x, 1.0)))), 0.0)
    scale = 10.0 ** (sig - 1 - mag)
    f = {"round": np.round, "floor": np.floor, "ceil": np.ceil}[how]
    return f(x * scale) / scale


def quantile_edges(values: np.ndarray, n_bins: int = 8, sig: int = 3, weights: np.ndarray | None = None) -> list[float]:
    """``n_bins`` equal-population (with ``weights``: equal-weight) bin edges, rounded to ``sig``
    significant digits, covering all finite values (the last edge lies strictly above the
    maximum so ``[lo, hi)`` holds it)."""
    v, w = _finite(values, weights)
    if v.size == 0:
        return []
    q = weighted_quantile(v, w, np.linspace(0, 1, n_bins + 1))
    if not np.isfinite(q).all():
        q = np.quantile(v, np.linspace(0, 1, n_bins + 1))
    inner = _round_sig(q[1:-1], sig, "round")
    lo = float(_round_sig(np.array([v.min()]), sig, "floor")[0])
    vmax = float(v.max())
    hi = float(_round_sig(np.array([vmax]), sig, "ceil")[0])
    if hi <= vmax:
        unit = 10.0 ** (np.floor(np.log10(abs(vmax))) - (sig - 1)) if vmax != 0 else 1.0
        hi = float(_round_sig(np.array([vmax + unit]), sig, "ceil")[0])
    edges = np.unique(np.concatenate([[lo], inner[(inner > lo) & (inner < hi)], [hi]]))
    return [float(e) for e in edges]


@dataclass
class EnergyScan:
    """Per-bin resolution of one estimator versus true energy (arrays over bins)."""

    edges: list[float]
    energy: np.ndarray  # mean true energy of the events in the bin (weighted mean with weights)
    events: np.ndarray
    response_median: np.ndarray
    sigma_rel: np.ndarray  # core sigma/mu (fraction)
    sigma_rel_err: np.ndarray
    iqr_rel68: np.ndarray  # resolution_iqr
    rms_rel: np.ndarray
    fit: dict[str, float] = field(default_factory=dict)
    weight_sum: np.ndarray | None = None  # sum of the events' weights per bin (None: unweighted)


def energy_scan(
    pred: np.ndarray, truth: np.ndarray, energy: np.ndarray, edges: list[float], weights: np.ndarray | None = None
) -> EnergyScan:
    energy = np.asarray(energy, dtype=np.float64)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    nb = max(len(edges) - 1, 0)
    cols = {
        k: np.full(nb, np.nan)
        for k in ("energy", "response_median", "sigma_rel", "sigma_rel_err", "iqr_rel68", "rms_rel")
    }
    events = np.zeros(nb, dtype=np.int64)
    weight_sum = None if w is None else np.zeros(nb)
    for i in range(nb):
        m = (energy >= edges[i]) & (energy < edges[i + 1])
        events[i] = int(m.sum())
        if w is not None:
            weight_sum[i] = float(np.sum(w[m]))
        if events[i] == 0:
            continue
        cols["energy"][i] = weighted_mean(energy[m], None if w is None else w[m])
        s = response_summary(pred[m], truth[m], None if w is None else w[m])
        cols["response_median"][i] = s["response_median"]
        cols["sigma_rel"][i] = s["resolution_sigma"]
        cols["sigma_rel_err"][i] = s["resolution_sigma_err"]
        cols["iqr_rel68"][i] = s["resolution_iqr"]
        cols["rms_rel"][i] = s["resolution_rms"]
    scan = EnergyScan(edges=list(edges), events=events, weight_sum=weight_sum, **cols)
    scan.fit = fit_calo_resolution(scan.energy, 100.0 * scan.sigma_rel, 100.0 * scan.sigma_rel_err)
    return scan


# ------------------------------------------------------------------ calorimeter fit


def calo_resolution(energy, a, b, c):
    """sigma/E in % for E in GeV: a/sqrt(E) (+) b (+) c/E; a in %·sqrt(GeV), b in %, c in %·GeV."""
    energy = np.asarray(energy, dtype=np.float64)
    return np.sqrt(a * a / energy + b * b + (c / energy) ** 2)


FIT_KEYS = ("fit_a", "fit_b", "fit_c", "fit_a_err", "fit_b_err", "fit_c_err", "fit_chi2_ndf")


def fit_calo_resolution(energy: np.ndarray, res_pct: np.ndarray, err_pct: np.ndarray) -> dict[str, float]:
    """Fit ``calo_resolution`` to per-bin sigma/E [%] with errors [%] (points with a non-finite
    value, energy ≤ 0 or error ≤ 0 are dropped). Needs ≥ 3 points, else all NaN.
    Errors are the covariance errors with ``absolute_sigma=True`` (not rescaled by chi2/ndf;
    ``fit_chi2_ndf`` is reported so the reader can judge, NaN when ndf = 0)."""
    out = dict.fromkeys(FIT_KEYS, NAN)
    e = np.asarray(energy, dtype=np.float64)
    y = np.asarray(res_pct, dtype=np.float64)
    s = np.asarray(err_pct, dtype=np.float64)
    ok = np.isfinite(e) & np.isfinite(y) & np.isfinite(s) & (e > 0) & (s > 0) & (y > 0)
    e, y, s = e[ok], y[ok], s[ok]
    if e.size < 3:
        return out
    # starting point: NNLS on y^2 = a^2/E + b^2 + c^2/E^2, weighted by 1/sigma(y^2) = 1/(2 y s)
    w = 1.0 / (2.0 * y * s)
    A = np.stack([1.0 / e, np.ones_like(e), 1.0 / e**2], axis=1) * w[:, None]
    coef, _ = nnls(A, y**2 * w)
    p0 = np.maximum(np.sqrt(np.maximum(coef, 0.0)), 1e-3)
    try:
        popt, pcov = curve_fit(
            calo_resolution, e, y, p0=p0, sigma=s, absolute_sigma=True, bounds=(0.0, np.inf), maxfev=20000
        )
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return out
    perr = np.sqrt(np.abs(np.diag(pcov)))
    perr = np.where(np.isfinite(perr), perr, np.nan)
    chi2 = float(np.sum(((calo_resolution(e, *popt) - y) / s) ** 2))
    ndf = e.size - 3
    out.update(
        fit_a=float(popt[0]),
        fit_b=float(popt[1]),
        fit_c=float(popt[2]),
        fit_a_err=float(perr[0]),
        fit_b_err=float(perr[1]),
        fit_c_err=float(perr[2]),
        fit_chi2_ndf=chi2 / ndf if ndf > 0 else NAN,
    )
    return out
