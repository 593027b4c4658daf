"""Study 001 sample: single particles in an LCD-like calorimeter, ECAL 25x25x25 and HCAL 5x5x60 cells.

Writes ``electron_000.root, ...``, ``photon_*.root``, ``pi0_*.root`` and ``chpi_*.root`` (TTree
``events``), ``events`` of each, one particle per event with its true ``energy`` [GeV], log-uniform
in 10-500 GeV (the study's range; log-uniform so the low-energy bins of a resolution curve are
populated, where the a/sqrt(E) and c/E terms show), ``pdg`` (+-11, 22, 111, +-211), the impact point
on the ECAL face (``impact_x``, ``impact_y`` [mm]), the cells above threshold and their sums
``ecal_sum`` / ``hcal_sum`` [GeV] (the linear-calibration baseline). ``pi0`` files also hold the two
photons' true energies (``photon1_energy``, ``photon2_energy``, summing to ``energy``) and their
``opening_angle`` [rad].

Cells are stored sparse, one jagged entry per cell above threshold: ``ecal_x``, ``ecal_y``, ``ecal_z``
(uint8 cell indices, z = depth layer) and ``ecal_e`` (float32, GeV) sharing the counter ``necal``,
likewise ``hcal_*``/``nhcal``. A job rasterizes them with the ``voxels`` input (``points`` and
``range: [[0, 25], [0, 25], [0, 25]]``, or ``[[0, 5], [0, 5], [0, 60]]``). Why sparse, measured on
400 electrons and 400 pi+- (zlib, as written here): 4.6 / 2.7 KB per event, against 5.4 / 3.3 KB for
flat fixed-size ``float32[15625]`` + ``float32[1500]`` branches (mostly zeros, which compress well);
read + rasterize ran at 1-3.5k events/s either way on the 2 (heavily shared) cores, several times
what the Conv3D trains at, so the smaller files win. Sparse is also how calorimeter hits are kept
after zero suppression, and it writes through the shared jagged-branch writer in both TTree and
RNTuple.

Detector (a toy, grounded in the CLIC/ILD-like calorimeter the LCD data came from)
    * ECAL: silicon-tungsten, 25 x 25 cells of 5.1 mm, 25 layers: 20 with 0.8 X0 of tungsten
      (pitch 4.6 mm), 5 with 1.6 X0 (pitch 7.4 mm): 24 X0, 0.85 lambda_I.
    * 30 mm of dead material (1 X0, 0.1 lambda) between ECAL and HCAL: energy there is lost.
    * HCAL: steel-scintillator, 5 x 5 cells of 30 mm, 60 layers of 20 mm steel (1.14 X0,
      0.119 lambda each; pitch 26.5 mm): 7.1 lambda. Energy behind it leaks out.
    * Both windows are centred on the nominal particle direction; the particle comes from the
      interaction point 1.5 m in front of the ECAL and hits within +-1 ECAL cell of the centre, so
      its slope is impact / 1.5 m.
    * Cells are calibrated to the EM scale (an electron's cells sum to its energy up to leakage),
      per section with MIPs: the thick ECAL layers read EM showers 10 % low (e/mip falls with
      absorber thickness), so the summed energy depends on how deep each shower goes.
      Sampling fluctuations: each cell's energy is drawn from a Gamma law with mean mu and
      variance k^2 mu, so the sum has sigma/E = k/sqrt(E): k = 0.16 sqrt(GeV) in the thin ECAL
      layers (twice the variance in the thick ones: 17-18 %/sqrt(E) for electrons, as the study's
      a), 0.22 for EM energy in the HCAL, 0.45 for hadronic (non-EM) energy, which is seen with
      response h/e = 1/1.4 (non-compensation, e/h = 1.4).
    * Electronic noise: Gaussian per cell, ECAL 1.2 MeV, HCAL 5 MeV; cells are kept above 4 MeV
      (ECAL) / 15 MeV (HCAL), about half a MIP (7 MeV per thin ECAL layer, 28 MeV per HCAL layer).
    * Soft background overlay (beam-induced gamma gamma -> hadrons at CLIC, or pile-up): per event
      Poisson(2) soft photons (0.05 + Exp(0.3) GeV) spread over the ECAL face and Poisson(1) soft
      neutral hadrons (0.2 + Exp(0.5) GeV) over the HCAL face. Its energy fluctuation (~0.6 GeV)
      is the c/E term of the summed energy; an image can tell the scattered deposits from the
      shower, a sum cannot. Without it the sum is near-optimal at low energy.

Showers (vectorized over all showers of a chunk)
    * EM (e, gamma, pi0 photons, the pi0s of hadron showers, overlay photons): longitudinal Gamma
      profile dE/dt ~ t^(a-1) e^(-b t) in X0 from the shower start, b = 0.5, shower maximum
      t_max = (a-1)/b = ln(E/E_c) - 0.5 (E_c = 8 MeV, tungsten) with a shower-to-shower spread of
      10 % (log-normal; ~0.9 X0, as Grindhammer et al. parametrize it). Electrons start at the ECAL face; photons first convert after Exp(9/7 X0),
      which puts their maximum ~1 X0 deeper on average (the PDG's C_gamma - C_e = 1) and spreads
      it more. Lateral: a core and a tail Gaussian around the axis, widths in Moliere radii
      (15 mm in the ECAL, 25 mm in the HCAL), both widening with shower age t/t_max, the core
      fraction falling from 90 %: ~90 % of the energy within one Moliere radius.
    * Longitudinal leakage (through the dead layer into and out of the HCAL) and lateral leakage
      (out of the windows) follow from these profiles; nothing is renormalized.
    * pi0: two photons, energy sharing flat in [(1-beta)/2, (1+beta)/2] (isotropic decay), opening
      angle from m_pi0^2 = 2 E1 E2 (1 - cos theta), each photon displaced from the pi0 axis by its
      share of the angle: resolved (cm apart) at 10 GeV, merged (< 1 cell) above ~100 GeV; a soft
      photon of an asymmetric low-energy decay can miss the window.
    * pi+-: a MIP (Landau-like Gamma(4) fluctuations) until its first interaction at Exp(1)
      lambda_I (in the ECAL for ~57 %); then an EM part (pi0s) with fraction f_em = 1 -
      (E/1 GeV)^(0.82-1) on average (Groom), fluctuating event by event (Beta law, sd 0.12), as two
      EM sub-showers displaced by ~2 cm; the rest is hadronic: Gamma profile in lambda with its
      maximum 0.2 ln(E/GeV) + 0.7 lambda after the interaction (b = 0.9/lambda, a spread 20 %),
      lateral core 40 mm (55 %) + tail 130 mm, seen at h/e = 1/1.4. Large fluctuations, a
      significant HCAL fraction and a response below 1: a model trained on electrons is off.

Everything is vectorized over the events of a chunk (``CHUNK_SIZE``); chunk j of particle kind i is
seeded from ``numpy.random.SeedSequence(seed, spawn_key=(i, j))``, so the same seed gives identical
files whatever ``events_per_file`` is.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
from scipy.special import gammainc, ndtr

from hepray.samples.common import (
    DEFAULT_EVENTS_PER_FILE,
    DEFAULT_TREE,
    write_classes,
)

PARTICLES = ("electron", "photon", "pi0", "chpi")
CHUNK_SIZE = 200
E_MIN, E_MAX = 10.0, 500.0  # GeV
M_PI0 = 0.1349768  # GeV
DISTANCE = 1500.0  # mm from the interaction point to the ECAL face

# --- geometry: slabs along the depth (25 ECAL layers, the dead layer, 60 HCAL layers) --------------
ECAL_CELLS, ECAL_LAYERS, ECAL_CELL = 25, 25, 5.1
HCAL_CELLS, HCAL_LAYERS, HCAL_CELL = 5, 60, 30.0
_ECAL_X0 = np.r_[np.full(20, 0.8), np.full(5, 1.6)]
_X0 = np.r_[_ECAL_X0, 1.0, np.full(HCAL_LAYERS, 20.0 / 17.6)]  # thickness in radiation lengths
_LAMBDA = np.r_[_ECAL_X0 * 3.5 / 99.0, 0.1, np.full(HCAL_LAYERS, 20.0 / 168.0)]  # in lambda_I
_PITCH = np.r_[np.full(20, 4.6), np.full(5, 7.4), 30.0, np.full(HCAL_LAYERS, 26.5)]  # mm
X0_EDGES = np.r_[0.0, np.cumsum(_X0)]
LAMBDA_EDGES = np.r_[0.0, np.cumsum(_LAMBDA)]
MM_EDGES = np.r_[0.0, np.cumsum(_PITCH)]
X0_CENTRES = 0.5 * (X0_EDGES[1:] + X0_EDGES[:-1])
MM_CENTRES = 0.5 * (MM_EDGES[1:] + MM_EDGES[:-1])
ECAL_SLABS = slice(0, ECAL_LAYERS)
HCAL_SLABS = slice(ECAL_LAYERS + 1, ECAL_LAYERS + 1 + HCAL_LAYERS)
N_SLABS = len(_X0)

# --- response -------------------------------------------------------------------------------------
E_CRIT = 0.008  # GeV, tungsten
T_MAX_SPREAD = 0.1  # relative shower-to-shower spread of t_max (Grindhammer et al.)
MOLIERE = np.r_[np.full(ECAL_LAYERS, 15.0), 20.0, np.full(HCAL_LAYERS, 25.0)]  # mm per slab
K2_EM = np.r_[np.full(20, 0.16**2), np.full(5, 2 * 0.16**2), 0.0, np.full(HCAL_LAYERS, 0.22**2)]  # GeV
K2_HAD = 0.45**2
E_OVER_H = 1.4
THICK_RESPONSE = 0.9
# EM response per slab relative to the EM scale: the thick ECAL layers are calibrated with MIPs like the thin
# ones, but an EM shower's sampling fraction there is lower (e/mip falls with absorber thickness)
RESPONSE = np.r_[np.full(20, 1.0), np.full(5, THICK_RESPONSE), 0.0, np.full(HCAL_LAYERS, 1.0)]
MIP = np.r_[np.full(20, 0.007), np.full(5, 0.014), 0.0, np.full(HCAL_LAYERS, 0.028)]  # GeV, EM scale
NOISE = {"ecal": 0.0012, "hcal": 0.005}  # GeV per cell
THRESHOLD = {"ecal": 0.004, "hcal": 0.015}
OVERLAY_PHOTONS, OVERLAY_HADRONS = 2.0, 1.0  # mean numbers per event

CELL_BRANCHES = tuple(f"{calo}_{v}" for calo in ("ecal", "hcal") for v in ("x", "y", "z", "e"))
BRANCHES = ("energy", "pdg", "impact_x", "impact_y", "ecal_sum", "hcal_sum", *CELL_BRANCHES)
PI0_BRANCHES = ("photon1_energy", "photon2_energy", "opening_angle")


class _Grids:
    """Mean deposited energy per cell of one chunk, EM and hadronic kept apart (their sampling
    differs): ecal (N, 25, 25, 25) and hcal (N, 60, 5, 5), indices (depth layer, x, y) while
    depositing (a shower adds one x-y outer product per layer), transposed to (x, y, layer) at the end."""

    def __init__(self, n: int):
        self.n = n
        self.em = {
            "ecal": np.zeros((n, ECAL_LAYERS, ECAL_CELLS, ECAL_CELLS), dtype=np.float32),
            "hcal": np.zeros((n, HCAL_LAYERS, HCAL_CELLS, HCAL_CELLS), dtype=np.float32),
        }
        self.had = {"ecal": np.zeros_like(self.em["ecal"]), "hcal": np.zeros_like(self.em["hcal"])}

    def add(self, kind: str, evt, slab_energy, x, y, sigma_core, sigma_tail, f_core) -> None:
        """Deposit showers: energy per slab (M, S), axis (x, y) per slab [mm], two lateral Gaussians."""
        grids = self.em if kind == "em" else self.had
        for rows in _rank_groups(evt):  # each group has an event at most once: plain fancy-index adds
            for calo, slabs, cells, cell in (
                ("ecal", ECAL_SLABS, ECAL_CELLS, ECAL_CELL),
                ("hcal", HCAL_SLABS, HCAL_CELLS, HCAL_CELL),
            ):
                energy = slab_energy[rows, slabs]
                # (M, L, X, 2) @ (M, L, 2, Y): core and tail outer products summed in one matmul
                fx = np.stack(
                    [
                        _cell_fractions(x[rows, slabs], sigma[rows, slabs], cells, cell)
                        * (energy * fraction[rows, slabs])[..., None]
                        for sigma, fraction in ((sigma_core, f_core), (sigma_tail, 1.0 - f_core))
                    ],
                    axis=-1,
                )
                fy = np.stack(
                    [
                        _cell_fractions(y[rows, slabs], sigma[rows, slabs], cells, cell)
                        for sigma in (sigma_core, sigma_tail)
                    ],
                    axis=-2,
                )
                grids[calo][evt[rows]] += fx @ fy


def _rank_groups(evt: np.ndarray) -> list[np.ndarray]:
    """Rows of `evt` split so that no group holds an event twice (group r: each event's r-th row)."""
    order = np.argsort(evt, kind="stable")
    ordered = evt[order]
    rank = np.empty(len(evt), dtype=np.int64)
    rank[order] = np.arange(len(evt)) - np.searchsorted(ordered, ordered)
    return [np.flatnonzero(rank == r) for r in range(int(rank.max(initial=-1)) + 1)]


def _cell_fractions(centre, sigma, cells: int, cell: float) -> np.ndarray:
    """Fraction of a Gaussian (centre, sigma [mm], shape (M, L)) in each of `cells` cells of a
    window centred on 0: (M, L, cells)."""
    edges = (np.arange(cells + 1) - cells / 2) * cell
    return np.diff(ndtr((edges - centre[..., None]) / sigma[..., None]), axis=-1)


def _gamma_profile(start, a, b, edges) -> np.ndarray:
    """Fraction of a Gamma(a, rate b) profile starting at `start` in each slab [edges]: (M, S)."""
    depth = np.clip(edges[None, :] - start[:, None], 0.0, None)
    return np.diff(gammainc(a[:, None], b[:, None] * depth), axis=1)


def _axis(x0, y0):
    """Shower axis per slab for particles from the interaction point hitting the face at (x0, y0)."""
    scale = 1.0 + MM_CENTRES / DISTANCE
    return x0[:, None] * scale, y0[:, None] * scale


def em_showers(grids: _Grids, rng, evt, energy, start_x0, x0, y0) -> None:
    """EM showers of `energy` starting at depth `start_x0` [X0], axis through (x0, y0) at the face."""
    m = len(evt)
    t_max = np.maximum((np.log(energy / E_CRIT) - 0.5) * rng.lognormal(0.0, T_MAX_SPREAD, m), 0.5)
    b = np.full(m, 0.5)
    slab_energy = energy[:, None] * _gamma_profile(start_x0, 1.0 + b * t_max, b, X0_EDGES)
    age = np.clip((X0_CENTRES[None, :] - start_x0[:, None]) / t_max[:, None], 0.0, 4.0)
    f_core = np.clip(0.9 - 0.1 * age, 0.5, 0.9)
    sigma_core = MOLIERE * (0.18 + 0.06 * age)
    sigma_tail = MOLIERE * (0.7 + 0.15 * age)
    x, y = _axis(x0, y0)
    grids.add("em", evt, slab_energy, x, y, sigma_core, sigma_tail, f_core)


def hadronic_showers(grids: _Grids, rng, evt, visible, energy, start_lambda, x0, y0) -> None:
    """The non-EM part of hadron showers: `visible` energy (already at h/e) from `start_lambda`."""
    m = len(evt)
    b = np.full(m, 0.9)
    t_max = (0.2 * np.log(energy) + 0.7) * rng.lognormal(0.0, 0.2, m)
    slab_energy = visible[:, None] * _gamma_profile(start_lambda, 1.0 + b * t_max, b, LAMBDA_EDGES)
    x, y = _axis(x0, y0)
    shape = (m, N_SLABS)
    grids.add("had", evt, slab_energy, x, y, np.full(shape, 40.0), np.full(shape, 130.0), np.full(shape, 0.55))


def _sample(rng, mean, k2) -> np.ndarray:
    """Cell energies after sampling fluctuations: Gamma with mean `mean` and variance k2 * mean."""
    k2 = np.broadcast_to(np.float32(k2), mean.shape)
    out = np.zeros(mean.shape, dtype=np.float32)
    hit = mean > 1e-5  # cells below 10 keV hold ~1e-4 of the energy and cannot reach the thresholds
    out[hit] = rng.standard_gamma(mean[hit] / k2[hit], dtype=np.float32) * k2[hit]
    return out


def _mip_track(visible: dict, rng, n, evt, t_int, x0, y0) -> None:
    """A charged hadron's ionization up to its interaction depth t_int [lambda], added to `visible`."""
    m = len(evt)
    crossed = np.clip((t_int[:, None] - LAMBDA_EDGES[None, :-1]) / _LAMBDA[None, :], 0.0, 1.0)
    signal = MIP[None, :] * crossed * rng.gamma(4.0, 0.25, (m, N_SLABS))
    x, y = _axis(x0, y0)
    for calo, slabs, cells, cell in (
        ("ecal", ECAL_SLABS, ECAL_CELLS, ECAL_CELL),
        ("hcal", HCAL_SLABS, HCAL_CELLS, HCAL_CELL),
    ):
        ix = np.floor(x[:, slabs] / cell + cells / 2).astype(np.int64)
        iy = np.floor(y[:, slabs] / cell + cells / 2).astype(np.int64)
        layer = np.broadcast_to(np.arange(slabs.stop - slabs.start), ix.shape)
        event = np.broadcast_to(evt[:, None], ix.shape)
        inside = (ix >= 0) & (ix < cells) & (iy >= 0) & (iy < cells)
        np.add.at(visible[calo], (event[inside], layer[inside], ix[inside], iy[inside]), signal[:, slabs][inside])


def _impact(rng, n):
    return rng.uniform(-ECAL_CELL, ECAL_CELL, (2, n))


def _electrons(grids, rng, n, energy):
    x0, y0 = _impact(rng, n)
    em_showers(grids, rng, np.arange(n), energy, np.zeros(n), x0, y0)
    return x0, y0, {}


def _photons(grids, rng, n, energy):
    x0, y0 = _impact(rng, n)
    em_showers(grids, rng, np.arange(n), energy, rng.exponential(9.0 / 7.0, n), x0, y0)
    return x0, y0, {}


def _pi0s(grids, rng, n, energy):
    x0, y0 = _impact(rng, n)
    beta = np.sqrt(1.0 - (M_PI0 / energy) ** 2)
    share = 0.5 * (1.0 + beta * rng.uniform(-1.0, 1.0, n))  # flat: isotropic decay
    e1, e2 = energy * share, energy * (1.0 - share)
    opening = np.arccos(np.clip(1.0 - M_PI0**2 / (2.0 * e1 * e2), -1.0, 1.0))
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    # transverse momenta balance: photon i is at angle opening * E_other / E from the pi0 axis
    d1 = DISTANCE * np.tan(opening * e2 / energy)
    d2 = -DISTANCE * np.tan(opening * e1 / energy)
    evt = np.r_[np.arange(n), np.arange(n)]
    d = np.r_[d1, d2]
    em_showers(
        grids,
        rng,
        evt,
        np.r_[e1, e2],
        rng.exponential(9.0 / 7.0, 2 * n),
        np.r_[x0, x0] + d * np.r_[np.cos(phi), np.cos(phi)],
        np.r_[y0, y0] + d * np.r_[np.sin(phi), np.sin(phi)],
    )
    return x0, y0, {"photon1_energy": e1, "photon2_energy": e2, "opening_angle": opening}


def em_fraction_mean(energy):
    """Groom's mean EM fraction of a pion shower: 1 - (E / 1 GeV)^(k - 1), k = 0.82."""
    return 1.0 - energy ** (0.82 - 1.0)


def _charged_pions(grids, rng, n, energy, tracks):
    x0, y0 = _impact(rng, n)
    t_int = rng.exponential(1.0, n)  # first interaction [lambda_I]; beyond the HCAL: punch-through
    tracks.append((np.arange(n), t_int, x0, y0))
    hit = np.flatnonzero(t_int < LAMBDA_EDGES[-1])
    e, t, x, y = energy[hit], t_int[hit], x0[hit], y0[hit]
    mean = em_fraction_mean(e)
    concentration = mean * (1.0 - mean) / 0.12**2 - 1.0
    f_em = rng.beta(mean * concentration, (1.0 - mean) * concentration)
    # the EM part: two sub-showers from the interaction point, displaced by the pi0s' angles
    split = rng.uniform(0.2, 0.8, len(hit))
    kick = rng.normal(0.0, 20.0, (4, len(hit)))  # mm
    start = np.tile(np.interp(t, LAMBDA_EDGES, X0_EDGES), 2) + rng.exponential(0.5, 2 * len(hit))
    em_showers(
        grids,
        rng,
        np.tile(hit, 2),
        np.r_[e * f_em * split, e * f_em * (1 - split)],
        start,
        np.tile(x, 2) + kick[:2].reshape(-1),
        np.tile(y, 2) + kick[2:].reshape(-1),
    )
    hadronic_showers(grids, rng, hit, e * (1 - f_em) / E_OVER_H, e, t, x, y)
    return x0, y0, {}


def _overlay(grids, rng, n):
    """Soft background: photons over the ECAL face, neutral hadrons over the HCAL face."""
    half_ecal, half_hcal = ECAL_CELLS * ECAL_CELL / 2, HCAL_CELLS * HCAL_CELL / 2
    evt = np.repeat(np.arange(n), rng.poisson(OVERLAY_PHOTONS, n))
    m = len(evt)
    if m:
        em_showers(
            grids,
            rng,
            evt,
            0.05 + rng.exponential(0.3, m),
            rng.exponential(9.0 / 7.0, m),
            *rng.uniform(-half_ecal, half_ecal, (2, m)),
        )
    evt = np.repeat(np.arange(n), rng.poisson(OVERLAY_HADRONS, n))
    m = len(evt)
    if m:
        energy = 0.2 + rng.exponential(0.5, m)
        hadronic_showers(
            grids,
            rng,
            evt,
            energy / E_OVER_H,
            energy,
            rng.exponential(1.0, m),
            *rng.uniform(-half_hcal, half_hcal, (2, m)),
        )


def _sparse(cells: np.ndarray, calo: str):
    """Cells above threshold of (N, Z, X, Y) as jagged uint8 indices and float32 energies."""
    flat = np.flatnonzero(cells > THRESHOLD[calo])
    n = len(cells)
    event, z, x, y = np.unravel_index(flat, cells.shape)
    counts = np.bincount(event, minlength=n)
    energy = cells.reshape(-1)[flat].astype(np.float32)
    jagged = {
        f"{calo}_{name}": ak.unflatten(values, counts)
        for name, values in (
            ("x", x.astype(np.uint8)),
            ("y", y.astype(np.uint8)),
            ("z", z.astype(np.uint8)),
            ("e", energy),
        )
    }
    total = np.bincount(event, weights=energy.astype(np.float64), minlength=n)
    return jagged, total


def generate_chunk(rng: np.random.Generator, n: int, kind: str) -> dict:
    """One chunk of ``n`` events of particle ``kind`` (one of PARTICLES) as arrays."""
    if kind not in PARTICLES:
        raise ValueError(f"unknown particle {kind!r}: expected one of {PARTICLES}")
    energy = E_MIN * (E_MAX / E_MIN) ** rng.random(n)
    charge = rng.choice([-1, 1], n)
    grids = _Grids(n)
    tracks: list = []
    if kind == "electron":
        x0, y0, extra = _electrons(grids, rng, n, energy)
        pdg = 11 * charge
    elif kind == "photon":
        x0, y0, extra = _photons(grids, rng, n, energy)
        pdg = np.full(n, 22)
    elif kind == "pi0":
        x0, y0, extra = _pi0s(grids, rng, n, energy)
        pdg = np.full(n, 111)
    else:
        x0, y0, extra = _charged_pions(grids, rng, n, energy, tracks)
        pdg = 211 * charge
    _overlay(grids, rng, n)

    chunk = {
        "energy": energy.astype(np.float32),
        "pdg": pdg.astype(np.int32),
        "impact_x": x0.astype(np.float32),
        "impact_y": y0.astype(np.float32),
    }
    visible = {}
    for calo, slabs in (("ecal", ECAL_SLABS), ("hcal", HCAL_SLABS)):
        response = RESPONSE[slabs, None, None].astype(np.float32)
        visible[calo] = _sample(rng, grids.em[calo] * response, K2_EM[slabs, None, None]) + _sample(
            rng, grids.had[calo] * response, K2_HAD
        )
    for evt, t_int, tx, ty in tracks:
        _mip_track(visible, rng, n, evt, t_int, tx, ty)
    sums = {}
    cells = {}
    for calo in ("ecal", "hcal"):
        noisy = visible[calo]
        noisy += NOISE[calo] * rng.standard_normal(noisy.shape, dtype=np.float32)
        jagged, sums[calo] = _sparse(noisy, calo)
        cells.update(jagged)
    chunk["ecal_sum"] = sums["ecal"].astype(np.float32)
    chunk["hcal_sum"] = sums["hcal"].astype(np.float32)
    chunk.update(cells)
    chunk.update({name: np.asarray(values, dtype=np.float32) for name, values in extra.items()})
    return chunk


def generate(
    out_dir: str | Path,
    events: int,
    seed: int = 1,
    fmt: str = "ttree",
    *,
    events_per_file: int = DEFAULT_EVENTS_PER_FILE,
    tree: str = DEFAULT_TREE,
    particles: tuple[str, ...] = PARTICLES,
) -> list[Path]:
    """Write ``events`` events of each particle into ``out_dir``: ``electron_000.root, ...``,
    then ``photon_*``, ``pi0_*``, ``chpi_*`` (``particles`` picks a subset). Returns the paths."""
    return write_classes(
        out_dir,
        PARTICLES,
        generate_chunk,
        events,
        seed,
        fmt,
        chunk_size=CHUNK_SIZE,
        events_per_file=events_per_file,
        tree=tree,
        only=particles,
    )
