"""Issue 18, point 5: does `data.reweight` take the jet pT out of a jet tagger's score, and at what cost in AUC?

    python docs/reweight_study.py [--events 22000] [--epochs 3] [--reuse]

1. The check first: how different are the H -> bb and QCD jet_pt spectra of hepray's jets_cvn
   generator (data/jets_cvn, if present)? Its jets all start from one pT spectrum; only the
   reconstructed jet_pt differs, through H -> bb jets that lose a prong below ~300 GeV (printed).
   Above 300 GeV the classes' spectra are the same, so there is nothing to reweight there.
2. So this script makes a sample whose classes' kinematics differ (data/jets_reweight): it
   generates `--events` jets per class with that generator (seed 1, in a temporary directory),
   keeps jets with jet_pt > 300 GeV (a trigger threshold), keeps each QCD jet with probability
   exp(-(jet_pt - 300 GeV) / QCD_SLOPE) (a steeper QCD spectrum, as QCD falls faster than the
   signal), and as many H -> bb jets (the first ones) as QCD jets are left. Per pT the jets are
   the generator's, unchanged; only the spectrum of QCD differs. Written with hepray's own
   sample writer (hepray.samples.common.write_split), so the files look like the generator's.
3. It runs jobs/jets_particlenet_reweight.yaml (ParticleNet-Lite whose candidates also carry
   their absolute pT, log(pfcand_ptrel * jet_pt), so the network CAN learn the jet pT) twice with
   `hepray run`: without reweighting, and with
   `data.reweight: {vars: [jet_pt], bins: [REWEIGHT_BINS], target: flat}` (max_weight 10).
4. It scores every entry of the sample with each run's model (`hepray predict --format parquet`)
   and picks the test split the way the run's reader does: an entry is in the test split when
   `split_mask(split_of(file name, entry, split.seed), "test", split.val, split.test)`
   (hepray.data.root_source; the job has no cut). The AUC on those events is checked against the
   run's own test_auc in metrics.json, which makes sure they are the run's test events.
5. On the test split it measures, per run: the AUC; the Spearman rank correlation
   (scipy.stats.spearmanr) of the H -> bb score with jet_pt in QCD test jets (and in H -> bb test
   jets, and with jet_mass in QCD test jets), each with its bootstrap standard deviation (200
   resamples); how a cut on the score sculpts the QCD spectrum: the number and median jet_pt of the
   QCD test jets above the cut that keeps CUT_EFFICIENCY of the H -> bb test jets, against the
   median of all QCD test jets; and per jet_pt bin (REWEIGHT_BINS) the QCD jets' median score and the
   fraction of them above that cut (flat in jet_pt = a cut that does not sculpt the QCD spectrum). The
   same for the mass window -abs(jet_mass - 125) on the same events, as an untrained reference; the
   AUC of jet_pt alone is the job's `pt` baseline (metrics.json).

The runs go to runs/jets_particlenet_pt and runs/jets_particlenet_pt_reweight (each with its model's
scores of the whole sample in predictions_sample/); `--reuse` measures again from what is there.
The numbers go to docs/reweight_study.json with the date and the sample size; docs/make_results.py
renders them into docs/results.md (this script calls it at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import uproot
from scipy.stats import ks_2samp, spearmanr
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
import make_results  # noqa: E402  (docs/ is not a package)

HERE = Path(__file__).parent
ROOT = HERE.parent
JOB = "jobs/jets_particlenet_reweight.yaml"
SAMPLE = make_results.SAMPLE_DIR
DEFAULT_SAMPLE = "data/jets_cvn"  # the jets job's own data, for step 1
RESULT = HERE / "reweight_study.json"
PT_MIN = 300.0  # GeV
QCD_SLOPE = 200.0  # GeV: QCD jets kept with probability exp(-(jet_pt - PT_MIN) / QCD_SLOPE)
REWEIGHT_BINS = [300, 350, 400, 450, 500, 550, 600, 700, 1100]
SPECTRUM_BINS = [0, 250, 300, 350, 400, 450, 500, 550, 600, 700, 1100]
RUNS = {  # run name -> extra --set overrides
    "jets_particlenet_pt": [],
    "jets_particlenet_pt_reweight": [
        f"data.reweight={{vars: [jet_pt], bins: [{json.dumps(REWEIGHT_BINS)}], target: flat}}"
    ],
}
BOOTSTRAP = 200
CUT_EFFICIENCY = 0.8  # the working point at which the QCD jets passing a score cut are looked at


def hepray(*args: str) -> None:
    """The hepray CLI of this interpreter's environment, from the repository root."""
    command = [str(Path(sys.executable).parent / "hepray"), *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env=os.environ.copy())


def read_class(directory: Path, kind: str, branches: list[str] | None = None) -> ak.Array:
    files = sorted(directory.glob(f"{kind}_*.root"))
    if not files:
        raise SystemExit(f"{directory}: no {kind}_*.root")
    return ak.concatenate([uproot.open(path)["events"].arrays(branches) for path in files])


def spectra(directory: Path) -> dict:
    """How the classes' jet_pt spectra differ: fractions per bin, KS distance, AUC of jet_pt alone."""
    pt = {
        kind: ak.to_numpy(read_class(directory, kind, ["jet_pt"])["jet_pt"]).astype(np.float64)
        for kind in ("hbb", "qcd")
    }
    labels = np.r_[np.ones(len(pt["hbb"])), np.zeros(len(pt["qcd"]))]
    above = {kind: values[values > PT_MIN] for kind, values in pt.items()}
    return {
        "events": {kind: len(values) for kind, values in pt.items()},
        "bins": SPECTRUM_BINS,
        "fractions": {
            kind: (np.histogram(values, SPECTRUM_BINS)[0] / len(values)).round(4).tolist()
            for kind, values in pt.items()
        },
        "median": {kind: float(np.median(values)) for kind, values in pt.items()},
        "ks": float(ks_2samp(pt["hbb"], pt["qcd"]).statistic),
        "auc_pt": float(roc_auc_score(labels, np.r_[pt["hbb"], pt["qcd"]])),
        "auc_pt_above_300": float(
            roc_auc_score(
                np.r_[np.ones(len(above["hbb"])), np.zeros(len(above["qcd"]))], np.r_[above["hbb"], above["qcd"]]
            )
        ),
    }


def make_sample(out: Path, events: int) -> dict:
    """data/jets_reweight: the generator's jets above PT_MIN, QCD thinned to a steeper spectrum."""
    from hepray.samples import generate
    from hepray.samples.common import write_split
    from hepray.samples.jets_cvn import BRANCHES

    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as source:
        generate("jets_cvn", source, events, seed=1)
        jets = {kind: read_class(Path(source), kind, list(BRANCHES)) for kind in ("hbb", "qcd")}
    jets = {kind: array[array["jet_pt"] > PT_MIN] for kind, array in jets.items()}
    qcd_pt = ak.to_numpy(jets["qcd"]["jet_pt"]).astype(np.float64)
    jets["qcd"] = jets["qcd"][rng.random(len(qcd_pt)) < np.exp(-(qcd_pt - PT_MIN) / QCD_SLOPE)]
    n = min(len(jets["qcd"]), len(jets["hbb"]))
    for kind, array in jets.items():
        chunk = {name: array[name][:n] if array[name].ndim > 1 else ak.to_numpy(array[name][:n]) for name in BRANCHES}
        write_split(out, kind, [chunk])
    record = {"generated_per_class": events, "seed": 1, "pt_min": PT_MIN, "qcd_slope": QCD_SLOPE, "per_class": n}
    (out / "sample.json").write_text(json.dumps(record) + "\n")
    return record


def test_events(run: Path, predictions: Path) -> dict[str, np.ndarray]:
    """Score, label, jet_pt and jet_mass of the run's test split, from `hepray predict` outputs."""
    from hepray.data.root_source import split_mask, split_of
    from hepray.spec import load_job

    split = load_job(run / "job.yaml").data.split
    parts = []
    for output in sorted(predictions.glob("*.parquet")):
        table = pq.read_table(output).to_pydict()
        entry = np.asarray(table["entry"], dtype=np.int64)
        test = split_mask(split_of(output.stem + ".root", entry, split.seed), "test", split.val, split.test)
        label = 1.0 if output.stem.startswith("hbb") else 0.0
        parts.append(
            {
                "score": np.asarray(table["score_hbb"])[test],
                "label": np.full(test.sum(), label),
                "jet_pt": np.asarray(table["jet_pt"])[test],
                "jet_mass": np.asarray(table["jet_mass"])[test],
            }
        )
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def rho(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Spearman's rho and its bootstrap standard deviation."""
    value = spearmanr(x, y).statistic
    draws = [spearmanr(x[i], y[i]).statistic for i in (rng.integers(0, len(x), len(x)) for _ in range(BOOTSTRAP))]
    return float(value), float(np.std(draws))


def score_numbers(score: np.ndarray, events: dict[str, np.ndarray]) -> dict:
    """How one score separates the classes and how it depends on jet_pt in the test events."""
    rng = np.random.default_rng(1)
    qcd, hbb = events["label"] == 0, events["label"] == 1
    cut = np.quantile(score[hbb], 1 - CUT_EFFICIENCY)  # keeps CUT_EFFICIENCY of the H -> bb test jets
    passing = qcd & (score > cut)
    bins = np.clip(np.digitize(events["jet_pt"][qcd], REWEIGHT_BINS) - 1, 0, len(REWEIGHT_BINS) - 2)
    return {
        "test_auc": float(roc_auc_score(events["label"], score)),
        "rho_pt_qcd": rho(score[qcd], events["jet_pt"][qcd], rng),
        "rho_pt_hbb": rho(score[hbb], events["jet_pt"][hbb], rng),
        "rho_mass_qcd": rho(score[qcd], events["jet_mass"][qcd], rng),
        "qcd_median_pt": float(np.median(events["jet_pt"][qcd])),
        "qcd_passing": int(passing.sum()),
        "qcd_passing_median_pt": float(np.median(events["jet_pt"][passing])),
        "qcd_median_score_per_bin": [float(np.median(score[qcd][bins == b])) for b in range(len(REWEIGHT_BINS) - 1)],
        "qcd_passing_fraction_per_bin": [
            float(np.mean(score[qcd][bins == b] > cut)) for b in range(len(REWEIGHT_BINS) - 1)
        ],
        "qcd_events_per_bin": np.bincount(bins, minlength=len(REWEIGHT_BINS) - 1).tolist(),
    }


def measure(run: Path, events: dict[str, np.ndarray]) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    numbers = score_numbers(events["score"], events)
    if abs(numbers["test_auc"] - metrics["test_auc"]) > 1e-4:
        raise SystemExit(
            f"{run}: AUC {numbers['test_auc']:.6f} on the recovered test split, the run's test_auc is "
            f"{metrics['test_auc']:.6f}: not the run's test events"
        )
    return {
        **numbers,
        "run_test_auc": metrics["test_auc"],
        "baseline_pt_auc": metrics.get("baseline_pt_auc"),
        "test_events_qcd": int((events["label"] == 0).sum()),
        "test_events_hbb": int((events["label"] == 1).sum()),
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "events_read": metrics["events_read"],
        "train_seconds": metrics["train_seconds"],
        "measured": datetime.fromtimestamp((run / "metrics.json").stat().st_mtime, timezone.utc).date().isoformat(),
        **{key: value for key, value in metrics.items() if key.startswith("reweight_")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=22000, help="jets generated per class before selection")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--reuse", action="store_true", help="keep the sample and runs that exist")
    args = parser.parse_args()
    os.chdir(ROOT)

    result: dict = {"job": JOB, "reweight_bins": REWEIGHT_BINS, "cut_efficiency": CUT_EFFICIENCY}
    if Path(DEFAULT_SAMPLE).is_dir():
        result["generator_spectra"] = spectra(Path(DEFAULT_SAMPLE))
        print("jets_cvn generator, jet_pt:", json.dumps(result["generator_spectra"]))
    sample = Path(SAMPLE)
    if args.reuse and (sample / "sample.json").exists():
        result["sample"] = json.loads((sample / "sample.json").read_text())
    else:
        result["sample"] = make_sample(sample, args.events)
    result["sample"]["spectra"] = spectra(sample)
    print("shaped sample:", json.dumps(result["sample"]))

    result["runs"] = {}
    for name, overrides in RUNS.items():
        run = args.runs / name
        if not (args.reuse and (run / "metrics.json").exists()):
            sets = [f"train.epochs={args.epochs}", *overrides]
            hepray("run", JOB, "--out", str(run), *[part for item in sets for part in ("--set", item)])
        predictions = run / "predictions_sample"
        if not (args.reuse and (predictions / "predict.json").exists()):
            hepray("predict", str(run), "--files", f"{SAMPLE}/*.root", "--out", str(predictions), "--format", "parquet")
        events = test_events(run, predictions)
        result["runs"][name] = measure(run, events)
    # the mass window on the same test events (any run's: the test split is the same), as a reference
    result["mass_window"] = score_numbers(-np.abs(events["jet_mass"] - 125), events)
    result["measured"] = max(r["measured"] for r in result["runs"].values())
    RESULT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(make_results.reweight_table(result))
    sys.argv = [sys.argv[0], "--runs", str(args.runs)]
    make_results.main()


if __name__ == "__main__":
    main()
