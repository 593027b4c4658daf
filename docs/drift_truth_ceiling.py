"""How separable ψ' -> ππJ/ψ is from continuum ππμμ in the drift-chamber generator, from the true
track momenta alone: gradient-boosted trees on the four tracks' sorted pT (all a transverse, xy
image can show: curvature) and on sorted pT and |p| (what a full 3-D measurement would give).

    python docs/drift_truth_ceiling.py [--events 20000]

Prints one line per signal class and feature set: the test AUC (half the events held out).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from hepray.samples.drift_chamber import event_tracks


def sorted_momenta(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    p4, _, _ = event_tracks(rng, n, kind)
    pt = np.hypot(p4[..., 1], p4[..., 2])
    p = np.linalg.norm(p4[..., 1:], axis=-1)
    return np.column_stack([np.sort(pt, axis=1), np.sort(p, axis=1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000, help="events per class")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    continuum = sorted_momenta(rng, args.events, "continuum")
    for signal in ("psip_ee", "psip_mumu"):
        x = np.vstack([sorted_momenta(rng, args.events, signal), continuum])
        y = np.r_[np.ones(args.events), np.zeros(args.events)]
        train = rng.random(len(y)) < 0.5
        for name, columns in (("sorted pT", slice(0, 4)), ("sorted pT and |p|", slice(0, 8))):
            trees = HistGradientBoostingClassifier(random_state=1).fit(x[train, columns], y[train])
            auc = roc_auc_score(y[~train], trees.predict_proba(x[~train, columns])[:, 1])
            print(f"{signal} vs continuum, {name}: AUC {auc:.3f}")


if __name__ == "__main__":
    main()
