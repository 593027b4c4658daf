"""docs/make_results.py: a run in runs/ is shown and replaces its docs/measured.json entry (only the
keys the table and checks read); a run absent from runs/ comes from measured.json with its date."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "make_results.py"


@pytest.fixture()
def make_results(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_results", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "MEASURED", tmp_path / "measured.json")
    return module


def test_runs_replace_their_entry_and_absent_runs_come_from_measured(tmp_path, make_results):
    runs = tmp_path / "runs"
    (runs / "jets_cvn").mkdir(parents=True)
    (runs / "jets_cvn" / "metrics.json").write_text(
        json.dumps(
            {
                "test_auc": 0.9,
                "baseline_tau21_auc": 0.7,
                "baseline_mass_auc": 0.8,
                "events_read": 100,
                "epochs_run": 2,
                "not_shown_anywhere": 1.0,
            }
        )
    )
    make_results.MEASURED.write_text(
        json.dumps(
            {
                "deepcalo": {
                    "measured": "2026-01-01",
                    "metrics": {"test_rIQR_vs_bdt": -0.05, "test_iqr_rel": 0.04, "baseline_bdt_iqr_rel": 0.038},
                },
                "jets_cvn": {"measured": "2026-01-01", "metrics": {"test_auc": 0.5, "baseline_tau21_auc": 0.6}},
            }
        )
    )

    loaded = make_results.load_runs(runs)
    table = make_results.table(loaded)
    checks = make_results.checks(loaded)
    make_results.save_measured(loaded)

    jets_row = next(line for line in table.splitlines() if "AUC (vs τ21)" in line)
    assert "| 0.9 | 0.7 | 100, 2, " in jets_row and "2026-01-01" not in jets_row
    deepcalo_row = next(line for line in table.splitlines() if "rIQR vs BDT" in line)
    assert "| -5 |" in deepcalo_row and deepcalo_row.endswith("2026-01-01 |")
    assert "| 000 electron ID | test AUC | not reported | not run |" in table
    verdicts = dict(line.removeprefix("- ").rsplit(": ", 1) for line in checks.splitlines())
    assert verdicts["jets CVN: AUC above τ21 alone"] == "holds"
    assert verdicts["DeepCalo: rIQR of the FiLM model vs the BDT is positive"] == "**does not hold**"
    assert (
        verdicts["electron ID: the CNN beats the cut-based baseline's rejection at its efficiency in both pT bins"]
        == "not run"
    )

    saved = json.loads(make_results.MEASURED.read_text())
    assert saved["jets_cvn"]["metrics"] == {
        "test_auc": 0.9,
        "baseline_tau21_auc": 0.7,
        "baseline_mass_auc": 0.8,
        "events_read": 100,
        "epochs_run": 2,
    }
    assert saved["jets_cvn"]["measured"] != "2026-01-01"
    assert saved["deepcalo"]["measured"] == "2026-01-01"
    assert saved["deepcalo"]["metrics"]["test_rIQR_vs_bdt"] == -0.05
