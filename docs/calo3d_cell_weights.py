"""What linear weightings of study 001's calorimeter cells give, per electron energy bin: where the
information a network can use beyond the summed energy lies.

    python docs/calo3d_cell_weights.py [--train 'data/calo3d/electron_*.root'] [--test 'data/calo3d_eval/electron_*.root']

Each estimate is E = w . x + c, fitted by least squares on the train files with weights 1/E^2 (the
relative error, as the job's loss), where x is: the summed energy (the linear calibration); the
longitudinal profiles (ECAL energy per layer, HCAL per 10 layers); the face-on maps (ECAL and HCAL
energy per tower, summed over depth); or both. The cells are rasterized by jobs/calo3d.yaml's own
`ecal` and `hcal` inputs, unnormalised. The per-bin widths are the same Gaussian-core
sigma/E as `hepray run` reports, on the test files (another seed). The face-on map is what beats
the sum at low energy: soft background deposits lie away from the shower, and a weighted sum of
towers leaves them out.
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import uproot
from sklearn.linear_model import LinearRegression

from hepray.evaluate.resolution import response_summary
from hepray.inputs import branches_for, make_input
from hepray.spec import load_job

BINS = [10, 20, 40, 80, 160, 500]
JOB = "jobs/calo3d.yaml"


def features(pattern: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """True energies and each estimate's inputs for every event of the files."""
    inputs = load_job(JOB).data.inputs
    ecal, hcal = (inputs[name].model_copy(update={"norm": "none"}) for name in ("ecal", "hcal"))
    branches = ["energy", *branches_for(ecal), *branches_for(hcal)]
    energies, parts = [], {"summed energy": [], "longitudinal profiles": [], "face-on maps": []}
    for path in sorted(glob.glob(pattern)):
        arrays = uproot.open(path)["events"].arrays(branches)
        ecal_cells, hcal_cells = make_input(ecal, arrays)[:, 0], make_input(hcal, arrays)[:, 0]  # (events, x, y, depth)
        n = len(arrays)
        energies.append(arrays["energy"].to_numpy())
        parts["summed energy"].append((ecal_cells.sum((1, 2, 3)) + hcal_cells.sum((1, 2, 3)))[:, None])
        parts["longitudinal profiles"].append(
            np.hstack([ecal_cells.sum((1, 2)), hcal_cells.sum((1, 2)).reshape(n, 6, 10).sum(2)])
        )
        parts["face-on maps"].append(np.hstack([ecal_cells.sum(3).reshape(n, -1), hcal_cells.sum(3).reshape(n, -1)]))
    if not energies:
        raise SystemExit(f"no files match {pattern!r}: hepray make-data calo3d --out ... first")
    x = {name: np.vstack(chunks).astype(np.float64) for name, chunks in parts.items()}
    x["profiles and maps"] = np.hstack([x["longitudinal profiles"], x["face-on maps"]])
    return np.concatenate(energies).astype(np.float64), x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="data/calo3d/electron_*.root")
    parser.add_argument("--test", default="data/calo3d_eval/electron_*.root")
    args = parser.parse_args()
    train_energy, train = features(args.train)
    test_energy, test = features(args.test)
    print(f"sigma(E)/E [%] of electrons ({len(train_energy)} to fit, {len(test_energy)} to measure)")
    print(f"{'inputs of E = w . x + c':24s}" + "".join(f"{f'{lo}-{hi} GeV':>12s}" for lo, hi in zip(BINS, BINS[1:])))
    for name in train:
        fit = LinearRegression().fit(train[name], train_energy, sample_weight=train_energy**-2.0)
        predicted = fit.predict(test[name])
        widths = []
        for low, high in zip(BINS, BINS[1:]):
            selected = (test_energy >= low) & (test_energy < high)
            widths.append(100 * response_summary(predicted[selected], test_energy[selected])["resolution_sigma"])
        print(f"{name:24s}" + "".join(f"{w:12.2f}" for w in widths))


if __name__ == "__main__":
    main()
