"""Study 002's next step: one entry per track, for track classification and momentum regression.

The events of the ``drift_chamber`` generator (psi' -> pi+ pi- J/psi -> pi+ pi- e+e- / mu+mu-
and e+e- -> pi+ pi- mu+ mu-, in equal numbers) are cut into their tracks: each entry holds
the hits one track made (``layer``, ``wire``, ``XE``, ``YE``, ``XW``, ``YW``, ``RT``, ``RC``, as
in the event files, without ``TRK`` and without noise) and its truth (``px``, ``py``, ``pz``,
``pt``, ``p`` in GeV, ``charge``, ``pid``). Tracks with fewer than ``MIN_HITS`` hits are dropped
(as a track finder would). Files per particle type, one class each:
``track_e_000.root, ...``, ``track_mu_*``, ``track_pi_*``, each with ``events`` tracks.

Electrons come only from J/psi decays (~1.55 GeV/c), muons from J/psi and from the continuum
(softer), pions from both (the psi' ones soft, often curling): momentum (curvature) and dE/dx
(RC) both tell the types apart, neither alone perfectly.

Chunk j of event class c is the same chunk (same seed) as in ``drift_chamber``; chunks are
drawn class by class until every particle type has ``events`` tracks, which are then a seeded
random pick of the tracks collected.
"""

from __future__ import annotations

from itertools import count
from pathlib import Path

import awkward as ak
import numpy as np

from hepray.samples import drift_chamber as dc
from hepray.samples.common import DEFAULT_EVENTS_PER_FILE, DEFAULT_TREE, check_fmt, write_split

PARTICLES = {"track_e": 11, "track_mu": 13, "track_pi": 211}
MIN_HITS = 8
HIT_BRANCHES = ("layer", "wire", "XE", "YE", "XW", "YW", "RT", "RC")


def split_tracks(chunk: dict) -> dict[str, dict]:
    """The tracks of one event chunk with >= MIN_HITS hits, grouped by particle type."""
    n = len(chunk["TRK"])
    counts = ak.to_numpy(ak.num(chunk["TRK"]))
    event = np.repeat(np.arange(n), counts)
    trk = ak.to_numpy(ak.flatten(chunk["TRK"])).astype(np.int64)
    on_track = trk > 0
    track_id = event[on_track] * dc.TRACKS + trk[on_track] - 1
    order = np.argsort(track_id, kind="stable")  # hits stay in flight order within a track
    hits_per_track = np.bincount(track_id, minlength=n * dc.TRACKS)
    hit_values = {name: ak.to_numpy(ak.flatten(chunk[name]))[on_track][order] for name in HIT_BRANCHES}

    px, py, pz = (ak.to_numpy(chunk[f"trk_{c}"]).reshape(-1).astype(np.float64) for c in ("px", "py", "pz"))
    pid = ak.to_numpy(chunk["trk_pid"]).reshape(-1)
    charge = ak.to_numpy(chunk["trk_charge"]).reshape(-1)
    pt = np.hypot(px, py)
    truth = {"px": px, "py": py, "pz": pz, "pt": pt, "p": np.hypot(pt, pz)}

    starts = np.concatenate([[0], np.cumsum(hits_per_track)[:-1]])
    out = {}
    for prefix, code in PARTICLES.items():
        keep = np.flatnonzero((np.abs(pid) == code) & (hits_per_track >= MIN_HITS))
        lengths = hits_per_track[keep]
        hit_index = np.repeat(starts[keep] - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
        tracks = {name: ak.unflatten(values[hit_index], lengths) for name, values in hit_values.items()}
        tracks.update({name: values[keep].astype(np.float32) for name, values in truth.items()})
        tracks["charge"] = charge[keep].astype(np.int32)
        tracks["pid"] = pid[keep].astype(np.int32)
        out[prefix] = tracks
    return out


def collect_tracks(events: int, seed: int = 1, chunk_size: int = dc.CHUNK_SIZE) -> dict[str, dict]:
    """``events`` tracks of each particle type, from event chunks drawn class by class."""
    parts: dict[str, list[dict]] = {prefix: [] for prefix in PARTICLES}
    have = dict.fromkeys(PARTICLES, 0)
    for j in count():
        for cls, kind in enumerate(dc.CLASSES):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(cls, j)))
            for prefix, tracks in split_tracks(dc.generate_chunk(rng, chunk_size, kind)).items():
                parts[prefix].append(tracks)
                have[prefix] += len(tracks["pid"])
        if min(have.values()) >= events:
            break
    # a seeded shuffle before truncating, so muons and pions keep the mix of both event sources
    shuffle = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(len(dc.CLASSES),)))
    out = {}
    for prefix, chunks in parts.items():
        pick = shuffle.permutation(have[prefix])[:events]
        out[prefix] = {
            name: (
                ak.concatenate([p[name] for p in chunks])
                if isinstance(chunks[0][name], ak.Array)
                else np.concatenate([p[name] for p in chunks])
            )[pick]
            for name in chunks[0]
        }
    return out


def generate(
    out_dir: str | Path,
    events: int,
    seed: int = 1,
    fmt: str = "ttree",
    *,
    events_per_file: int = DEFAULT_EVENTS_PER_FILE,
    tree: str = DEFAULT_TREE,
) -> list[Path]:
    """Write ``events`` tracks of each particle type into ``out_dir`` (``track_e_000.root``, ...)."""
    check_fmt(fmt)
    if events < 1:
        raise ValueError(f"events must be >= 1, got {events}")
    paths: list[Path] = []
    for prefix, tracks in collect_tracks(events, seed).items():
        paths += write_split(out_dir, prefix, [tracks], events_per_file=events_per_file, tree=tree, fmt=fmt)
    return paths
