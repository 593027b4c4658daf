"""Regenerate docs/results.md from the runs' metrics.json: each study's own number beside hepray's
measured one and the baseline's, with the size of the run.

    python docs/make_results.py [--runs runs]

Each row names the run directory (runs/<run>/metrics.json, as written by `hepray run ... --out`),
the metric of the model and of its baseline; the commands that made the runs are in
docs/results.md's "How to reproduce" section.

Runs take hours and `runs/` is not committed, so the metrics the table and the checks read are
kept, per run with the date it was measured, in docs/measured.json: a run absent from `runs/` is
read from there, and one present replaces its entry. Re-running one study then refreshes its rows
and leaves the others as measured. A run in neither place shows as "not run".
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

HERE = Path(__file__).parent


@dataclass
class Row:
    study: str
    what: str
    run: str
    model: str  # metrics.json key of hepray's model
    baseline: str | None  # key of the baseline on the same events
    study_value: str  # the study's own number, as it reports it
    scale: float = 1.0  # e.g. 100 for percent


# The study's encodings (one run each) for each pair, with its numbers: ee vs μμ 0.5 (binary), 0.79
# (total), 0.85 (average), "the best so far" (per_hit); ψ' vs continuum 0.98 already for binary, 0.99 with energy.
DRIFT_PAIRS = {
    "ee_vs_mumu": ("AUC ee vs μμ", {"binary": "0.5", "total": "0.79", "average": "0.85", "per_hit": "best (> 0.85)"}),
    "ee_vs_continuum": (
        "AUC ψ'(ee) vs continuum",
        {"binary": "0.98", "total": "0.99", "average": "≈0.99", "per_hit": "best (≈0.99)"},
    ),
    "mumu_vs_continuum": (
        "AUC ψ'(μμ) vs continuum",
        {"binary": "0.98", "total": "0.99", "average": "≈0.99", "per_hit": "best (≈0.99)"},
    ),
}
# ψ' vs continuum trained longer (and on more events): encoding, size label, run suffix, lepton pair.
LEPTON = {"ee": "ee", "mumu": "μμ"}
DRIFT_LONG_RUNS = [
    ("binary", "", "e40", "mumu"),
    ("per_hit", "", "e40", "ee"),
    ("per_hit", "", "e40", "mumu"),
    ("per_hit", "10000 per class, ", "10k", "ee"),
    ("per_hit", "10000 per class, ", "10k", "mumu"),
]
DRIFT_ENCODING_ROWS = [
    Row(f"002 drift chamber, {encoding} encoding", what, f"drift_chamber_{pair}_{encoding}", "test_auc", None, study)
    for pair, (what, studies) in DRIFT_PAIRS.items()
    for encoding, study in studies.items()
]

# Study 003's jets as point clouds, on the CVN's data and test split: label, run, and whether its epochs are
# as many as fit in about the CVN's training time (its 8 epochs), which the check compares.
JETS_POINT_CLOUD_RUNS = [
    ("ParticleNet-Lite (point cloud), 2 epochs", "jets_particlenet_e2", True),
    ("transformer (point cloud), 1 epoch", "jets_transformer_e1", True),
    ("transformer (point cloud), 2 epochs", "jets_transformer_e2", False),
    ("CVN image + ParticleNet-Lite (combined), 1 epoch", "jets_combined_e1", False),
    ("CVN image + ParticleNet-Lite (combined), 2 epochs", "jets_combined_e2", False),
]

ROWS = [
    Row(
        "000 electron ID",
        "bkg rejection @ 90% eff, pT < 30 GeV (vs cut-based)",
        "electron_id",
        "test_rej_at_cuts@ele_pt[10,30)",
        "baseline_cuts_rej@ele_pt[10,30)",
        "not reported",
    ),
    Row(
        "000 electron ID",
        "bkg rejection @ 90% eff, pT > 30 GeV (vs cut-based)",
        "electron_id",
        "test_rej_at_cuts@ele_pt[30,1000)",
        "baseline_cuts_rej@ele_pt[30,1000)",
        "not reported",
    ),
    Row("000 electron ID", "test AUC", "electron_id", "test_auc", None, "not reported"),
    Row(
        "000 electron ID",
        "val loss (train loss in eval mode beside it)",
        "electron_id",
        "val_loss",
        "train_eval_loss",
        "overfits after 4 epochs",
    ),
    Row(
        "000 electron ID, 'after' (no BN, max+avg head, AdamW)",
        "test AUC",
        "electron_id_after",
        "test_auc",
        None,
        "not reported",
    ),
    *DRIFT_ENCODING_ROWS,
    *[
        Row(
            f"002 drift chamber, {encoding} encoding, {size}40 epochs (cosine)",
            f"AUC ψ'({LEPTON[pair]}) vs continuum",
            f"drift_chamber_{pair}_vs_continuum_{encoding}_{suffix}",
            "test_auc",
            None,
            "0.98",
        )
        for encoding, size, suffix, pair in DRIFT_LONG_RUNS
    ],
    Row(
        "002 drift chamber, 3 classes, per_hit",
        "macro AUC",
        "drift_chamber_multiclass_per_hit",
        "test_auc_macro",
        None,
        "worse than binary",
    ),
    Row(
        "002 drift chamber, event momenta, no conservation term",
        "mean |Σ p_pred| [GeV] (px rmse beside it)",
        "drift_chamber_event_momentum_w0",
        "test_imbalance_mean",
        "test_track_rmse_px",
        "proposed, not run",
    ),
    Row(
        "002 drift chamber, event momenta, conservation weight 0.1",
        "mean |Σ p_pred| [GeV] (px rmse beside it)",
        "drift_chamber_event_momentum_w0.1",
        "test_imbalance_mean",
        "test_track_rmse_px",
        "proposed, not run",
    ),
    Row(
        "002 drift chamber, event momenta, conservation weight 1",
        "mean |Σ p_pred| [GeV] (px rmse beside it)",
        "drift_chamber_event_momentum_w1",
        "test_imbalance_mean",
        "test_track_rmse_px",
        "proposed, not run",
    ),
    Row(
        "001 calo3d, electrons (held out)",
        "resolution a [%·√GeV] (vs linear calib.)",
        "calo3d",
        "electron_heldout_fit_a",
        "electron_heldout_baseline_linear_fit_a",
        "18.7",
    ),
    Row(
        "001 calo3d, electrons (held out)",
        "resolution b [%]",
        "calo3d",
        "electron_heldout_fit_b",
        "electron_heldout_baseline_linear_fit_b",
        "0.574",
    ),
    Row(
        "001 calo3d, electrons (held out)",
        "resolution c [%·GeV]",
        "calo3d",
        "electron_heldout_fit_c",
        "electron_heldout_baseline_linear_fit_c",
        "111",
    ),
    *[
        Row(
            "001 calo3d, electrons (held out)",
            f"σ(E)/E [%], {low}-{high} GeV (vs linear calib.)",
            "calo3d",
            f"electron_heldout_resolution_sigma@energy[{low},{high})",
            f"electron_heldout_baseline_linear_resolution_sigma@energy[{low},{high})",
            "not reported",
            100.0,
        )
        for low, high in ((10, 20), (20, 40), (40, 80), (80, 160), (160, 500))
    ],
    Row(
        "001 calo3d, photons", "resolution a [%·√GeV]", "calo3d", "photon_fit_a", "photon_baseline_linear_fit_a", "18.3"
    ),
    Row("001 calo3d, π0", "resolution a [%·√GeV]", "calo3d", "pi0_fit_a", "pi0_baseline_linear_fit_a", "19.3"),
    Row("001 calo3d, π±", "resolution a [%·√GeV]", "calo3d", "chpi_fit_a", "chpi_baseline_linear_fit_a", "114"),
    Row(
        "001 calo3d, π±",
        "σ(E)/E core [%], all energies",
        "calo3d",
        "chpi_resolution_sigma",
        "chpi_baseline_linear_resolution_sigma",
        "not reported",
        100.0,
    ),
    Row(
        "001 calo3d, π±",
        "response E_pred/E, median",
        "calo3d",
        "chpi_response_median",
        "chpi_baseline_linear_response_median",
        "not reported",
    ),
    Row("003 jets CVN, H→bb vs QCD", "AUC (vs τ21)", "jets_cvn", "test_auc", "baseline_tau21_auc", "0.5 (failed)"),
    Row("003 jets CVN, H→bb vs QCD", "AUC (vs jet mass)", "jets_cvn", "test_auc", "baseline_mass_auc", "0.5 (failed)"),
    Row(
        "003 jets CVN, H→bb vs QCD",
        "training time [s] (parameters beside it)",
        "jets_cvn",
        "train_seconds",
        "parameters",
        "not reported",
    ),
    *[
        row
        for label, run, _ in JETS_POINT_CLOUD_RUNS
        for row in (
            Row(f"003 jets {label}", "AUC (vs τ21)", run, "test_auc", "baseline_tau21_auc", "not in the study"),
            Row(f"003 jets {label}", "AUC (vs jet mass)", run, "test_auc", "baseline_mass_auc", "not in the study"),
            Row(
                f"003 jets {label}",
                "training time [s] (parameters beside it)",
                run,
                "train_seconds",
                "parameters",
                "not in the study",
            ),
        )
    ],
    Row("004 DeepCalo, e/γ energy", "rIQR vs BDT [%]", "deepcalo", "test_rIQR_vs_bdt", None, "20-29", 100.0),
    Row(
        "004 DeepCalo, e/γ energy",
        "IQR of E_pred/E_true (vs BDT)",
        "deepcalo",
        "test_iqr_rel",
        "baseline_bdt_iqr_rel",
        "not reported",
    ),
]


MEASURED = HERE / "measured.json"
SAMPLE_DIR = "data/jets_reweight"


class Metrics(dict):
    """One run's metrics, remembering the keys read (what docs/measured.json keeps) and when measured."""

    def __init__(self, metrics: dict, measured: str):
        super().__init__(metrics)
        self.measured = measured
        self.read: set[str] = set()

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.read.add(key)
        return value

    def __contains__(self, key) -> bool:
        present = super().__contains__(key)
        if present:
            self.read.add(key)
        return present

    def get(self, key, default=None):
        return self[key] if key in self else default


def load_runs(runs: Path) -> dict[str, Metrics]:
    """Every run a row or check names: from runs/<run>/metrics.json, else from docs/measured.json."""
    measured = json.loads(MEASURED.read_text()) if MEASURED.exists() else {}
    names = {row.run for row in ROWS} | {name for _, run_names, _ in CHECKS for name in run_names}
    loaded = {}
    for name in sorted(names):
        path = runs / name / "metrics.json"
        if path.exists():
            day = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).date().isoformat()
            loaded[name] = Metrics(json.loads(path.read_text()), day)
        elif name in measured:
            loaded[name] = Metrics(measured[name]["metrics"], measured[name]["measured"])
    return loaded


def save_measured(loaded: dict[str, Metrics]) -> None:
    MEASURED.write_text(
        json.dumps(
            {
                name: {"measured": m.measured, "metrics": {key: m[key] for key in sorted(m.read)}}
                for name, m in sorted(loaded.items())
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )


def _bins(metrics: dict, key: str) -> list[str]:
    """The observer-bin suffixes of a key present in the metrics, e.g. ['@energy[10,20)', ...]."""
    return sorted(k.removeprefix(key) for k in metrics if k.startswith(key + "@"))


def _electron_id(m):
    bins = _bins(m, "test_rej_at_cuts")
    return bool(bins) and all(m[f"test_rej_at_cuts{b}"] > m[f"baseline_cuts_rej{b}"] for b in bins)


def _calo3d(m):
    """Electrons on the held-out sample when the run has one (more events than the test split)."""
    model, baseline = (
        ("electron_heldout_", "electron_heldout_baseline_linear_")
        if "electron_heldout_resolution_sigma" in m
        else ("test_", "baseline_linear_")
    )
    bins = _bins(m, f"{model}resolution_sigma")
    better = all(m[f"{model}resolution_sigma{b}"] < m[f"{baseline}resolution_sigma{b}"] for b in bins)
    electrons = m[f"{model}resolution_sigma"]
    close = abs(m["photon_resolution_sigma"] / electrons - 1) < 0.3
    return bool(bins) and better and close and m["chpi_resolution_sigma"] > 2 * electrons


def _matches_cvn(cvn, points):
    """The point-cloud model's AUC at least the CVN's, trained for no longer (10 % allowed: the machine is shared)."""
    return points["train_seconds"] <= 1.1 * cvn["train_seconds"] and points["test_auc"] >= cvn["test_auc"]


# The issue's "results that must hold", each a function of the runs' metrics.
CHECKS = [
    (
        "electron ID: the CNN beats the cut-based baseline's rejection at its efficiency in both pT bins",
        ["electron_id"],
        _electron_id,
    ),
    (
        "drift chamber: binary images cannot separate ee from μμ (AUC < 0.6), an energy encoding can (> 0.7)",
        ["drift_chamber_ee_vs_mumu_binary", "drift_chamber_ee_vs_mumu_per_hit"],
        lambda b, e: b["test_auc"] < 0.6 and e["test_auc"] > 0.7,
    ),
    (
        "drift chamber: ψ' vs continuum is easy (AUC > 0.9 for both lepton flavours with per_hit, the study's best "
        "encoding, trained to convergence: 10000 events per class, 40 epochs)",
        ["drift_chamber_ee_vs_continuum_per_hit_10k", "drift_chamber_mumu_vs_continuum_per_hit_10k"],
        lambda e, m: e["test_auc"] > 0.9 and m["test_auc"] > 0.9,
    ),
    (
        "calo3d: CNN better than the linear calibration in every electron energy bin; photons within 30 % of "
        "electrons; π± more than twice as wide",
        ["calo3d"],
        _calo3d,
    ),
    ("jets CVN: AUC above τ21 alone", ["jets_cvn"], lambda m: m["test_auc"] > m["baseline_tau21_auc"]),
    *[
        (
            f"jets: {label} at least matches the CVN's test AUC in no more training time (train_seconds at most 10 % "
            "above the CVN's; same data and test split)",
            ["jets_cvn", run],
            _matches_cvn,
        )
        for label, run, equal_time in JETS_POINT_CLOUD_RUNS
        if equal_time
    ],
    (
        "jets: the jet image and the constituents in one model (combined) beat ParticleNet-Lite alone at the "
        "same epochs (2) on the same test split",
        ["jets_particlenet_e2", "jets_combined_e2"],
        lambda points, combined: combined["test_auc"] > points["test_auc"],
    ),
    ("DeepCalo: rIQR of the FiLM model vs the BDT is positive", ["deepcalo"], lambda m: m["test_rIQR_vs_bdt"] > 0),
]


def reweight_checks() -> list[str]:
    """Issue 18's reweighting claims, on docs/reweight_study.py's two runs (none if it has not run)."""
    if not REWEIGHT.exists():
        return []
    study = json.loads(REWEIGHT.read_text())
    if len(study["runs"]) != 2:
        return []
    plain, flat = study["runs"].values()
    smaller = abs(flat["rho_pt_qcd"][0]) < abs(plain["rho_pt_qcd"][0])
    closer = abs(flat["qcd_passing_median_pt"] - flat["qcd_median_pt"]) < abs(
        plain["qcd_passing_median_pt"] - plain["qcd_median_pt"]
    )
    verdict = {True: "holds", False: "**does not hold**"}
    efficiency = 100 * study["cut_efficiency"]
    return [
        f"- reweighting: |Spearman ρ(score, jet_pt)| of the QCD test jets smaller with data.reweight (jet_pt, flat) "
        f"than without: {verdict[smaller]}",
        f"- reweighting: a cut at {efficiency:.0f} % H→bb efficiency sculpts the QCD jet_pt spectrum less with "
        f"data.reweight (median jet_pt of the passing QCD jets closer to all QCD jets'): {verdict[closer]}",
    ]


def checks(loaded: dict[str, Metrics]) -> str:
    lines = []
    for text, run_names, holds in CHECKS:
        metrics = [loaded.get(name) for name in run_names]
        try:
            verdict = "not run" if None in metrics else ("holds" if holds(*metrics) else "**does not hold**")
        except KeyError as missing:
            verdict = f"n/a (the run has no {missing})"
        lines.append(f"- {text}: {verdict}")
    return "\n".join(lines + reweight_checks())


def _format(value, scale: float) -> str:
    if value is None:
        return "n/a"
    value *= scale
    if abs(value) < 1e-3:  # a resolution term the fit put at its bound of zero
        return "0"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def table(loaded: dict[str, Metrics]) -> str:
    lines = [
        "| study | quantity | study's own | hepray | baseline (or beside it) | size (events read, epochs), measured |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        metrics = loaded.get(row.run)
        if metrics is None:
            lines.append(f"| {row.study} | {row.what} | {row.study_value} | not run | | |")
            continue
        size = f"{metrics.get('events_read', 0):.0f}, {metrics.get('epochs_run', 0):.0f}, {metrics.measured}"
        baseline = _format(metrics.get(row.baseline), row.scale) if row.baseline else ""
        lines.append(
            f"| {row.study} | {row.what} | {row.study_value} | {_format(metrics.get(row.model), row.scale)} "
            f"| {baseline} | {size} |"
        )
    return "\n".join(lines)


REWEIGHT = HERE / "reweight_study.json"


def _rho(value: list[float]) -> str:
    return f"{value[0]:+.3f} ± {value[1]:.3f}"


def reweight_table(study: dict) -> str:
    """docs/reweight_study.py's runs and the mass window: AUC, Spearman's rho of the score with jet_pt and
    jet_mass, the QCD jets a cut on the score keeps, and the QCD jets' mean score per jet_pt bin."""
    efficiency = 100 * study["cut_efficiency"]
    median = next(iter(study["runs"].values()))["qcd_median_pt"]
    lines = [
        "| score | test AUC | ρ(score, jet_pt), QCD | ρ(score, jet_pt), H→bb | ρ(score, jet_mass), QCD "
        f"| QCD jets passing a cut at {efficiency:.0f} % H→bb efficiency: number, median jet_pt [GeV] "
        f"(all QCD: {median:.0f}) | epochs (best) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        (f"{'jet_pt flat' if 'reweight_max_factor' in r else 'no'} reweighting (`runs/{name}`)", r)
        for name, r in study["runs"].items()
    ]
    for label, r in [*rows, ("mass window −abs(jet_mass − 125), no training", study["mass_window"])]:
        epochs = f"{r['epochs_run']:.0f} ({r['best_epoch'] + 1:.0f})" if "epochs_run" in r else ""
        lines.append(
            f"| {label} | {r['test_auc']:.3f} | {_rho(r['rho_pt_qcd'])} | {_rho(r['rho_pt_hbb'])} "
            f"| {_rho(r['rho_mass_qcd'])} | {r['qcd_passing']}, {r['qcd_passing_median_pt']:.0f} | {epochs} |"
        )
    edges = study["reweight_bins"]
    first = next(iter(study["runs"].values()))
    lines += [
        "",
        f"The QCD test jets per jet_pt bin: their median score, and the fraction above the cut at {efficiency:.0f} % "
        "H→bb efficiency (a cut that does not sculpt the QCD spectrum keeps the same fraction in every bin):",
        "",
        "| jet_pt [GeV] | " + " | ".join(f"{low}-{high}" for low, high in zip(edges, edges[1:])) + " |",
        "|---" * len(edges) + "|",
        "| QCD test jets | " + " | ".join(str(n) for n in first["qcd_events_per_bin"]) + " |",
    ]
    for label, r in rows:
        lines.append(
            f"| median score, {label} | " + " | ".join(f"{v:.3f}" for v in r["qcd_median_score_per_bin"]) + " |"
        )
    for label, r in rows:
        lines.append(
            f"| above the cut, {label} | " + " | ".join(f"{v:.3f}" for v in r["qcd_passing_fraction_per_bin"]) + " |"
        )
    return "\n".join(lines)


def reweight_section() -> str:
    """The reweighting study's numbers (docs/reweight_study.json), or how to make them."""
    if not REWEIGHT.exists():
        return "not run: `python docs/reweight_study.py`"
    study = json.loads(REWEIGHT.read_text())
    sample, runs = study["sample"], list(study["runs"].values())
    shaped = sample["spectra"]
    text = []
    generator = study.get("generator_spectra")
    if generator:
        below = {
            kind: sum(f for f, high in zip(generator["fractions"][kind], generator["bins"][1:]) if high <= 300)
            for kind in ("hbb", "qcd")
        }
        text.append(
            f"The check first: in the jets generator's own data ({generator['events']['hbb']} jets per class) "
            f"jet_pt alone separates H→bb from QCD with AUC {generator['auc_pt']:.3f}, and only through H→bb jets "
            f"that lost a prong: {100 * below['hbb']:.1f} % of H→bb and {100 * below['qcd']:.1f} % of QCD jets lie "
            f"below 300 GeV; above 300 GeV the AUC of jet_pt is {generator['auc_pt_above_300']:.3f} (both classes "
            "start from one pT spectrum). So the study makes a sample whose spectra differ."
        )
    text.append(
        f"The sample (`{SAMPLE_DIR}`, made by the script): the generator's jets above {sample['pt_min']:.0f} GeV, "
        f"QCD kept with probability exp(-(jet_pt - {sample['pt_min']:.0f} GeV) / {sample['qcd_slope']:.0f} GeV), "
        f"{sample['per_class']} jets per class (from {sample['generated_per_class']} generated per class); median "
        f"jet_pt {shaped['median']['hbb']:.0f} GeV for H→bb, {shaped['median']['qcd']:.0f} GeV for QCD; jet_pt "
        f"alone: AUC {shaped['auc_pt']:.3f}. The model is `{study['job']}` (ParticleNet-Lite; the candidates "
        "also carry their absolute pT, log(pfcand_ptrel · jet_pt)), trained once without and once with "
        f"`data.reweight: {{vars: [jet_pt], bins: [{study['reweight_bins']}], target: flat}}` (one training seed "
        f"each). Measured {study['measured']} on the runs' test split ({runs[0]['test_events_qcd']} QCD, "
        f"{runs[0]['test_events_hbb']} H→bb jets, with the sample's own spectra); ρ is Spearman's rank "
        "correlation, ± its bootstrap standard deviation:"
    )
    text.append(reweight_table(study))
    if len(runs) == 2:
        plain, flat = runs
        cost = plain["test_auc"] - flat["test_auc"]
        text.append(
            f"With jet_pt reweighted flat, ρ(score, jet_pt) in QCD jets goes from {plain['rho_pt_qcd'][0]:+.3f} to "
            f"{flat['rho_pt_qcd'][0]:+.3f}; the QCD jets passing the {100 * study['cut_efficiency']:.0f} % cut have "
            f"median jet_pt {plain['qcd_passing_median_pt']:.0f} → {flat['qcd_passing_median_pt']:.0f} GeV "
            f"(all QCD: {plain['qcd_median_pt']:.0f} GeV); test AUC {plain['test_auc']:.3f} → {flat['test_auc']:.3f} "
            + (f"(a cost of {cost:.3f})." if cost >= 0 else f"(up by {-cost:.3f}).")
            + f" Largest reweighting factor {_format(flat.get('reweight_max_factor'), 1)}, "
            f"reweight_max_deviation {_format(flat.get('reweight_max_deviation'), 1)}."
        )
    return "\n\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs")
    args = parser.parse_args()
    loaded = load_runs(args.runs)
    template = (HERE / "results_template.md").read_text()
    text = (
        template.replace("{{TABLE}}", table(loaded))
        .replace("{{NOTES}}", checks(loaded))
        .replace("{{DATE}}", date.today().isoformat())
        .replace("{{REWEIGHT}}", reweight_section())
    )
    (HERE / "results.md").write_text(text)
    save_measured(loaded)
    print(f"wrote {HERE / 'results.md'} and {MEASURED}")


if __name__ == "__main__":
    main()
