"""Tiny ROOT files written with uproot for the tests: towers around a candidate, as TTrees."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot


def write_tree(path: Path, branches: dict, tree: str = "events") -> Path:
    """Write a TTree; jagged awkward branches get uproot's counter branches."""
    types = {name: (value.type if isinstance(value, ak.Array) else value.dtype) for name, value in branches.items()}
    with uproot.recreate(path) as file:
        file.mktree(tree, types)
        if len(next(iter(branches.values()))):
            file[tree].extend(branches)
    return path


def towers(
    n: int, first_id: int, seed: int, mean_towers: float = 6.0, energy: float = 2.0, spread: float = 0.05
) -> dict:
    """n events: candidate (eta, phi), jagged towers near it, a unique event id, a flat x, and
    the summed tower energy; classes made with other `energy`/`spread` are learnable."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean_towers, n)
    total = int(counts.sum())
    eta = rng.uniform(-2, 2, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    tower_e = rng.exponential(energy, total)
    return {
        "evt": np.arange(first_id, first_id + n, dtype=np.int64),
        "x": rng.uniform(0, 1, n),
        "cand_eta": eta,
        "cand_phi": phi,
        "tower_eta": ak.unflatten(np.repeat(eta, counts) + rng.normal(0, spread, total), counts),
        "tower_phi": ak.unflatten(np.repeat(phi, counts) + rng.normal(0, spread, total), counts),
        "tower_e": ak.unflatten(tower_e, counts),
        "e_sum": np.bincount(np.repeat(np.arange(n), counts), weights=tower_e, minlength=n),
    }


def etaphi_job(files: dict, **data) -> dict:
    """A minimal valid binary job over tower files (a dict for JobSpec.model_validate)."""
    return {
        "name": "test",
        "data": {
            "files": files,
            "observers": ["evt", "x"],
            "inputs": {
                "image": {
                    "kind": "etaphi",
                    "size": 9,
                    "cell": 0.05,
                    "center": {"eta": "cand_eta", "phi": "cand_phi"},
                    "points": [{"eta": "tower_eta", "phi": "tower_phi", "value": "tower_e"}],
                }
            },
            **data,
        },
        "model": {"name": "seed_cnn", "filters": 4, "blocks": 2, "dense": 8},
        "task": {"kind": "binary"},
    }


def read_events(paths, tree: str = "events") -> ak.Array:
    """Every entry of the tree in the files, concatenated in file order."""
    arrays = []
    for path in paths:
        with uproot.open(path) as file:
            arrays.append(file[tree].arrays())
    return ak.concatenate(arrays)
