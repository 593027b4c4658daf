"""Study 000 sample: real vs fake electron candidates seen as calorimeter towers.

Writes ``electron_000.root, ...`` and ``fake_000.root, ...`` (TTree ``events``), one
event per electron candidate, with the candidate (``ele_pt``, ``ele_eta``, ``ele_phi``),
the towers within dR < 0.4 of it (``tower_eta``, ``tower_phi``, ``tower_e``,
``tower_em``, ``tower_had``; one shared counter ``ntower``) and three baseline
variables of a cut-based selection (``ele_iso``, ``ele_width``, ``ele_hoe``).

Detector model (a toy, grounded enough that the task is neither trivial nor impossible)
    * A fixed grid of cells, 0.0174 in eta and 2*pi/360 = 0.01745 in phi (CMS ECAL
      crystal size; 360 cells make the phi wrap exact). Cell i spans
      [i*0.0174, (i+1)*0.0174) in eta, likewise in phi, and towers sit at cell centres;
      ``tower_phi`` is wrapped into [-pi, pi).
    * Two channels per cell: EM (ECAL) and hadronic (HCAL). Each gets Gaussian noise
      (sigma 0.045 GeV) and is zero-suppressed below 0.1 GeV. A tower is a cell
      whose centre is within dR < 0.4 of the candidate with at least one channel above
      threshold; ``tower_e = tower_em + tower_had`` (so ``tower_e > 0.1`` always).
    * Showers are deposited by integrating 2D Gaussian profiles over the cells (erf
      differences), so the images have no sampling artefacts.
    * Response: EM 10%/sqrt(E) (+) 1%, hadronic 80%/sqrt(E) (+) 5%, per particle.

Physics
    * Candidates: |eta| < 2.4 and phi uniform in [-pi, pi) for both classes, so neither
      position nor the phi wrap tells the classes apart. pT in 10-100 GeV from a
      truncated exponential, fakes somewhat softer than electrons (slopes 28 / 20 GeV).
    * Electrons: EM shower with a core (sigma ~0.45 cell, Moliere radius ~1 cell) and a
      tail (sigma ~1.6 cells), ~1% HCAL leakage, bremsstrahlung photons spread along
      phi by the 3.8 T field (dphi up to 0.735/pT, so wide in phi but narrow in eta,
      which is why the width variable is measured in eta), isolated: only pile-up
      around, plus a few percent with nearby jet activity.
    * Fakes (jets): 70% mixed showers (pi0 photons + charged hadron: broad, 5-50%
      hadronic, lumpy) and 30% pi0-rich jets whose leading object is a narrow
      two-photon cluster with low H/E (hard to tell from an electron); jet remnants
      (photons and hadrons, about exp(-dR/0.1) around the axis) spoil the isolation.
    * Pile-up/underlying event in every event: Poisson(5-25) soft particles over
      the cone.

Candidate and baseline variables (computed from the written towers, float64)
    * ``ele_pt``: measured energy of the candidate's cluster / cosh(ele_eta) (the
      electron's shower incl. brem; a fake's leading object).
    * ``ele_iso``: sum of tower ET = E / cosh(tower_eta) over 0.1 <= dR < 0.4, / ele_pt.
    * ``ele_width``: energy-weighted RMS of (tower_eta - ele_eta) over towers dR < 0.1.
    * ``ele_hoe``: sum tower_had / max(sum tower_em, 0.01 GeV) over towers dR < 0.1.

Everything is vectorized over the events of a chunk (``CHUNK_SIZE`` events); each chunk
is seeded from ``numpy.random.SeedSequence(seed, spawn_key=(class, chunk))``, so the
same seed gives identical arrays, independent of ``events_per_file``.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
from scipy.special import ndtr

from hepray.samples.common import (
    DEFAULT_EVENTS_PER_FILE,
    DEFAULT_TREE,
    write_classes,
)

# --- detector ------------------------------------------------------------------------
CELL_ETA = 0.0174
N_PHI = 360
CELL_PHI = 2.0 * np.pi / N_PHI
CONE = 0.4
INNER = 0.1  # core radius for ele_width / ele_hoe, inner radius of the isolation annulus
HALF = int(np.ceil(CONE / min(CELL_ETA, CELL_PHI))) + 1  # 24: window of cells per side
WIN = 2 * HALF + 1  # 49 x 49 cells around the candidate's cell
THRESHOLD = 0.1  # GeV, per channel, after noise
NOISE_EM = 0.045  # GeV per cell
NOISE_HAD = 0.045  # GeV per cell
ETA_MAX = 2.4
PT_MIN, PT_MAX = 10.0, 100.0
BEND = 0.735  # dphi [rad] * pT [GeV] at the ECAL: 0.3 * 3.8 T * 1.29 m / 2

# --- showers (sizes in cells) -------------------------------------------------------
EM_CORE_SIGMA = 0.45
EM_TAIL_SIGMA = 1.6
HAD_SIGMA = 2.0
LEAK_SIGMA = 1.5
SOFT_EM_SIGMA = 0.6  # soft photons: one Gaussian, their tails are below threshold anyway
REACH = 2.5  # profiles are integrated out to >= 2.5 sigma

CLASSES = ("electron", "fake")
CHUNK_SIZE = 1000
PT_SLOPE = {"electron": 28.0, "fake": 20.0}
PI0_RICH_FRACTION = 0.3

BRANCHES = (
    "ele_pt",
    "ele_eta",
    "ele_phi",
    "ele_iso",
    "ele_width",
    "ele_hoe",
    "tower_eta",
    "tower_phi",
    "tower_e",
    "tower_em",
    "tower_had",
)


class _Deposits:
    """Collects Gaussian energy deposits of one chunk and integrates them on the grid.

    Positions ``u, v`` are in cell units in the candidate-local frame: the candidate's
    own cell spans [0, 1) in both, so cell k (k = -HALF..HALF) spans [k, k+1).
    """

    def __init__(self, n: int):
        self.n = n
        self.keys: dict[str, list[np.ndarray]] = {"em": [], "had": []}
        self.values: dict[str, list[np.ndarray]] = {"em": [], "had": []}

    def add(self, channel: str, evt, u, v, energy, sigma: float) -> None:
        energy = np.asarray(energy, dtype=np.float64)
        keep = energy > 1e-3
        evt, u, v, energy = evt[keep], u[keep], v[keep], energy[keep]
        if not len(evt):
            return
        h = int(np.ceil(REACH * sigma))  # patch of (2h+1)^2 cells, >= REACH sigma each side
        offs = np.arange(-h, h + 1)
        ku = np.floor(u).astype(np.int64)[:, None] + offs  # (M, P) cell indices
        kv = np.floor(v).astype(np.int64)[:, None] + offs
        fu = ndtr((ku + 1 - u[:, None]) / sigma) - ndtr((ku - u[:, None]) / sigma)
        fv = ndtr((kv + 1 - v[:, None]) / sigma) - ndtr((kv - v[:, None]) / sigma)
        fu *= energy[:, None]
        inside = (np.abs(ku) <= HALF)[:, :, None] & (np.abs(kv) <= HALF)[:, None, :]
        key = (evt[:, None, None] * WIN + (ku + HALF)[:, :, None]) * WIN + (kv + HALF)[:, None, :]
        val = fu[:, :, None] * fv[:, None, :]
        self.keys[channel].append(key[inside])
        self.values[channel].append(val[inside])

    def grid(self, channel: str) -> np.ndarray:
        size = self.n * WIN * WIN
        if not self.keys[channel]:
            return np.zeros((self.n, WIN, WIN))
        keys = np.concatenate(self.keys[channel])
        vals = np.concatenate(self.values[channel])
        return np.bincount(keys, weights=vals, minlength=size).reshape(self.n, WIN, WIN)


def _smear(rng, energy, stochastic, constant):
    """Energy after the calorimeter response: sigma/E = stochastic/sqrt(E) (+) constant."""
    energy = np.asarray(energy, dtype=np.float64)
    rel = np.sqrt(stochastic**2 / np.maximum(energy, 1e-3) + constant**2)
    return np.clip(energy * (1.0 + rel * rng.standard_normal(energy.shape)), 0.0, None)


def _em_shower(dep: _Deposits, rng, evt, u, v, energy) -> None:
    """Photon/electron shower: core + tail, with shower-to-shower fluctuations."""
    m = len(evt)
    core = rng.uniform(0.78, 0.9, m)
    # two sigma classes (patch sizes) only; fluctuations go into the core/tail split
    dep.add("em", evt, u, v, energy * core, EM_CORE_SIGMA)
    dep.add("em", evt, u, v, energy * (1.0 - core), EM_TAIL_SIGMA)


def _soft_particles(dep: _Deposits, rng, evt, u, v, energy, photon_fraction) -> None:
    """Soft photons (EM) and hadrons (an early EM part from pi0s in the shower, the rest
    broad in the HCAL, displaced from the particle by the shower's fluctuations)."""
    m = len(evt)
    photon = rng.random(m) < photon_fraction
    e = np.where(photon, _smear(rng, energy, 0.1, 0.01), _smear(rng, energy, 0.8, 0.05))
    em = np.where(photon, e, e * rng.uniform(0.0, 0.4, m))
    du, dv = np.where(photon, 0.0, rng.normal(0, 0.5, (2, m)))
    dep.add("em", evt, u + du, v + dv, em, SOFT_EM_SIGMA)
    du, dv = rng.normal(0, 1.0, (2, m))
    dep.add("had", evt, u + du, v + dv, e - em, HAD_SIGMA)


def _cell_units(deta, dphi):
    return deta / CELL_ETA, dphi / CELL_PHI


def _pileup(dep: _Deposits, rng, n, fu, fv, eta) -> None:
    """Pile-up and underlying event: Poisson soft particles uniform over the cone."""
    mu = rng.uniform(5.0, 25.0, n)
    count = rng.poisson(mu)
    evt = np.repeat(np.arange(n), count)
    m = len(evt)
    r = (CONE + 0.03) * np.sqrt(rng.random(m))
    a = rng.uniform(0, 2 * np.pi, m)
    deta, dphi = r * np.cos(a), r * np.sin(a)
    pt = rng.exponential(0.3, m) + 0.05
    energy = pt * np.cosh(eta[evt] + deta)
    du, dv = _cell_units(deta, dphi)
    _soft_particles(dep, rng, evt, fu[evt] + du, fv[evt] + dv, energy, 0.45)


def _jet_remnant(dep: _Deposits, rng, evt, energy, scale, mean_count, fu, fv, eta) -> None:
    """Jet particles around the candidate: energy shared among 1 + Poisson(mean_count)."""
    count = 1 + rng.poisson(mean_count, len(evt))
    pevt = np.repeat(evt, count)
    m = len(pevt)
    share = rng.gamma(1.0, 1.0, m)
    total = np.bincount(pevt, weights=share, minlength=dep.n)
    penergy = np.repeat(energy, count) * share / total[pevt]
    r = rng.exponential(scale, m)
    a = rng.uniform(0, 2 * np.pi, m)
    deta, dphi = r * np.cos(a), r * np.sin(a)
    du, dv = _cell_units(deta, dphi)
    penergy = penergy * np.cosh(eta[pevt] + deta) / np.cosh(eta[pevt])
    _soft_particles(dep, rng, pevt, fu[pevt] + du, fv[pevt] + dv, penergy, 0.35)


def _pt_spectrum(rng, n, slope):
    """pT in [PT_MIN, PT_MAX] from exp(-pT/slope) (inverse CDF of the truncated law)."""
    span = 1.0 - np.exp(-(PT_MAX - PT_MIN) / slope)
    return PT_MIN - slope * np.log1p(-rng.random(n) * span)


def _electrons(dep: _Deposits, rng, n, fu, fv, eta, pt_true):
    cosh = np.cosh(eta)
    evt = np.arange(n)
    # shower centre relative to the candidate (track) position
    u0 = fu + rng.normal(0, 0.25, n)
    v0 = fv + rng.normal(0, 0.25, n)
    e_meas = _smear(rng, pt_true * cosh, 0.1, 0.01)
    leak = np.minimum(rng.exponential(0.012, n), 0.15)
    e_em, e_had = e_meas * (1 - leak), e_meas * leak
    # bremsstrahlung: photons emitted along the track, spread in phi between the
    # initial direction and the impact point (dphi up to BEND/pT), none in eta
    f_brem = 0.7 * rng.random(n) ** 2
    charge = rng.choice([-1.0, 1.0], n)
    e_main = e_em * (1 - f_brem)
    _em_shower(dep, rng, evt, u0, v0, e_main)
    for _ in range(2):
        t = rng.random(n)
        dv = charge * t * BEND / pt_true / CELL_PHI
        _em_shower(dep, rng, evt, u0, v0 + dv, e_em * f_brem / 2)
    dep.add("had", evt, u0, v0, e_had, LEAK_SIGMA)
    # a few percent with nearby jet activity (heavy flavour, overlapping jets)
    busy = rng.random(n) < 0.06
    if busy.any():
        _jet_remnant(
            dep, rng, evt[busy], pt_true[busy] * cosh[busy] * rng.uniform(0.1, 0.6, busy.sum()), 0.2, 1.5, fu, fv, eta
        )
    return e_meas / cosh


def _fakes(dep: _Deposits, rng, n, fu, fv, eta, pt_true):
    cosh = np.cosh(eta)
    e_true = pt_true * cosh
    pi0_rich = rng.random(n) < PI0_RICH_FRACTION
    u0 = fu + rng.normal(0, 0.3, n)
    v0 = fv + rng.normal(0, 0.3, n)

    # mixed leading object: a few pi0 photons and a charged hadron
    f_had = np.where(pi0_rich, np.minimum(rng.exponential(0.03, n), 0.3), rng.uniform(0.05, 0.5, n))
    e_em = _smear(rng, e_true * (1 - f_had), 0.1, 0.01)
    e_had = _smear(rng, e_true * f_had, 0.8, 0.05)

    # EM part: two photons. pi0-rich: one pi0 -> gamma gamma, separation ~ 2m/pT in
    # (eta, phi), energy split flat; mixed: photons scattered over a few cells.
    x = np.where(pi0_rich, rng.uniform(0.05, 0.95, n), rng.uniform(0.5, 0.9, n))
    sep = np.where(pi0_rich, 0.27 / pt_true * rng.uniform(1.0, 2.0, n), 0.0)
    a = rng.uniform(0, 2 * np.pi, n)
    sep_u, sep_v = _cell_units(sep * np.cos(a), sep * np.sin(a))
    spread = np.where(pi0_rich, 0.0, 1.0)
    evt = np.arange(n)
    u1 = u0 + (1 - x) * sep_u + spread * rng.normal(0, 0.4, n)
    v1 = v0 + (1 - x) * sep_v + spread * rng.normal(0, 0.4, n)
    u2 = u0 - x * sep_u + spread * rng.normal(0, 1.5, n)
    v2 = v0 - x * sep_v + spread * rng.normal(0, 1.5, n)
    _em_shower(dep, rng, evt, u1, v1, e_em * x)
    _em_shower(dep, rng, evt, u2, v2, e_em * (1 - x))
    # hadronic part: broad and lumpy (two sub-showers)
    share = rng.uniform(0.3, 0.7, n)
    for part in (share, 1 - share):
        du, dv = rng.normal(0, 1.5, (2, n))
        dep.add("had", evt, u0 + du, v0 + dv, e_had * part, HAD_SIGMA)

    # rest of the jet: leading fraction z, remnant energy e_true (1 - z) / z
    z = np.where(pi0_rich, rng.uniform(0.55, 0.95, n), rng.uniform(0.3, 0.8, n))
    remnant = e_true * (1 - z) / z
    for mask, scale, count in ((pi0_rich, 0.12, 2.5), (~pi0_rich, 0.10, 5.0)):
        if mask.any():
            _jet_remnant(dep, rng, evt[mask], remnant[mask], scale, count, fu, fv, eta)
    return (e_em + e_had) / cosh


def _noisy_channels(rng, dep: _Deposits):
    """The EM and hadronic grids of the window with each cell's noise added (EM drawn first)."""
    em = dep.grid("em")
    em += NOISE_EM * rng.standard_normal(em.shape, dtype=np.float32)
    had = dep.grid("had")
    had += NOISE_HAD * rng.standard_normal(had.shape, dtype=np.float32)
    return em, had


def _towers(em, had, tower):
    """Towers as flat arrays in (event, eta, phi) order: event, window indices (eta, phi) and
    the EM and hadronic energies, each channel zero-suppressed on its own."""
    flat = np.flatnonzero(tower)
    tevt, rest = np.divmod(flat, WIN * WIN)
    iu, iv = np.divmod(rest, WIN)
    t_em = em.reshape(-1)[flat]
    t_em[t_em <= THRESHOLD] = 0.0
    t_had = had.reshape(-1)[flat]
    t_had[t_had <= THRESHOLD] = 0.0
    return tevt, iu, iv, t_em, t_had


def _baseline_variables(n, tevt, t_deta, t_dphi, t_eta, t_em, t_had, ele_pt):
    """ele_iso, ele_width, ele_hoe of a cut-based selection, from the towers (float64)."""
    t_e = t_em + t_had
    core = t_deta**2 + t_dphi**2 < INNER**2

    def per_event(weights):
        return np.bincount(tevt, weights=weights, minlength=n)

    iso = per_event(np.where(core, 0.0, t_e / np.cosh(t_eta))) / ele_pt
    w = np.where(core, t_e, 0.0)
    wsum = np.maximum(per_event(w), 1e-9)
    mean = per_event(w * t_deta) / wsum
    width = np.sqrt(per_event(w * (t_deta - mean[tevt]) ** 2) / wsum)
    hoe = per_event(np.where(core, t_had, 0.0)) / np.maximum(per_event(np.where(core, t_em, 0.0)), 0.01)
    return iso, width, hoe


def generate_chunk(rng: np.random.Generator, n: int, kind: str) -> dict:
    """One chunk of ``n`` events of class ``kind`` ("electron" or "fake") as arrays."""
    if kind not in CLASSES:
        raise ValueError(f"unknown class {kind!r}: expected one of {CLASSES}")
    eta = rng.uniform(-ETA_MAX, ETA_MAX, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    # candidate-local frame: fractional position of the candidate inside its cell
    ie0 = np.floor(eta / CELL_ETA).astype(np.int64)
    ip0 = np.floor(phi / CELL_PHI).astype(np.int64)
    fu = eta / CELL_ETA - ie0
    fv = phi / CELL_PHI - ip0

    pt_true = _pt_spectrum(rng, n, PT_SLOPE[kind])
    dep = _Deposits(n)
    if kind == "electron":
        ele_pt = _electrons(dep, rng, n, fu, fv, eta, pt_true)
    else:
        ele_pt = _fakes(dep, rng, n, fu, fv, eta, pt_true)
    _pileup(dep, rng, n, fu, fv, eta)

    # noise, zero suppression per channel, cone (dense over the window)
    em, had = _noisy_channels(rng, dep)
    k = np.arange(-HALF, HALF + 1)
    deta = (k + 0.5 - fu[:, None]) * CELL_ETA  # (n, WIN): cell centre - candidate
    dphi = (k + 0.5 - fv[:, None]) * CELL_PHI
    cone = (deta[:, :, None] ** 2 + dphi[:, None, :] ** 2) < CONE**2
    tevt, iu, iv, t_em, t_had = _towers(em, had, cone & ((em > THRESHOLD) | (had > THRESHOLD)))
    counts = np.bincount(tevt, minlength=n)
    t_eta = (ie0[tevt] + iu - HALF + 0.5) * CELL_ETA
    ip = (ip0[tevt] + iv - HALF + N_PHI // 2) % N_PHI - N_PHI // 2  # wrapped into [-180, 180)
    t_phi = (ip + 0.5) * CELL_PHI
    iso, width, hoe = _baseline_variables(n, tevt, deta[tevt, iu], dphi[tevt, iv], t_eta, t_em, t_had, ele_pt)

    def jag(values):
        return ak.unflatten(np.asarray(values, dtype=np.float32), counts)

    return {
        "ele_pt": ele_pt.astype(np.float32),
        "ele_eta": eta.astype(np.float32),
        "ele_phi": phi.astype(np.float32),
        "ele_iso": iso.astype(np.float32),
        "ele_width": width.astype(np.float32),
        "ele_hoe": hoe.astype(np.float32),
        "tower_eta": jag(t_eta),
        "tower_phi": jag(t_phi),
        "tower_e": jag(t_em + t_had),
        "tower_em": jag(t_em),
        "tower_had": jag(t_had),
    }


def generate(
    out_dir: str | Path,
    events: int,
    seed: int = 1,
    fmt: str = "ttree",
    *,
    events_per_file: int = DEFAULT_EVENTS_PER_FILE,
    tree: str = DEFAULT_TREE,
) -> list[Path]:
    """Write ``events`` electron and ``events`` fake candidates into ``out_dir``.

    Returns the paths: ``electron_000.root, ...`` then ``fake_000.root, ...``.
    """
    return write_classes(
        out_dir,
        CLASSES,
        generate_chunk,
        events,
        seed,
        fmt,
        chunk_size=CHUNK_SIZE,
        events_per_file=events_per_file,
        tree=tree,
    )
