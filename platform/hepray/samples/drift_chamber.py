"""Study 002 sample: events in a BESIII-like cylindrical drift chamber, as per-hit records.

Writes ``psip_ee_000.root, ...``, ``psip_mumu_000.root, ...`` and ``continuum_000.root, ...``
(TTree ``events``, one file group per class, no label branch), one entry per event with

* per hit (jagged, one counter ``n<name>`` each): ``layer``, ``wire`` (int32), ``XE``, ``YE``,
  ``XW``, ``YW`` (the hit wire's ends on the east and west endplates, mm), ``RT`` (drift time,
  ns), ``RC`` (deposited charge, ADC counts), ``TRK`` (1-based index of the track that made
  the hit into the ``trk_*`` arrays, 0 for a noise hit) -- the study's names;
* per track (jagged, shared counter ``ntrk``): true momenta ``trk_px``, ``trk_py``, ``trk_pz``
  (GeV), ``trk_pid`` (PDG code), ``trk_charge``;
* per event: ``rc_sum`` and ``rc_mean``, the summed and the per-hit mean RC of the event (the
  study's `total` and `average` encodings as numbers, for baselines).

Physics (e+e- at rest, sqrt(s) = M(psi(3686)); no crossing angle, so the momenta of every
event sum to zero)
    * ``psip_ee`` / ``psip_mumu``: psi(3686) -> pi+ pi- J/psi, J/psi -> e+e- / mu+mu-. The
      three-body decay is generated as psi' -> J/psi X(m_pipi), X -> pi+ pi-, with m_pipi drawn
      from phase space (p*(psi' -> J/psi X) p*(X -> pi pi)) times |M|^2 ~ (m_pipi^2 - 4 m_pi^2)^2,
      the chiral form that puts the spectrum's peak at high m_pipi as measured. X is isotropic,
      pi pi isotropic in X's frame; J/psi -> l+l- follows 1 + cos^2(theta) about the beam axis.
      Leptons get ~1.55 GeV/c, the pions 0.05-0.45 GeV/c (many curl up in the chamber).
    * ``continuum``: e+e- -> pi+ pi- mu+ mu- with flat 4-body phase space (GENBOD-style
      sequential two-body decays, unweighted by hit-or-miss against GENBOD's weight bound).
    * Particles are followed from a vertex at (0, 0, z0), z0 ~ N(0, 15 mm), without energy loss,
      multiple scattering, decays or radiation.

Detector (43 layers, 1 T solenoid along +z)
    * Layers at radii 73-161 mm (8 inner layers, cells ~12 mm) and 189-770 mm (35 outer layers,
      cells ~16.5 mm); layers 0-7 and 20-35 are stereo (+-3.5 deg, alternating every 4 layers),
      the rest axial. Wires of odd layers are staggered by half a cell. The sensitive length is
      |z| < min(2.53 r, 1200 mm) (|cos(theta)| < 0.93), so XE=XW, YE=YW only for axial wires;
      the study's image position X=(XE+XW)/2 of a stereo hit is shifted in azimuth with z.
    * Helices: radius R = pT / (0.2998 B); a positive track turns clockwise seen from +z
      (phi(s) = phi0 - q s / R). The track crosses the layer at radius r < 2R at arc lengths
      s = 2R asin(r/2R) (outgoing) and 2 pi R - that (incoming), plus whole turns; tracks that
      do not reach 2R > r stop short of the layer (curlers), and loopers are followed for at
      most two turns. A crossing is a hit if |z| is inside the layer's length.
    * Each crossing fires the nearest wire (of a stereo layer: the wire passing nearest at the
      hit's z) and, when the track's azimuthal sweep across the cell reaches the boundary, the
      neighbouring wire too. A cell fires once per event (the earliest crossing wins); cell
      efficiency 98 %.
    * RT = 500 ns + d / (0.03 mm/ns) + N(0, 4 ns), d the transverse distance to the wire.
    * RC: dE/dx(beta gamma) of a Bethe-Bloch-like curve with relativistic rise and a Fermi
      plateau (minimum at beta gamma ~3.4, plateau 1.45x the minimum, a 1.55 GeV muon at 1.15x)
      times the path length in the cell (thickness / (cos(crossing angle) sin(theta))), with a
      Landau-like (Moyal) fluctuation per hit, 500 ADC counts for a minimum-ionizing radial
      crossing of a 12 mm cell, electronics noise 15 counts, rounded. At these momenta e, mu and
      pi overlap hit by hit and separate only statistically over many hits.
    * Optional noise hits (``noise_hits``: mean per event, Poisson): a random cell, RT flat over
      the drift window, RC exponential (mean 150), TRK = 0.

Vectorized over all tracks of a chunk (``CHUNK_SIZE`` events): every track x layer x crossing
candidate is one array element; no per-event or per-hit Python loop. Chunk j of class c is
seeded from ``numpy.random.SeedSequence(seed, spawn_key=(c, j))``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import awkward as ak
import numpy as np

from hepray.samples.common import (
    DEFAULT_EVENTS_PER_FILE,
    DEFAULT_TREE,
    write_classes,
)

# --- physics constants (GeV) --------------------------------------------------------
M_PSIP = 3.686097
M_JPSI = 3.096900
M_PI = 0.13957039
M_MU = 0.1056584
M_E = 0.000510999
MASS = {11: M_E, 13: M_MU, 211: M_PI}
LEPTON = {"psip_ee": 11, "psip_mumu": 13}

# --- detector -----------------------------------------------------------------------
B_FIELD = 1.0  # T
MM_PER_GEV = 1000.0 / (0.299792458 * B_FIELD)  # helix radius in mm per GeV of pT
N_LAYERS = 43
INNER = 8
RADIUS = np.concatenate([np.linspace(73.0, 161.0, INNER), np.linspace(189.0, 770.0, N_LAYERS - INNER)])
THICKNESS = np.concatenate([np.full(INNER, 12.6), np.full(N_LAYERS - INNER, 17.1)])  # radial cell size
CELL_TARGET = np.where(np.arange(N_LAYERS) < INNER, 12.0, 16.5)  # azimuthal cell size, mm
N_WIRES = (2 * np.round(np.pi * RADIUS / CELL_TARGET)).astype(np.int64)  # even wire counts
CELL_PHI = 2 * np.pi / N_WIRES
CELL = RADIUS * CELL_PHI
STAGGER = 0.5 * (np.arange(N_LAYERS) % 2)  # odd layers shifted by half a cell
HALF_LENGTH = np.minimum(2.53 * RADIUS, 1200.0)  # |cos(theta)| < 0.93
_STEREO_LAYERS = np.r_[0:8, 20:36]
_STEREO_SIGN = np.zeros(N_LAYERS)
_STEREO_SIGN[_STEREO_LAYERS] = np.where((_STEREO_LAYERS // 4) % 2 == 0, 1.0, -1.0)
STEREO_ANGLE = np.radians(3.5) * _STEREO_SIGN
TWIST = 2 * HALF_LENGTH * np.tan(STEREO_ANGLE) / RADIUS  # phi(west) - phi(east) of a wire
OUTER_WALL = RADIUS[-1] + THICKNESS[-1] / 2
MAX_TURNS = 2
CELL_EFFICIENCY = 0.98
Z0_SIGMA = 15.0  # mm, luminous region

T0 = 500.0  # ns
DRIFT_VELOCITY = 0.03  # mm/ns
TIME_SIGMA = 4.0  # ns
ADC_PER_MIP_MM = 500.0 / 12.6  # minimum-ionizing radial crossing of an inner cell -> 500 counts
LANDAU_WIDTH = 0.15  # scale of the Moyal fluctuation relative to the most probable value
ADC_NOISE = 15.0
NOISE_RC_MEAN = 150.0

CLASSES = ("psip_ee", "psip_mumu", "continuum")
CHUNK_SIZE = 1000
TRACKS = 4  # charged tracks per event in every class


# --- kinematics ---------------------------------------------------------------------


def breakup_momentum(mass, m1, m2):
    """Two-body decay momentum p* of mass -> m1 m2 (0 below threshold)."""
    mass = np.asarray(mass, dtype=np.float64)
    arg = (mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)
    return np.sqrt(np.clip(arg, 0.0, None)) / (2 * mass)


def _directions(rng, n, cos_theta=None):
    cos_theta = rng.uniform(-1.0, 1.0, n) if cos_theta is None else cos_theta
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    phi = rng.uniform(-np.pi, np.pi, n)
    return np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], axis=1)


def boost(p4, parent):
    """Boost four-vectors (E, px, py, pz) from the rest frame of ``parent`` (its lab four-vector)."""
    beta = parent[:, 1:] / parent[:, :1]
    b2 = np.sum(beta**2, axis=1)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(beta * p4[:, 1:], axis=1)
    factor = np.where(b2 > 0, (gamma - 1.0) * bp / np.where(b2 > 0, b2, 1.0), 0.0) + gamma * p4[:, 0]
    out = np.empty_like(p4)
    out[:, 0] = gamma * (p4[:, 0] + bp)
    out[:, 1:] = p4[:, 1:] + factor[:, None] * beta
    return out


def two_body(rng, parent, m1, m2, cos_theta=None):
    """Decay each ``parent`` (lab four-vectors, mass from them) into m1, m2: isotropic in the
    parent's frame unless ``cos_theta`` (about the z axis, in that frame) is given."""
    mass = np.sqrt(np.clip(parent[:, 0] ** 2 - np.sum(parent[:, 1:] ** 2, axis=1), 0.0, None))
    p = breakup_momentum(mass, m1, m2)
    direction = _directions(rng, len(parent), cos_theta) * p[:, None]
    d1 = np.column_stack([np.sqrt(p**2 + m1**2), direction])
    d2 = np.column_stack([np.sqrt(p**2 + m2**2), -direction])
    return boost(d1, parent), boost(d2, parent)


def _at_rest(mass, n):
    p4 = np.zeros((n, 4))
    p4[:, 0] = mass
    return p4


def _one_plus_cos2(rng, n):
    """cos(theta) from 1 + cos^2: the real root of c^3 + 3c + 4 - 8u = 0 (inverse CDF, Cardano)."""
    q = 4.0 - 8.0 * rng.random(n)
    root = np.sqrt(q**2 / 4 + 1.0)
    return np.cbrt(-q / 2 + root) + np.cbrt(-q / 2 - root)


def _accept(rng, n, draw, weight, bound):
    """Hit-or-miss: ``n`` draws accepted with probability weight / bound, in vectorized rounds."""
    kept = []
    have = 0
    while have < n:
        sample = draw(2 * (n - have) + 16)
        ok = rng.random(len(sample)) * bound < weight(sample)
        kept.append(sample[ok])
        have += int(ok.sum())
    return np.concatenate(kept)[:n]


def _pipi_mass(rng, n):
    """m_pipi in psi' -> J/psi pi pi: phase space x (m^2 - 4 m_pi^2)^2."""
    low, high = 2 * M_PI, M_PSIP - M_JPSI

    def weight(m):
        return breakup_momentum(M_PSIP, M_JPSI, m) * breakup_momentum(m, M_PI, M_PI) * (m**2 - low**2) ** 2

    grid = np.linspace(low, high, 2001)
    bound = 1.05 * weight(grid).max()
    return _accept(rng, n, lambda k: rng.uniform(low, high, k), weight, bound)


def psip_decays(rng, n, lepton_mass):
    """psi(3686) at rest -> pi+ pi- J/psi, J/psi -> l+ l-: four-vectors (n, 4 tracks, 4) in the
    order pi+, pi-, l+, l-."""
    m_pipi = _pipi_mass(rng, n)
    p = breakup_momentum(M_PSIP, M_JPSI, m_pipi)
    direction = _directions(rng, n) * p[:, None]
    jpsi = np.column_stack([np.sqrt(p**2 + M_JPSI**2), -direction])
    pipi = np.column_stack([np.sqrt(p**2 + m_pipi**2), direction])
    pi_plus, pi_minus = two_body(rng, pipi, M_PI, M_PI)
    l_plus, l_minus = two_body(rng, jpsi, lepton_mass, lepton_mass, _one_plus_cos2(rng, n))
    return np.stack([pi_plus, pi_minus, l_plus, l_minus], axis=1)


def phase_space(rng, n, total_mass, masses):
    """Flat n-body phase space at rest (GENBOD): four-vectors (n, len(masses), 4), unweighted."""
    masses = np.asarray(masses, dtype=np.float64)
    k = len(masses)
    kinetic = total_mass - masses.sum()
    # GENBOD's bound on the weight (product of the largest possible breakup momenta)
    bound, low, high = 1.0, 0.0, kinetic + masses[0]
    for i in range(1, k):
        low += masses[i - 1]
        high += masses[i]
        bound *= breakup_momentum(high, low, masses[i])

    def invariant_masses(m):
        r = np.sort(rng.random((m, k - 2)), axis=1)
        cumulative = np.cumsum(masses)
        return np.column_stack([np.full(m, masses[0]), cumulative[1:-1] + r * kinetic, np.full(m, total_mass)])

    def weight(sub):
        return np.prod(breakup_momentum(sub[:, 1:], sub[:, :-1], masses[1:]), axis=1)

    sub = _accept(rng, n, invariant_masses, weight, bound)
    out = np.empty((n, k, 4))
    parent = _at_rest(total_mass, n)
    for i in range(k - 1, 0, -1):  # peel one particle off per step: loop over the 4 particles, not events
        rest, out[:, i] = two_body(rng, parent, sub[:, i - 1], masses[i])
        parent = rest
    out[:, 0] = parent
    return out


def event_tracks(rng, n, kind):
    """Per event the four charged tracks: four-vectors (n, 4, 4), PDG codes and charges (4,)."""
    if kind in LEPTON:
        lepton = LEPTON[kind]
        p4 = psip_decays(rng, n, MASS[lepton])
        pid = np.array([211, -211, -lepton, lepton])  # e+/mu+ have negative PDG codes
    elif kind == "continuum":
        p4 = phase_space(rng, n, M_PSIP, [M_PI, M_PI, M_MU, M_MU])
        pid = np.array([211, -211, -13, 13])
    else:
        raise ValueError(f"unknown class {kind!r}: expected one of {CLASSES}")
    charge = np.array([1, -1, 1, -1])
    return p4, pid, charge


# --- detector response --------------------------------------------------------------


def _bethe(beta_gamma):
    """1/beta^2 (A + ln(bg^2) - beta^2) with a density effect that flattens the rise into a
    plateau above beta gamma ~ 100."""
    bg2 = np.asarray(beta_gamma, dtype=np.float64) ** 2
    beta2 = bg2 / (1.0 + bg2)
    return (10.0 + np.log(bg2) - np.log1p(bg2 / 100.0**2) - beta2) / beta2


_DEDX_MIN = float(_bethe(np.logspace(0, 1.5, 3000)).min())


def dedx(beta_gamma):
    """Bethe-Bloch-like mean energy loss in the chamber gas, 1 at minimum ionization."""
    return _bethe(beta_gamma) / _DEDX_MIN


def _moyal(rng, shape):
    """Landau-like fluctuation: the Moyal variable -2 ln|Z|, Z ~ N(0, 1) (mode 0, long upper tail)."""
    return -2.0 * np.log(np.abs(rng.standard_normal(shape)) + 1e-300)


def _layer_crossings(radius, turn, phi0, dz_ds, z0):
    """Where helices (arrays over tracks) cross the layers within their length: every track x
    layer x crossing (out, in per turn) is one candidate, so all tracks are swum at once.
    Returns flat arrays over the crossings: track index, layer, arc length, z and azimuth."""
    crossing = np.arange(2 * MAX_TURNS)
    ratio = RADIUS[None, :] / (2 * radius[:, None])  # (T, L)
    reaches = ratio < 1.0
    half_angle = np.arcsin(np.minimum(ratio, 1.0))  # s_out / (2R)
    outgoing = (crossing % 2 == 0)[None, None, :]
    whole_turns = (crossing // 2)[None, None, :]
    # arc length / (2R): outgoing a + pi k; incoming pi (k + 1) - a
    u = np.where(
        outgoing, half_angle[:, :, None] + np.pi * whole_turns, np.pi * (whole_turns + 1) - half_angle[:, :, None]
    )
    s = 2 * radius[:, None, None] * u
    z = z0[:, None, None] + s * dz_ds[:, None, None]
    # the hit's azimuth is the chord's direction, phi0 + turn * s / 2R; every turn passes the
    # same transverse points, so the whole turns drop out of it (only z advances)
    phi = phi0[:, None, None] + turn[:, None, None] * (u - np.pi * whole_turns)
    # a track whose circle does not close inside the chamber leaves through the outer wall
    stays = (2 * radius < OUTER_WALL)[:, None, None] | (crossing == 0)[None, None, :]
    valid = reaches[:, :, None] & stays & (np.abs(z) < HALF_LENGTH[None, :, None])
    track, layer, _ = np.nonzero(valid)
    return track, layer, s[valid], z[valid], phi[valid]


def swim(rng, p4, charge, mass, z0):
    """Hits of flat tracks (arrays over tracks) in the chamber.

    Returns flat per-hit arrays: track index, layer, wire, arc length (for ordering), drift
    distance, and deposited charge (before noise); several crossings of one cell not yet merged.
    """
    px, py, pz = p4[:, 1], p4[:, 2], p4[:, 3]
    pt = np.hypot(px, py)
    p = np.sqrt(pt**2 + pz**2)
    radius = pt * MM_PER_GEV
    turn = -charge.astype(np.float64)  # +1: counter-clockwise seen from +z
    track, layer, s, z, phi = _layer_crossings(radius, turn, np.arctan2(py, px), pz / pt, z0)

    # nearest wire at this z: a stereo wire's azimuth moves linearly from east to west
    half = HALF_LENGTH[layer]
    phi_east = phi - TWIST[layer] * (z + half) / (2 * half)
    position = phi_east / CELL_PHI[layer] - STAGGER[layer]
    nearest = np.round(position)
    offset = position - nearest  # in cells, [-0.5, 0.5]
    wire = nearest.astype(np.int64) % N_WIRES[layer]

    sin_cross = RADIUS[layer] / (2 * radius[track])  # sine of the angle between track and radial direction
    cos_cross = np.sqrt(np.clip(1.0 - sin_cross**2, 0.0, None))
    sin_theta = (pt / p)[track]
    path = THICKNESS[layer] / (np.maximum(cos_cross, 0.25) * sin_theta)
    # azimuthal sweep of the track across the cell's radial thickness, in cells
    sweep = sin_cross / np.maximum(cos_cross, 0.25) * THICKNESS[layer] / CELL[layer]
    neighbour = np.abs(offset) + 0.5 * sweep > 0.5
    drift = np.clip(np.abs(offset) - 0.5 * sweep, 0.0, None) * CELL[layer]  # closest approach in the cell
    neighbour_drift = np.clip(1.0 - np.abs(offset) - 0.5 * sweep, 0.0, None) * CELL[layer]
    neighbour_wire = (wire + np.where(offset >= 0, 1, -1)) % N_WIRES[layer]

    # a fired neighbour takes the part of the path that sweeps past the cell boundary
    both = np.concatenate([np.arange(len(track)), np.flatnonzero(neighbour)])
    beyond = np.clip((np.abs(offset) + 0.5 * sweep - 0.5) / np.maximum(sweep, 1e-9), 0.0, 1.0)
    fraction = np.concatenate([1.0 - beyond, beyond[neighbour]])
    wires = np.concatenate([wire, neighbour_wire[neighbour]])
    drifts = np.concatenate([drift, neighbour_drift[neighbour]])

    beta_gamma = (p / mass)[track[both]]
    mpv = dedx(beta_gamma) * path[both] * fraction * ADC_PER_MIP_MM
    charge_adc = mpv * np.clip(1.0 + LANDAU_WIDTH * _moyal(rng, len(both)), 0.05, None)
    return track[both], layer[both], wires, s[both], drifts, charge_adc


def _noise(rng, n, mean):
    """Noise hits: Poisson(mean) per event, uniform over the cells. Returned like the tracks' hits
    (event, TRK, layer, wire, arc length, drift, charge) with TRK 0 and no arc length (inf)."""
    count = rng.poisson(mean, n)
    event = np.repeat(np.arange(n), count)
    m = len(event)
    cells = np.cumsum(N_WIRES)
    cell = rng.integers(0, cells[-1], m)
    layer = np.searchsorted(cells, cell, side="right")
    wire = cell - np.concatenate([[0], cells[:-1]])[layer]
    drift = rng.uniform(0, 0.5, m) * CELL[layer]
    charge_adc = rng.exponential(NOISE_RC_MEAN, m)
    return event, np.zeros(m, dtype=np.int64), layer, wire, np.full(m, np.inf), drift, charge_adc


def _first_in_cell(rng, event, layer, wire, arc):
    """Indices of the hits that fire a cell: a cell fires once per event, the earliest crossing
    (smallest arc length) wins; 2 % of the cells are dead."""
    key = (event * N_LAYERS + layer) * int(N_WIRES.max()) + wire
    order = np.lexsort((arc, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    return first[rng.random(len(first)) < CELL_EFFICIENCY]


def generate_chunk(rng: np.random.Generator, n: int, kind: str, noise_hits: float = 0.0) -> dict:
    """One chunk of ``n`` events of class ``kind`` as arrays (branch name -> array)."""
    p4, pid, charge = event_tracks(rng, n, kind)
    z0 = rng.normal(0.0, Z0_SIGMA, n)
    flat_p4 = p4.reshape(n * TRACKS, 4)
    flat_charge = np.tile(charge, n)
    flat_mass = np.tile([MASS[abs(code)] for code in pid], n)
    track, layer, wire, arc, drift, deposit = swim(rng, flat_p4, flat_charge, flat_mass, np.repeat(z0, TRACKS))
    event, trk = np.divmod(track, TRACKS)
    trk = trk + 1

    first = _first_in_cell(rng, event, layer, wire, arc)
    hits = tuple(a[first] for a in (event, trk, layer, wire, arc, drift, deposit))
    if noise_hits > 0:
        hits = tuple(np.concatenate(pair) for pair in zip(hits, _noise(rng, n, noise_hits)))
    event, trk, layer, wire, arc, drift, deposit = hits

    # hits in readout order per event: track by track along the flight, noise last
    order = np.lexsort((arc, np.where(trk == 0, TRACKS + 1, trk), event))
    event, trk, layer, wire, drift, deposit = (a[order] for a in (event, trk, layer, wire, drift, deposit))
    counts = np.bincount(event, minlength=n)

    phi_east = (wire + STAGGER[layer]) * CELL_PHI[layer]
    phi_west = phi_east + TWIST[layer]
    r = RADIUS[layer]
    rt = T0 + drift / DRIFT_VELOCITY + rng.normal(0.0, TIME_SIGMA, len(drift))
    rc = np.maximum(np.round(deposit + rng.normal(0.0, ADC_NOISE, len(deposit))), 0.0)
    rc_sum = np.bincount(event, weights=rc, minlength=n)

    def hits(values, dtype=np.float32):
        return ak.unflatten(np.asarray(values, dtype=dtype), counts)

    def tracks(values, dtype=np.float32):
        return ak.unflatten(np.asarray(values, dtype=dtype).reshape(-1), np.full(n, TRACKS))

    return {
        "layer": hits(layer, np.int32),
        "wire": hits(wire, np.int32),
        "XE": hits(r * np.cos(phi_east)),
        "YE": hits(r * np.sin(phi_east)),
        "XW": hits(r * np.cos(phi_west)),
        "YW": hits(r * np.sin(phi_west)),
        "RT": hits(rt),
        "RC": hits(rc),
        "TRK": hits(trk, np.int32),
        "trk_px": tracks(p4[:, :, 1]),
        "trk_py": tracks(p4[:, :, 2]),
        "trk_pz": tracks(p4[:, :, 3]),
        "trk_pid": tracks(np.broadcast_to(pid, (n, TRACKS)), np.int32),
        "trk_charge": tracks(np.broadcast_to(charge, (n, TRACKS)), np.int32),
        "rc_sum": rc_sum.astype(np.float32),
        "rc_mean": (rc_sum / np.maximum(counts, 1)).astype(np.float32),
    }


def generate(
    out_dir: str | Path,
    events: int,
    seed: int = 1,
    fmt: str = "ttree",
    *,
    events_per_file: int = DEFAULT_EVENTS_PER_FILE,
    tree: str = DEFAULT_TREE,
    noise_hits: float = 0.0,
    classes: tuple[str, ...] = CLASSES,
) -> list[Path]:
    """Write ``events`` events of each class into ``out_dir`` (``psip_ee_000.root``, ...,
    ``psip_mumu_*``, ``continuum_*``); ``noise_hits`` is the mean number of noise hits per event."""
    if noise_hits < 0:
        raise ValueError(f"noise_hits must be >= 0, got {noise_hits}")
    return write_classes(
        out_dir,
        CLASSES,
        partial(generate_chunk, noise_hits=noise_hits),
        events,
        seed,
        fmt,
        chunk_size=CHUNK_SIZE,
        events_per_file=events_per_file,
        tree=tree,
        only=classes,
    )
