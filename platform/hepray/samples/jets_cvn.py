"""Study 003 sample: boosted H -> bb vs QCD AK8-like jets as particle-flow candidates.

Writes ``hbb_000.root, ...`` and ``qcd_000.root, ...`` (TTree ``events``), one jet per
event: the jet (``jet_pt``, ``jet_eta``, ``jet_phi``, ``jet_mass``), its N-subjettiness
(``tau1``, ``tau2``, ``tau21``) and its constituents in the study's names
(``pfcand_ptrel`` = pT / jet pT, ``pfcand_etarel`` = eta - jet eta, ``pfcand_phirel`` =
phi - jet phi wrapped into [-pi, pi); one shared counter ``npfcand``), sorted by pT.

Physics model (a toy parton shower, grounded enough that the question is neither trivial
nor impossible)
    * Both classes: the initiating object has pT in 300-1000 GeV from a truncated
      exponential (slope 250 GeV, the same for both classes so pT alone does not tell them
      apart), |eta| < 2, phi uniform; everything is built in the small-angle frame around it.
    * Signal: a Higgs boson of mass 125 GeV decays isotropically to b bbar, so the b
      momentum fraction z is uniform and the opening angle is m / (pT sqrt(z (1 - z))).
      H is a colour singlet: each b radiates only inside its own cone (angular ordering
      with the b-bbar opening angle as the largest angle). Each b fragments into a hard
      b hadron (x_B ~ Beta(7, 2.5)) that decays into 3-7 particles with ~1.5 GeV
      transverse momentum relative to it; 20 % of b hadrons decay semileptonically and
      lose a neutrino. Prongs outside the R = 0.8 cone are lost, so low-pT Higgs jets can
      be one-prong with a low mass, as in real samples.
    * QCD: a quark (45 %) or gluon (55 %) jet. Its shower is coloured up to the jet
      radius: soft-collinear emissions with z ~ 1/z on [z_min, 0.5] and log-uniform angle
      below the previous one, probability alpha_s C / pi log(theta) log(z) per parton and
      round (alpha_s = 0.12, C = 4/3 quarks, 3 gluons; 3 rounds), so gluon jets are
      broader and busier.
      20 % of gluon jets (8 % of quark jets) start with a hard splitting (z uniform in
      0.1-0.5, angle log-uniform in 0.1-0.8), e.g. g -> bb: two-prong QCD jets whose mass
      and tau21 look like signal, which is what makes the task not trivial.
    * Hadronization (both): each final parton gives 1 + Poisson(n) hadrons,
      n = 2.5 log(pT / 5 GeV) (x 1.5 for gluons), sharing its pT as Gamma(0.6) fractions,
      each at an angle kT / p from the parton with kT ~ Exp(0.4 GeV).
    * Pile-up and underlying event after mitigation (PUPPI-like): Poisson(8) particles of
      pT ~ 0.3 + Exp(0.6) GeV uniform over the cone.
    * Reconstruction: particles with pT > 0.5 GeV within dR < 0.8 of the jet axis are the
      jet's constituents; the axis is found as a stable cone's (an anti-kT jet is a cone
      around its hard core): starting from the initiating direction, moved twice to the
      pT-weighted centre of the particles within 0.8 of it. The jet four-vector is the
      constituents' (massless) sum, so ``jet_mass`` includes the shower, neutrino losses,
      out-of-cone radiation and pile-up.

N-subjettiness (Thaler, Van Tilburg), tau_N = sum_k pT_k min_a dR(k, a) / (sum_k pT_k R0),
R0 = 0.8, dR in the (etarel, phirel) plane. Approximation: instead of exclusive-kT axes
refined by minimisation, the axes are the best choice among candidates taken from the
jet itself: tau1 minimises over the jet axis and each of the ``AXIS_CANDIDATES`` leading
constituents; tau2 over every pair of those leading constituents. Since a minimum over
more candidates can only be lower, these are upper bounds of the minimised tau_N; for a
two-prong jet whose prongs each hold one of the leading constituents they are close to it.

Everything is vectorized over the events of a chunk (``CHUNK_SIZE`` events); each chunk is
seeded from ``numpy.random.SeedSequence(seed, spawn_key=(class, chunk))``, so the same seed
gives identical arrays, independent of ``events_per_file``.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import awkward as ak
import numpy as np

from hepray.samples.common import (
    DEFAULT_EVENTS_PER_FILE,
    DEFAULT_TREE,
    write_classes,
)

CLASSES = ("hbb", "qcd")
CHUNK_SIZE = 1000
BRANCHES = (
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_mass",
    "tau1",
    "tau2",
    "tau21",
    "pfcand_ptrel",
    "pfcand_etarel",
    "pfcand_phirel",
)

# --- kinematics and reconstruction ------------------------------------------------
PT_MIN, PT_MAX, PT_SLOPE = 300.0, 1000.0, 250.0  # GeV
ETA_MAX = 2.0
JET_R = 0.8
CONE_ITERATIONS = 2
CONSTITUENT_PT_MIN = 0.5  # GeV
HIGGS_MASS = 125.0
# --- shower ---------------------------------------------------------------------------
ALPHA_S = 0.12
CF, CA = 4.0 / 3.0, 3.0
SHOWER_ROUNDS = 3
THETA_MIN = 0.01  # below this angle emissions are not resolved in a PF jet image
EMISSION_PT_MIN = 3.0  # GeV: softer emissions are part of the hadronization below
GLUON_FRACTION = 0.55
HARD_SPLIT = {"gluon": 0.2, "quark": 0.08}
# --- hadronization, b hadrons, pile-up -------------------------------------------------
HADRON_SHARE_ALPHA = 0.6
HADRON_KT = 0.4  # GeV
B_DECAY_KT = 1.5  # GeV, ~ m_B / 3.5
B_SEMILEPTONIC = 0.2
PILEUP_MEAN, PILEUP_PT_MIN, PILEUP_PT_SLOPE = 8.0, 0.3, 0.6
# --- N-subjettiness ---------------------------------------------------------------------
AXIS_CANDIDATES = 6
TAU_R0 = JET_R


class _Particles:
    """Flat arrays of particles (or partons) of one chunk in the local frame of the jet's
    initiating direction: event index, pT, offsets (u, v) in (eta, phi)."""

    def __init__(self, evt, pt, u, v):
        self.evt, self.pt, self.u, self.v = evt, pt, u, v

    @staticmethod
    def concat(parts: list[_Particles]) -> _Particles:
        return _Particles(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("evt", "pt", "u", "v")))

    def take(self, mask) -> _Particles:
        return _Particles(self.evt[mask], self.pt[mask], self.u[mask], self.v[mask])


def _truncated_exponential(rng, n, low, high, slope):
    span = 1.0 - np.exp(-(high - low) / slope)
    return low - slope * np.log1p(-rng.random(n) * span)


def _direction(rng, n):
    a = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.cos(a), np.sin(a)


def _split(rng, parent: _Particles, z, theta):
    """Two daughters with pT fractions (1 - z, z) at angle theta from each other, placed so
    the pT-weighted centroid stays on the parent's direction."""
    cu, cv = _direction(rng, len(z))
    hard = _Particles(parent.evt, parent.pt * (1 - z), parent.u + z * theta * cu, parent.v + z * theta * cv)
    soft = _Particles(parent.evt, parent.pt * z, parent.u - (1 - z) * theta * cu, parent.v - (1 - z) * theta * cv)
    return hard, soft


def _shower(rng, partons: _Particles, gluon, theta_max):
    """Angular-ordered soft-collinear emissions, SHOWER_ROUNDS rounds over all partons.

    Returns the final partons with their gluon flags."""
    for _ in range(SHOWER_ROUNDS):
        m = len(partons.pt)
        z_min = np.maximum(EMISSION_PT_MIN / partons.pt, 0.01)
        log_theta = np.log(np.maximum(theta_max / THETA_MIN, 1.0))
        log_z = np.log(np.maximum(0.5 / z_min, 1.0))
        colour = np.where(gluon, CA, CF)
        p_emit = np.clip(ALPHA_S * colour / np.pi * log_theta * log_z, 0.0, 0.9)
        emit = rng.random(m) < p_emit
        if not emit.any():
            break
        z = z_min * (0.5 / z_min) ** rng.random(m)  # density ~ 1/z
        theta = THETA_MIN * np.exp(rng.random(m) * log_theta)  # log-uniform below theta_max
        hard, soft = _split(rng, partons.take(emit), z[emit], theta[emit])
        partons = _Particles.concat([partons.take(~emit), hard, soft])
        gluon = np.concatenate([gluon[~emit], gluon[emit], np.ones(emit.sum(), bool)])
        theta_max = np.concatenate([theta_max[~emit], theta[emit], theta[emit]])
    return partons, gluon


def _fragment(rng, parent: _Particles, counts, share_alpha, kt_scale):
    """Split each parent into ``counts`` particles with Gamma(share_alpha) pT shares, each at
    angle kT / pT from the parent's direction (kT ~ Exp(kt_scale)); the shares' pT-weighted
    offset is subtracted so the parent's direction is kept."""
    idx = np.repeat(np.arange(len(parent.pt)), counts)
    share = rng.gamma(share_alpha, 1.0, len(idx)) + 1e-12
    share /= np.bincount(idx, weights=share, minlength=len(parent.pt))[idx]
    pt = parent.pt[idx] * share
    theta = np.minimum(rng.exponential(kt_scale, len(idx)) / np.maximum(pt, 1e-3), 1.5)
    cu, cv = _direction(rng, len(idx))
    du, dv = theta * cu, theta * cv
    for d in (du, dv):
        d -= np.bincount(idx, weights=share * d, minlength=len(parent.pt))[idx]
    return _Particles(parent.evt[idx], pt, parent.u[idx] + du, parent.v[idx] + dv)


def _hadronize(rng, partons: _Particles, gluon):
    n_mean = 2.5 * np.log(np.maximum(partons.pt / 5.0, 1.0)) * np.where(gluon, 1.5, 1.0)
    return _fragment(rng, partons, 1 + rng.poisson(n_mean), HADRON_SHARE_ALPHA, HADRON_KT)


def _b_quarks(rng, quarks: _Particles):
    """b quark -> shower inside the b-bbar cone (done by the caller) -> hard b hadron, whose
    decay products are kept (minus the neutrino of semileptonic decays), + the rest hadronized."""
    x_b = rng.beta(7.0, 2.5, len(quarks.pt))
    hadron = _Particles(quarks.evt, quarks.pt * x_b, quarks.u, quarks.v)
    rest = _Particles(quarks.evt, quarks.pt * (1 - x_b), quarks.u, quarks.v)
    n_decay = rng.integers(3, 8, len(quarks.pt))
    decay = _fragment(rng, hadron, n_decay, 1.5, B_DECAY_KT)
    # semileptonic: the first decay product of the hadron is the (invisible) neutrino
    first = np.r_[0, np.cumsum(n_decay)[:-1]]
    visible = np.ones(len(decay.pt), bool)
    visible[first[rng.random(len(quarks.pt)) < B_SEMILEPTONIC]] = False
    return _Particles.concat([decay.take(visible), _hadronize(rng, rest, np.zeros(len(rest.pt), bool))])


def _signal(rng, n, pt):
    evt = np.arange(n)
    z = rng.random(n)
    z = np.clip(z, 0.02, 0.98)
    theta = np.minimum(HIGGS_MASS / (pt * np.sqrt(z * (1 - z))), 3.0)
    b1, b2 = _split(rng, _Particles(evt, pt, np.zeros(n), np.zeros(n)), z, theta)
    quarks = _Particles.concat([b1, b2])
    # colour singlet: each b's radiation stays inside the b-bbar opening angle
    showered, gluon = _shower(rng, quarks, np.zeros(2 * n, bool), np.concatenate([theta, theta]))
    # the shower keeps the emitter's flavour in its "hard" daughter and emits gluons, so the
    # non-gluon partons are exactly the two b quarks
    is_b = ~gluon
    return _Particles.concat([_b_quarks(rng, showered.take(is_b)), _hadronize(rng, showered.take(~is_b), gluon[~is_b])])


def _qcd(rng, n, pt):
    evt = np.arange(n)
    gluon = rng.random(n) < GLUON_FRACTION
    start = _Particles(evt, pt, np.zeros(n), np.zeros(n))
    hard = rng.random(n) < np.where(gluon, HARD_SPLIT["gluon"], HARD_SPLIT["quark"])
    z = rng.uniform(0.1, 0.5, n)
    theta = 0.1 * np.exp(rng.random(n) * np.log(JET_R / 0.1))
    a, b = _split(rng, start.take(hard), z[hard], theta[hard])
    partons = _Particles.concat([start.take(~hard), a, b])
    flags = np.concatenate([gluon[~hard], gluon[hard], gluon[hard]])
    # coloured: radiation up to the jet radius (and beyond: it is then lost from the cone)
    partons, flags = _shower(rng, partons, flags, np.full(len(flags), JET_R))
    return _hadronize(rng, partons, flags)


def _pileup(rng, n):
    count = rng.poisson(PILEUP_MEAN, n)
    evt = np.repeat(np.arange(n), count)
    r = JET_R * np.sqrt(rng.random(len(evt)))
    cu, cv = _direction(rng, len(evt))
    pt = PILEUP_PT_MIN + rng.exponential(PILEUP_PT_SLOPE, len(evt))
    return _Particles(evt, pt, r * cu, r * cv)


def nsubjettiness(pt, deta, dphi, counts, candidates: int = AXIS_CANDIDATES, r0: float = TAU_R0):
    """(tau1, tau2) per jet from flat constituents sorted by pT within each jet (see the module
    doc for the axis approximation). ``counts``: constituents per jet; empty jets give 0."""
    n = len(counts)
    evt = np.repeat(np.arange(n), counts)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    k = np.arange(candidates)
    valid = k[None, :] < counts[:, None]
    lead = np.where(valid, first[:, None] + k[None, :], 0)  # (n, K) indices of the leading constituents
    if len(pt) == 0:
        return np.zeros(n), np.zeros(n)
    axis_eta, axis_phi = deta[lead], dphi[lead]
    # distance of every constituent to each candidate axis of its jet: (P, K)
    dist = np.hypot(deta[:, None] - axis_eta[evt], dphi[:, None] - axis_phi[evt])
    d0 = np.maximum(np.bincount(evt, weights=pt, minlength=n) * r0, 1e-12)

    def per_jet(values):  # (P, A) -> (n, A) pT-weighted sums
        a = values.shape[1]
        sums = np.bincount(
            (evt[:, None] * a + np.arange(a)).ravel(), weights=(pt[:, None] * values).ravel(), minlength=n * a
        )
        return sums.reshape(n, a) / d0[:, None]

    jet_axis = np.hypot(deta, dphi)[:, None]
    tau1_all = per_jet(np.concatenate([jet_axis, dist], axis=1))
    tau1 = np.where(np.concatenate([np.ones((n, 1), bool), valid], axis=1), tau1_all, np.inf).min(axis=1)
    pairs = np.array(list(combinations(range(candidates), 2)))
    tau2_all = per_jet(np.minimum(dist[:, pairs[:, 0]], dist[:, pairs[:, 1]]))
    pair_ok = valid[:, pairs[:, 0]] & valid[:, pairs[:, 1]]
    tau2 = np.where(pair_ok, tau2_all, np.inf).min(axis=1)
    tau2 = np.where(np.isfinite(tau2), tau2, tau1)  # fewer than 2 constituents: tau2 = tau1
    empty = counts == 0
    tau1[empty] = 0.0
    tau2[empty] = 0.0
    return tau1, tau2


def generate_chunk(rng: np.random.Generator, n: int, kind: str) -> dict:
    """One chunk of ``n`` jets of class ``kind`` ("hbb" or "qcd") as arrays."""
    if kind not in CLASSES:
        raise ValueError(f"unknown class {kind!r}: expected one of {CLASSES}")
    pt0 = _truncated_exponential(rng, n, PT_MIN, PT_MAX, PT_SLOPE)
    eta0 = rng.uniform(-ETA_MAX, ETA_MAX, n)
    phi0 = rng.uniform(-np.pi, np.pi, n)
    shower = _signal(rng, n, pt0) if kind == "hbb" else _qcd(rng, n, pt0)
    parts = _Particles.concat([shower, _pileup(rng, n)])
    parts = parts.take(parts.pt > CONSTITUENT_PT_MIN)
    # cone jet: the axis is moved to the pT-weighted centre of the particles within R of it,
    # starting from the initiating direction
    axis_u, axis_v = np.zeros(n), np.zeros(n)
    for _ in range(CONE_ITERATIONS):
        near = np.hypot(parts.u - axis_u[parts.evt], parts.v - axis_v[parts.evt]) < JET_R
        weight = np.bincount(parts.evt, weights=parts.pt * near, minlength=n)
        weight = np.where(weight > 0, weight, 1.0)
        axis_u = np.bincount(parts.evt, weights=parts.pt * parts.u * near, minlength=n) / weight
        axis_v = np.bincount(parts.evt, weights=parts.pt * parts.v * near, minlength=n) / weight
    parts = parts.take(np.hypot(parts.u - axis_u[parts.evt], parts.v - axis_v[parts.evt]) < JET_R)
    order = np.lexsort((-parts.pt, parts.evt))
    parts = parts.take(order)
    evt = parts.evt
    counts = np.bincount(evt, minlength=n)

    # absolute massless four-vectors, summed per jet
    eta = eta0[evt] + parts.u
    phi = phi0[evt] + parts.v
    px, py, pz = parts.pt * np.cos(phi), parts.pt * np.sin(phi), parts.pt * np.sinh(eta)
    energy = parts.pt * np.cosh(eta)
    sums = [np.bincount(evt, weights=w, minlength=n) for w in (px, py, pz, energy)]
    jpx, jpy, jpz, je = sums
    jet_pt = np.hypot(jpx, jpy)
    jet_eta = np.arcsinh(np.divide(jpz, jet_pt, out=np.zeros(n), where=jet_pt > 0))
    jet_phi = np.arctan2(jpy, jpx)
    jet_mass = np.sqrt(np.maximum(je**2 - jpx**2 - jpy**2 - jpz**2, 0.0))

    ptrel = parts.pt / np.where(jet_pt > 0, jet_pt, 1.0)[evt]
    etarel = eta - jet_eta[evt]
    phirel = (phi - jet_phi[evt] + np.pi) % (2 * np.pi) - np.pi
    tau1, tau2 = nsubjettiness(parts.pt, etarel, phirel, counts)
    tau21 = np.divide(tau2, tau1, out=np.zeros(n), where=tau1 > 0)

    def jag(values):
        return ak.unflatten(np.asarray(values, dtype=np.float32), counts)

    return {
        "jet_pt": jet_pt.astype(np.float32),
        "jet_eta": jet_eta.astype(np.float32),
        "jet_phi": jet_phi.astype(np.float32),
        "jet_mass": jet_mass.astype(np.float32),
        "tau1": tau1.astype(np.float32),
        "tau2": tau2.astype(np.float32),
        "tau21": tau21.astype(np.float32),
        "pfcand_ptrel": jag(ptrel),
        "pfcand_etarel": jag(etarel),
        "pfcand_phirel": jag(phirel),
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
    """Write ``events`` H -> bb and ``events`` QCD jets into ``out_dir``.

    Returns the paths: ``hbb_000.root, ...`` then ``qcd_000.root, ...``.
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
