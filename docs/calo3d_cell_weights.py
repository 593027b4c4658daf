"""What linear weightings of study 001's calorimeter cells give, per electron energy bin: where the
information a network can use beyond the summed energy lies.

    python docs/calo3d_cell_weights.py [--train 'data/calo3d/electron_*.root'] [--test 'data/calo3d_eval/electron_*.root']

Each estimate is E = w . x + c, fitted by least squares on the train files with weights 1/E^2 (the
relative error, as the job's loss), where x is: the summed energy (the linear calibration); the
longitudinal profiles (ECAL energy per layer, HCAL per 10 layers); the face-on maps (ECAL and HCAL
energy per tower, summed over depth); or both. The per-bin widths are the same Gaussian-core
sigma/E as `hepray run` reports, on the test files (another seed). The face-on map is what beats
the sum at low energy: soft background deposits lie away from the shower, and a weighted sum of
towers leaves them out.
"""

from __future__ import annotations

import argparse
import glob

import awkward as ak
import numpy as np
import uproot
from sklearn.linear_model import LinearRegression

from hepray.evaluate.resolution import response_summary

BINS = [10, 20, 40, 80, 160, 500]
CALORIMETERS = {"ecal": (25, 25, 25), "hcal": (5, 5, 60)}


def cells(arrays, calo: str) -> np.ndarray:
    """Dense (events, x, y, depth) energies from the sparse cell branches."""
    n = len(arrays)
    x, y, z = (ak.to_numpy(ak.flatten(arrays[f"{calo}_{axis}"])).astype(np.int64) for axis in "xyz")
    energy = ak.to_numpy(ak.flatten(arrays[f"{calo}_e"])).astype(np.float64)
    event = np.repeat(np.arange(n), ak.to_numpy(ak.num(arrays[f"{calo}_e"])))
    nx, ny, nz = CALORIMETERS[calo]
    flat = ((event * nx + x) * ny + y) * nz + z
    return np.bincount(flat, weights=energy, minlength=n * nx * ny * nz).reshape(n, nx, ny, nz)


def features(pattern: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """True energies and each estimate's inputs for every event of the files."""
    energies, parts = [], {"summed energy": [], "longitudinal profiles": [], "face-on maps": []}
    branches = ["energy"] + [f"{calo}_{v}" for calo in CALORIMETERS for v in "xyze"]
    for path in sorted(glob.glob(pattern)):
        arrays = uproot.open(path)["events"].arrays(branches)
        ecal, hcal = cells(arrays, "ecal"), cells(arrays, "hcal")
        n = len(arrays)
        energies.append(arrays["energy"].to_numpy())
        parts["summed energy"].append((ecal.sum((1, 2, 3)) + hcal.sum((1, 2, 3)))[:, None])
        parts["longitudinal profiles"].append(np.hstack([ecal.sum((1, 2)), hcal.sum((1, 2)).reshape(n, 6, 10).sum(2)]))
        parts["face-on maps"].append(np.hstack([ecal.sum(3).reshape(n, -1), hcal.sum(3).reshape(n, -1)]))
    if not energies:
        raise SystemExit(f"no files match {pattern!r}: hepray make-data calo3d --out ... first")
    x = {name: np.vstack(chunks) for name, chunks in parts.items()}
    x["profiles and maps"] = np.hstack([x["longitudinal profiles"], x["face-on maps"]])
    return np.concatenate(energies), x


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
        fit = LinearRegression().fit(train[name], train_energy, sample_weight=train_energy ** -2.0)
        predicted = fit.predict(test[name])
        widths = []
        for low, high in zip(BINS, BINS[1:]):
            selected = (test_energy >= low) & (test_energy < high)
            widths.append(100 * response_summary(predicted[selected], test_energy[selected])["resolution_sigma"])
        print(f"{name:24s}" + "".join(f"{w:12.2f}" for w in widths))


if __name__ == "__main__":
    main()
