"""Regenerate docs/results.md from the runs' metrics.json: each study's own number beside hepray's
measured one and the baseline's, with the size of the run.

    python docs/make_results.py [--runs runs]

Each row names the run directory (runs/<run>/metrics.json, as written by `hepray run ... --out`),
the metric of the model and of its baseline; the commands that made the runs are in
docs/results.md's "How to reproduce" section. A row whose run is absent says so.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import date
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


ROWS = [
    Row("000 electron ID", "bkg rejection @ 90% eff, pT < 30 GeV (vs cut-based)", "electron_id",
        "test_rej_at_cuts@ele_pt[10,30)", "baseline_cuts_rej@ele_pt[10,30)", "not reported"),
    Row("000 electron ID", "bkg rejection @ 90% eff, pT > 30 GeV (vs cut-based)", "electron_id",
        "test_rej_at_cuts@ele_pt[30,1000)", "baseline_cuts_rej@ele_pt[30,1000)", "not reported"),
    Row("000 electron ID", "test AUC", "electron_id", "test_auc", None, "not reported"),
    Row("000 electron ID", "train - val loss at the best epoch", "electron_id", "train_eval_loss", "val_loss",
        "overfits after 4 epochs"),
    Row("000 electron ID, 'after' (no BN, max+avg head, AdamW)", "test AUC", "electron_id_after", "test_auc", None,
        "not reported"),
    Row("002 drift chamber, binary encoding", "AUC ee vs mumu", "drift_chamber_ee_vs_mumu_binary", "test_auc", None, "0.5"),
    Row("002 drift chamber, per_hit encoding", "AUC ee vs mumu", "drift_chamber_ee_vs_mumu_per_hit", "test_auc", None,
        "~0.8"),
    Row("002 drift chamber, per_hit encoding", "AUC psi' vs continuum (ee)", "drift_chamber_ee_vs_continuum_per_hit",
        "test_auc", None, "0.98-0.99"),
    Row("002 drift chamber, 3 classes", "macro AUC", "drift_chamber_multiclass", "test_auc_macro", None,
        "worse than binary"),
    Row("001 calo3d, electrons", "resolution a [%·√GeV] (vs linear calib.)", "calo3d", "test_fit_a", "baseline_linear_fit_a",
        "18.7"),
    Row("001 calo3d, electrons", "resolution b [%]", "calo3d", "test_fit_b", "baseline_linear_fit_b", "0.574"),
    Row("001 calo3d, electrons", "resolution c [%·GeV]", "calo3d", "test_fit_c", "baseline_linear_fit_c", "111"),
    Row("001 calo3d, photons", "resolution a [%·√GeV]", "calo3d", "photon_fit_a", "photon_baseline_linear_fit_a", "18.3"),
    Row("001 calo3d, π0", "resolution a [%·√GeV]", "calo3d", "pi0_fit_a", "pi0_baseline_linear_fit_a", "19.3"),
    Row("001 calo3d, π±", "resolution a [%·√GeV]", "calo3d", "chpi_fit_a", "chpi_baseline_linear_fit_a", "114"),
    Row("003 jets CVN, H→bb vs QCD", "AUC (vs τ21)", "jets_cvn", "test_auc", "baseline_tau21_auc", "0.5 (failed)"),
    Row("003 jets CVN, H→bb vs QCD", "AUC (vs jet mass)", "jets_cvn", "test_auc", "baseline_mass_auc", "0.5 (failed)"),
    Row("004 DeepCalo, e/γ energy", "rIQR vs BDT [%]", "deepcalo", "test_rIQR_vs_bdt", None, "20-29", 100.0),
    Row("004 DeepCalo, e/γ energy", "IQR of E_pred/E_true (vs BDT)", "deepcalo", "test_iqr_rel", "baseline_bdt_iqr_rel",
        "not reported"),
]


def _format(value, scale: float) -> str:
    if value is None:
        return "n/a"
    value *= scale
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def table(runs: Path) -> str:
    lines = ["| study | quantity | study's own | hepray | baseline | size (events read, epochs) |",
             "|---|---|---|---|---|---|"]
    for row in ROWS:
        path = runs / row.run / "metrics.json"
        if not path.exists():
            lines.append(f"| {row.study} | {row.what} | {row.study_value} | not run | | |")
            continue
        metrics = json.loads(path.read_text())
        size = f"{metrics.get('events_read', 0):.0f}, {metrics.get('epochs_run', 0):.0f}"
        baseline = _format(metrics.get(row.baseline), row.scale) if row.baseline else ""
        lines.append(f"| {row.study} | {row.what} | {row.study_value} | {_format(metrics.get(row.model), row.scale)} "
                     f"| {baseline} | {size} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs")
    args = parser.parse_args()
    template = (HERE / "results_template.md").read_text()
    text = template.replace("{{TABLE}}", table(args.runs)).replace("{{DATE}}", date.today().isoformat())
    (HERE / "results.md").write_text(text)
    print(f"wrote {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
