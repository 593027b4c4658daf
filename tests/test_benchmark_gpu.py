"""`python -m benchmarks.gpu` on a machine without a GPU: it says so, and still trains both jobs for
an epoch through hepray's loop and reports what the workers saw and how long they waited for data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_says_no_gpu_is_present(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--events", "100", "--data", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(text) for text in done.stdout.splitlines() if text.startswith("{")]
    present, *runs = lines
    assert present["figure"] == "gpu_present" and present["gpu"] is False and present["cuda_devices"] == 0
    assert "no GPU" in present["note"]
    assert [(run["figure"], run["job"], run["workers"]) for run in runs] == [
        ("gpu_training", "electron_id", 1),
        ("gpu_training", "jets_cvn", 1),
    ]
    for run in runs:
        assert run["gpu"] is False and run["gpu_utilization_pct"] is None
        assert run["cuda_in_workers"] == [
            {"rank": 0, "cuda": False, "cuda_devices": 0, "device": "cpu", "CUDA_VISIBLE_DEVICES": None}
        ]
        assert run["samples_per_s"] > 0 and run["batches_per_worker"][0] >= 1
        assert 0 < run["data_wait_fraction"] < 1
        waits = run["next_batch_wait_ms"]
        assert waits["first"] > 0
        if run["batches_per_worker"][0] > 1:  # percentiles of the waits after the first
            assert 0 <= waits["p50"] <= waits["p90"] <= waits["p99"] <= waits["max"]
