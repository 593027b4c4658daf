"""Study 004 sample: electrons and photons (converted and not) in an ATLAS-like multi-layer
LAr calorimeter, for the energy regression target E_true / E_acc.

Writes ``electron_000.root, ...`` and ``photon_000.root, ...`` (TTree ``events``), one
cluster per event:

* scalars (the study's): ``eta`` (cluster barycentre), ``mu`` (<mu>, average pile-up),
  ``npv`` (reconstructed vertices), ``trk_pt`` (electron track pT; summed pT of a
  conversion's tracks; 0 for unconverted photons), ``conv`` (1 for a converted photon);
* energies: ``e_acc`` (accordion cluster energy: layers 1-3 summed over the cluster
  window, what the regression corrects), ``e_true``, ``e_ps``, ``e_l1``, ``e_l2``,
  ``e_l3`` (the cluster window per layer), and ``abs_eta``, ``phi``, ``particle`` (0 e,
  1 photon) for bookkeeping;
* the image: ``cell_eta``, ``cell_phi``, ``cell_e``, ``cell_layer`` (0 presampler, 1
  strips, 2 middle, 3 back; one shared counter ``ncell``), every layer on the middle
  layer's grid (0.025 x 2 pi / 256) in a ``WINDOW`` x ``WINDOW`` window around the seed cell
  whose centre is (``seed_eta``, ``seed_phi``). Cells with |E| below twice their noise are
  zero-suppressed in the image (not in the cluster sums).

Detector model (a toy, grounded in the ATLAS LAr calorimeter)
    * Acceptance: barrel |eta| < 1.37 and endcap 1.52 < |eta| < 2.47 (no crack);
      presampler only for |eta| < 1.8.
    * Material in front of the calorimeter (tracker, solenoid, cryostat) in radiation
      lengths X0: 2 + 1.6 eta^2 in the barrel (2 at eta = 0, 5 at the crack), 4.5 - 0.8
      (|eta| - 1.52) in the endcap; a quarter of it is in the tracker. The presampler samples
      the shower over the 1 X0 behind it; 0.3 X0 dead material follow; then the accordion:
      strips 4.3 X0, middle 16 X0, back up to a total depth of 22 + 2 |eta| (barrel),
      25 + 1.5 (|eta| - 1.52) (endcap). Energy deposited in front, in the gap or behind the
      back layer is lost.
    * Native granularity (in middle-layer cells, eta x phi): presampler 1 x 4, strips
      1/8 x 4 (eight strips per middle cell; only their sum is kept), middle 1 x 1, back
      2 x 1. Each native cell gets its noise, and is then spread uniformly over the
      middle-layer cells it covers: the image shows each layer at its own resolution on one
      grid. Native cell boundaries are fixed in the detector, not to the window.
    * Showers: longitudinal Gamma profile dE/dt ~ t^(a-1) e^(-b t), b = 0.5,
      t_max = (a - 1) / b = ln(E / 11 MeV) - 0.5 (electron) or + 0.5 (photon), a varied by
      8 % per shower. Lateral: core + tail Gaussians integrated over the cells (core 0.35 /
      0.45 / 0.7 cells in strips / middle / back, tail 1.8 cells with 10 / 12 / 20 % of the
      energy; presampler 1 cell). Accordion sampling term 10 %/sqrt(E) barrel, 12 %/sqrt(E)
      endcap, constant 0.7 %.
    * Electrons lose a Bethe-Heitler fraction of their energy to bremsstrahlung in the
      tracker: two photons emitted along the bending track fly on straight, the electron
      bends further (0.36 rad GeV / pT in phi at the calorimeter for a 2 T field over
      1.2 m, less at large |eta| where tracks leave through the solenoid's end); the track's pT (measured at the perigee,
      resolution 1 % (+) 0.05 % pT) is in ``trk_pt``.
    * Photons convert in the tracker with probability 1 - exp(-7/9 X0_tracker); the e+e-
      pair (energy split uniform) bends apart in phi and starts showering at the conversion
      depth. Unconverted photons start showering after Exp(9/7 X0) of material.
    * Pile-up: ``mu`` uniform in 10-60; the actual number of interactions is Poisson(mu),
      ``npv`` a Binomial(actual, 0.6) of them. Each native cell gets the in-time energy of
      the interactions above the average the calibration subtracts, 0.5 MeV (actual - mu),
      an out-of-time offset -0.2 MeV (mu - 30) (both E_T per middle-cell area, so E grows
      as cosh eta) and noise 6 MeV sqrt(actual) cosh(eta) (middle; scaled per layer) on
      top of the electronic noise.
    * Cluster: the window around the seed cell (the impact point's middle cell): 3 x 7
      cells (eta x phi) in the barrel, 5 x 5 in the endcap.
    * Kinematics: E_T log-uniform in 10-200 GeV, eta uniform over the acceptance, phi
      uniform.

So E_acc / E_true is below 1 on average (upstream, gap, leakage and lateral losses), more
so at low energy, in the endcap (more material, wider pile-up noise in E) and for
electrons and converted photons; the image (presampler and back-layer fractions, the shower
position inside the seed cell, brem tails outside the cluster) and the scalars carry what a
regression can use to correct it.

Everything is vectorized over the events of a chunk (``CHUNK_SIZE`` events); each chunk is
seeded from ``numpy.random.SeedSequence(seed, spawn_key=(class, chunk))``, so the same seed
gives identical arrays, independent of ``events_per_file``.
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

CLASSES = ("electron", "photon")
CHUNK_SIZE = 1000

# --- geometry ------------------------------------------------------------------------
CELL_ETA = 0.025
N_PHI = 256
CELL_PHI = 2.0 * np.pi / N_PHI
WINDOW = 15  # image: WINDOW x WINDOW middle-layer cells, the seed cell in the centre
PAD = 4  # extra cells each side so native cells at the window's edge are complete
BARREL_MAX, ENDCAP_MIN, ENDCAP_MAX = 1.37, 1.52, 2.47
PRESAMPLER_MAX = 1.8
LAYERS = ("ps", "l1", "l2", "l3")
NATIVE = {"ps": (1, 4), "l1": (1, 4), "l2": (1, 1), "l3": (2, 1)}  # native cell in middle cells (eta, phi)
CLUSTER = {"barrel": (3, 7), "endcap": (5, 5)}
# --- longitudinal (X0) ------------------------------------------------------------------
TRACKER_SHARE = 0.25  # of the material in front
PS_DEPTH, GAP_DEPTH, STRIP_DEPTH, MIDDLE_DEPTH = 1.0, 0.3, 4.3, 16.0
PROFILE_B = 0.5
CRITICAL_ENERGY = 0.011  # GeV
PHOTON_MEAN_FREE_PATH = 9.0 / 7.0
# --- lateral (cells) --------------------------------------------------------------------
CORE_SIGMA = {"ps": 1.0, "l1": 0.35, "l2": 0.45, "l3": 0.7}
TAIL_SIGMA = 1.8
TAIL_FRACTION = {"ps": 0.0, "l1": 0.10, "l2": 0.12, "l3": 0.20}
# --- response, noise, pile-up (GeV) -----------------------------------------------------
SAMPLING = {"barrel": 0.10, "endcap": 0.12}
CONSTANT_TERM = 0.007
ELECTRONIC_NOISE = {"ps": 0.01, "l1": 0.028, "l2": 0.03, "l3": 0.02}  # per native cell
PILEUP_NOISE = {"ps": 0.004, "l1": 0.004, "l2": 0.006, "l3": 0.003}  # per sqrt(interaction), E_T
IN_TIME_ET = 0.5e-3  # per interaction above the average, per middle-cell area
OUT_OF_TIME_ET = -0.2e-3  # per unit of <mu> above 30
MU_RANGE = (10.0, 60.0)
VERTEX_EFFICIENCY = 0.6
ZERO_SUPPRESSION = 2.0  # sigmas of the native cell's noise
# --- kinematics ---------------------------------------------------------------------------
ET_RANGE = (10.0, 200.0)
BEND = 0.36  # dphi [rad] * pT [GeV] at the calorimeter: 0.3 * 2 T * 1.2 m / 2
SOLENOID_RADIUS, SOLENOID_HALF_LENGTH = 1.2, 2.9  # m

BRANCHES = (
    "e_true",
    "e_acc",
    "eta",
    "abs_eta",
    "phi",
    "mu",
    "npv",
    "trk_pt",
    "conv",
    "particle",
    "e_ps",
    "e_l1",
    "e_l2",
    "e_l3",
    "seed_eta",
    "seed_phi",
    "cell_eta",
    "cell_phi",
    "cell_e",
    "cell_layer",
)


def front_material(abs_eta):
    """X0 in front of the presampler (barrel or endcap)."""
    return np.where(abs_eta < BARREL_MAX, 2.0 + 1.6 * abs_eta**2, 4.5 - 0.8 * (abs_eta - ENDCAP_MIN))


def total_depth(abs_eta):
    """X0 of calorimeter from the front of the strips to the back of the back layer."""
    return np.where(abs_eta < BARREL_MAX, 22.0 + 2.0 * abs_eta, 25.0 + 1.5 * (abs_eta - ENDCAP_MIN))


def layer_bounds(abs_eta):
    """(start, stop) depth in X0 from the interaction point of each layer, per event."""
    front = front_material(abs_eta)
    ps = (front, front + PS_DEPTH)
    l1_start = ps[1] + GAP_DEPTH
    l1 = (l1_start, l1_start + STRIP_DEPTH)
    l2 = (l1[1], l1[1] + MIDDLE_DEPTH)
    l3 = (l2[1], l1_start + total_depth(abs_eta))
    return {"ps": ps, "l1": l1, "l2": l2, "l3": l3}


class _Showers:
    """Sub-showers of one chunk: event, energy, position (u, v) in middle cells relative to
    the seed cell's lower corner, start depth (X0), and whether an electron starts it."""

    def __init__(self, evt, energy, u, v, start, electron):
        self.evt, self.energy, self.u, self.v, self.start, self.electron = evt, energy, u, v, start, electron

    @staticmethod
    def concat(parts):
        keys = ("evt", "energy", "u", "v", "start", "electron")
        return _Showers(*(np.concatenate([getattr(p, k) for p in parts]) for k in keys))


def _bethe_heitler_retained(rng, thickness):
    """Fraction of an electron's energy kept after ``thickness`` X0: -ln y ~ Gamma(t / ln 2)."""
    return np.exp(-rng.gamma(np.maximum(thickness, 1e-6) / np.log(2.0)))


def _field_lever(abs_eta):
    """Transverse path in the solenoid's field relative to its radius: tracks at large |eta|
    leave through its end (half-length 2.9 m, radius 1.2 m) and bend less."""
    return np.minimum(1.0, SOLENOID_HALF_LENGTH / (SOLENOID_RADIUS * np.sinh(np.maximum(abs_eta, 1e-3))))


def _electron(rng, n, energy, pt, u, v, tracker, abs_eta):
    """(u, v) is the electron's initial direction extrapolated straight to the calorimeter.
    Brem photons fly on along the direction the electron had when it emitted them; the
    electron itself bends away (further the more energy it has lost)."""
    evt = np.arange(n)
    charge = rng.choice([-1.0, 1.0], n)
    kept = _bethe_heitler_retained(rng, tracker)
    trk_pt = pt * _bethe_heitler_retained(rng, 0.05 * np.ones(n))  # a little material before the first hits
    trk_pt *= 1.0 + np.hypot(0.01, 0.0005 * pt) * rng.standard_normal(n)

    bend = charge * BEND * _field_lever(abs_eta) / CELL_PHI

    def bending(path, momentum_kept):  # phi offset in cells after a fraction of the tracker
        return np.clip(path * bend / (pt * momentum_kept), -50.0, 50.0)

    # the electron's own shower starts after the tracker (its losses there are the brem)
    parts = [_Showers(evt, energy * kept, u, v + bending(1.0, np.sqrt(kept)), tracker.copy(), np.ones(n, bool))]
    share = rng.uniform(0.2, 0.8, n)
    for fraction in (share, 1 - share):
        # emitted after a fraction of the tracker; momentum falls as kept ** fraction, so the
        # mean momentum on the way there is about kept ** (fraction / 2)
        emitted_at = rng.random(n)
        conversion = emitted_at * tracker + rng.exponential(PHOTON_MEAN_FREE_PATH, n)
        parts.append(
            _Showers(
                evt,
                energy * (1 - kept) * fraction,
                u,
                v + bending(emitted_at, kept ** (emitted_at / 2)),
                conversion,
                np.zeros(n, bool),
            )
        )
    return _Showers.concat(parts), trk_pt, np.zeros(n)


def _photon(rng, n, energy, pt, u, v, tracker, abs_eta):
    evt = np.arange(n)
    depth = rng.exponential(PHOTON_MEAN_FREE_PATH, n)
    converted = depth < tracker
    x = rng.uniform(0.05, 0.95, n)
    unconverted = _Showers(
        evt[~converted],
        energy[~converted],
        u[~converted],
        v[~converted],
        depth[~converted],
        np.zeros((~converted).sum(), bool),
    )
    c = converted
    remaining = 1 - depth[c] / tracker[c]  # fraction of the tracker's bending still ahead
    parts = [unconverted]
    trk_pt = np.zeros(n)
    for sign, fraction in ((1.0, x[c]), (-1.0, 1 - x[c])):
        leg_pt = pt[c] * fraction
        dv = np.clip(sign * remaining * BEND * _field_lever(abs_eta[c]) / np.maximum(leg_pt, 0.5) / CELL_PHI, -50, 50)
        parts.append(_Showers(evt[c], energy[c] * fraction, u[c], v[c] + dv, depth[c], np.ones(c.sum(), bool)))
        trk_pt[c] += leg_pt * (1.0 + 0.03 * rng.standard_normal(c.sum()))
    return _Showers.concat(parts), trk_pt, converted.astype(np.float64)


def _layer_energies(rng, showers: _Showers, bounds):
    """Energy each sub-shower deposits in each layer (Gamma profile from its start depth)."""
    energy = np.maximum(showers.energy, 1e-6)
    t_max = np.log(energy / CRITICAL_ENERGY) + np.where(showers.electron, -0.5, 0.5)
    a = (1.0 + PROFILE_B * np.maximum(t_max, 0.5)) * (1.0 + 0.08 * rng.standard_normal(len(energy)))
    a = np.maximum(a, 1.05)

    def contained(depth):
        return gammainc(a, PROFILE_B * np.maximum(depth[showers.evt] - showers.start, 0.0))

    return {layer: showers.energy * (contained(stop) - contained(start)) for layer, (start, stop) in bounds.items()}


def _profile(centre, sigma):
    """Fraction of a Gaussian in each padded-window cell along one axis: (M, P)."""
    k = np.arange(-PAD - WINDOW // 2, WINDOW // 2 + 1 + PAD)  # cell k spans [k, k + 1)
    return ndtr((k + 1 - centre[:, None]) / sigma) - ndtr((k - centre[:, None]) / sigma)


def _deposit(n, showers: _Showers, energy):
    """Sum the sub-showers' lateral profiles of one layer on the padded middle-cell grid."""
    size = WINDOW + 2 * PAD
    grids = []
    for sigma, weight in energy:
        fu, fv = _profile(showers.u, sigma), _profile(showers.v, sigma)
        grids.append(weight[:, None, None] * fu[:, :, None] * fv[:, None, :])
    contrib = np.sum(grids, axis=0)
    keys = showers.evt[:, None, None] * size * size + np.arange(size * size).reshape(size, size)
    return np.bincount(keys.ravel(), weights=contrib.ravel(), minlength=n * size * size).reshape(n, size, size)


def _native_cells(grid, seed_i, seed_j, g_eta, g_phi):
    """Group middle cells of the padded grid into this layer's native cells (aligned to the
    detector), returning per middle cell: native group ids along eta and phi and the group sums."""
    n, size, _ = grid.shape
    offsets = np.arange(size) - PAD - WINDOW // 2
    first_eta = (seed_i[:, None] + offsets[0]) // g_eta
    first_phi = (seed_j[:, None] + offsets[0]) // g_phi
    gid_eta = (seed_i[:, None] + offsets) // g_eta - first_eta  # (n, size) in [0, size // g + 1]
    gid_phi = (seed_j[:, None] + offsets) // g_phi - first_phi
    k_eta, k_phi = size // g_eta + 2, size // g_phi + 2
    keys = (np.arange(n)[:, None, None] * k_eta + gid_eta[:, :, None]) * k_phi + gid_phi[:, None, :]
    sums = np.bincount(keys.ravel(), weights=grid.ravel(), minlength=n * k_eta * k_phi).reshape(n, k_eta, k_phi)
    return gid_eta, gid_phi, sums


def _kinematics(rng, n):
    """True |eta|, eta, phi and E_T of ``n`` clusters: eta uniform over barrel + endcap (no crack),
    both signs; E_T log-uniform."""
    span_b, span_e = BARREL_MAX, ENDCAP_MAX - ENDCAP_MIN
    x = rng.random(n) * (span_b + span_e)
    abs_eta = np.where(x < span_b, x, ENDCAP_MIN + (x - span_b))
    eta_true = abs_eta * rng.choice([-1.0, 1.0], n)
    phi_true = rng.uniform(-np.pi, np.pi, n)
    et = ET_RANGE[0] * (ET_RANGE[1] / ET_RANGE[0]) ** rng.random(n)
    return abs_eta, eta_true, phi_true, et


def _pileup(rng, n):
    """<mu>, the actual interactions around it and the vertices found among them."""
    mu = rng.uniform(*MU_RANGE, n)
    actual = rng.poisson(mu)
    npv = rng.binomial(actual, VERTEX_EFFICIENCY)
    return mu, actual, npv


def _accordion_smear(rng, n, showers: _Showers, deposits, barrel):
    """Sampling fluctuations of the accordion: one factor per event, as the layers share the shower."""
    accordion = sum(np.bincount(showers.evt, weights=deposits[layer], minlength=n) for layer in ("l1", "l2", "l3"))
    stochastic = np.where(barrel, SAMPLING["barrel"], SAMPLING["endcap"])
    relative = np.hypot(stochastic / np.sqrt(np.maximum(accordion, 1e-3)), CONSTANT_TERM)
    return 1.0 + relative * rng.standard_normal(n)


def _cluster_cells(barrel):
    """Which image cells are in the cluster: (n, WINDOW, WINDOW), 3 x 7 (barrel) or 5 x 5 (endcap)
    around the seed cell."""
    half_eta = np.where(barrel, CLUSTER["barrel"][0] // 2, CLUSTER["endcap"][0] // 2)
    half_phi = np.where(barrel, CLUSTER["barrel"][1] // 2, CLUSTER["endcap"][1] // 2)
    offsets = np.arange(WINDOW) - WINDOW // 2
    return (np.abs(offsets)[None, :, None] <= half_eta[:, None, None]) & (
        np.abs(offsets)[None, None, :] <= half_phi[:, None, None]
    )


def _shower_grid(n, layer, showers: _Showers, deposit, smear):
    """One layer's shower energy on the padded middle-cell grid: core (+ tail) profiles, the
    accordion layers with the event's sampling fluctuation."""
    core = 1.0 - TAIL_FRACTION[layer]
    components = [(CORE_SIGMA[layer], deposit * core)]
    if TAIL_FRACTION[layer] > 0:
        components.append((TAIL_SIGMA, deposit * TAIL_FRACTION[layer]))
    grid = _deposit(n, showers, components)
    if layer != "ps":
        grid *= smear[:, None, None]
    return grid


def _read_out(rng, layer, grid, seed_i, seed_j, cosh, actual, pileup_shift, has_ps):
    """A layer's image and noise per middle cell: pile-up and noise are added per native cell (what
    the detector reads out), which is then spread uniformly over the middle cells it covers."""
    n = len(seed_i)
    g_eta, g_phi = NATIVE[layer]
    gid_eta, gid_phi, native = _native_cells(grid, seed_i, seed_j, g_eta, g_phi)
    cells_per_native = g_eta * g_phi
    sigma = np.hypot(ELECTRONIC_NOISE[layer], PILEUP_NOISE[layer] * cosh * np.sqrt(actual) * np.sqrt(cells_per_native))
    native += pileup_shift[:, None, None] * cells_per_native
    native += sigma[:, None, None] * rng.standard_normal(native.shape)
    if layer == "ps":
        native *= has_ps[:, None, None]
        sigma = np.where(has_ps, sigma, 0.0)
    evt = np.arange(n)[:, None, None]
    spread = native[evt, gid_eta[:, :, None], gid_phi[:, None, :]] / cells_per_native
    image = spread[:, PAD : PAD + WINDOW, PAD : PAD + WINDOW]
    return image, np.broadcast_to((sigma / cells_per_native)[:, None, None], image.shape)


def _cluster_position(middle, in_cluster, seed_i, seed_j):
    """Cluster eta, phi: the energy-weighted barycentre of the middle layer inside the cluster."""
    offsets = np.arange(WINDOW) - WINDOW // 2
    l2 = np.clip(middle, 0.0, None) * in_cluster
    weight = np.maximum(l2.sum(axis=(1, 2)), 1e-9)
    eta = (seed_i + 0.5 + (l2.sum(axis=2) * offsets).sum(axis=1) / weight) * CELL_ETA
    phi = (seed_j + 0.5 + (l2.sum(axis=1) * offsets).sum(axis=1) / weight) * CELL_PHI
    return eta, (phi + np.pi) % (2 * np.pi) - np.pi


def _image_cells(images, noise_maps, seed_i, seed_j) -> dict:
    """The image's cells above zero suppression, in (event, layer, eta, phi) order, as jagged branches."""
    n = len(seed_i)
    stack = np.stack(images, axis=1)  # (n, 4, W, W)
    noise = np.stack(noise_maps, axis=1)
    keep = np.abs(stack) > ZERO_SUPPRESSION * noise
    keep &= noise > 0
    flat = np.flatnonzero(keep)
    cevt, rest = np.divmod(flat, 4 * WINDOW * WINDOW)
    layer, rest = np.divmod(rest, WINDOW * WINDOW)
    a, b = np.divmod(rest, WINDOW)
    counts = np.bincount(cevt, minlength=n)
    cell_eta = (seed_i[cevt] + a - WINDOW // 2 + 0.5) * CELL_ETA
    j = (seed_j[cevt] + b - WINDOW // 2 + N_PHI // 2) % N_PHI - N_PHI // 2
    cell_phi = (j + 0.5) * CELL_PHI

    def jag(values):
        return ak.unflatten(np.asarray(values, dtype=np.float32), counts)

    return {
        "cell_eta": jag(cell_eta),
        "cell_phi": jag(cell_phi),
        "cell_e": jag(stack.reshape(-1)[flat]),
        "cell_layer": jag(layer),
    }


def generate_chunk(rng: np.random.Generator, n: int, kind: str) -> dict:
    """One chunk of ``n`` clusters of ``kind`` ("electron" or "photon") as arrays."""
    if kind not in CLASSES:
        raise ValueError(f"unknown class {kind!r}: expected one of {CLASSES}")
    abs_eta, eta_true, phi_true, et = _kinematics(rng, n)
    e_true = et * np.cosh(eta_true)
    barrel = abs_eta < BARREL_MAX

    # impact point in middle-layer cell units; the seed is its cell
    seed_i = np.floor(eta_true / CELL_ETA).astype(np.int64)
    seed_j = np.floor(phi_true / CELL_PHI).astype(np.int64)
    u = eta_true / CELL_ETA - seed_i
    v = phi_true / CELL_PHI - seed_j

    tracker = TRACKER_SHARE * front_material(abs_eta)
    make = _electron if kind == "electron" else _photon
    showers, trk_pt, conv = make(rng, n, e_true, et, u, v, tracker, abs_eta)

    mu, actual, npv = _pileup(rng, n)
    cosh = np.cosh(eta_true)
    pileup_shift = cosh * (IN_TIME_ET * (actual - mu) + OUT_OF_TIME_ET * (mu - 30.0))  # per middle cell

    deposits = _layer_energies(rng, showers, layer_bounds(abs_eta))
    smear = _accordion_smear(rng, n, showers, deposits, barrel)
    in_cluster = _cluster_cells(barrel)
    has_ps = abs_eta < PRESAMPLER_MAX

    images, noise_maps, layer_sums = [], [], {}
    for layer in LAYERS:
        grid = _shower_grid(n, layer, showers, deposits[layer], smear)
        image, noise_map = _read_out(rng, layer, grid, seed_i, seed_j, cosh, actual, pileup_shift, has_ps)
        images.append(image)
        noise_maps.append(noise_map)
        layer_sums[layer] = np.sum(image * in_cluster, axis=(1, 2))

    e_acc = layer_sums["l1"] + layer_sums["l2"] + layer_sums["l3"]
    eta, phi = _cluster_position(images[2], in_cluster, seed_i, seed_j)
    f32 = np.float32
    return {
        "e_true": e_true.astype(f32),
        "e_acc": e_acc.astype(f32),
        "eta": eta.astype(f32),
        "abs_eta": np.abs(eta).astype(f32),
        "phi": phi.astype(f32),
        "mu": mu.astype(f32),
        "npv": npv.astype(f32),
        "trk_pt": trk_pt.astype(f32),
        "conv": conv.astype(f32),
        "particle": np.full(n, CLASSES.index(kind), dtype=f32),
        "e_ps": layer_sums["ps"].astype(f32),
        "e_l1": layer_sums["l1"].astype(f32),
        "e_l2": layer_sums["l2"].astype(f32),
        "e_l3": layer_sums["l3"].astype(f32),
        "seed_eta": ((seed_i + 0.5) * CELL_ETA).astype(f32),
        "seed_phi": (((seed_j + N_PHI // 2) % N_PHI - N_PHI // 2 + 0.5) * CELL_PHI).astype(f32),
        **_image_cells(images, noise_maps, seed_i, seed_j),
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
    """Write ``events`` electrons and ``events`` photons into ``out_dir``.

    Returns the paths: ``electron_000.root, ...`` then ``photon_000.root, ...``.
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
