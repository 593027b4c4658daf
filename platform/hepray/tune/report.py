"""`hepray tune --report`: baseline (the base job) vs the best job, both trained in full, as
docs/tune_<search>.md (or --report-file); for multiclass searches also each class pair against a
dedicated binary job."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from hepray.app.run import HEADLINE, run_job
from hepray.spec import JobSpec, SpecError, load_job
from hepray.tune.search import BEST_JOB_FILE, TABLE_FILE, load_best_job, trial_epochs
from hepray.tune.space import TuneSpec


def _settings(job: dict) -> dict:
    return {key: value for key, value in job.items() if key != "name"}


def _written_settings(path: Path) -> dict | None:
    """A run's job.yaml as today's schema resolves it, so a key added since it was written counts
    at its default; None if it no longer validates."""
    try:
        return _settings(load_job(path).model_dump(mode="json", by_alias=True))
    except SpecError:
        return None


def run_once(job: JobSpec, out_dir: Path, reuse: tuple[Path, ...] = ()) -> dict[str, float]:
    """metrics.json of a finished run of this job (same settings, any name) in out_dir or a reuse
    directory; trains it into out_dir only if there is none."""
    wanted = _settings(job.model_dump(mode="json", by_alias=True))
    for directory in (out_dir, *reuse):
        metrics, written = directory / "metrics.json", directory / "job.yaml"
        # A run writes job.yaml first and metrics.json last: an older metrics.json is another job's,
        # left by a run of this job that did not finish.
        finished = metrics.is_file() and written.is_file() and metrics.stat().st_mtime >= written.stat().st_mtime
        if finished and _written_settings(written) == wanted:
            found = {k: (float("nan") if v is None else v) for k, v in json.loads(metrics.read_text()).items()}
            return _with_last_epoch(found, directory)
    return _with_last_epoch(run_job(job, out_dir), out_dir)


def _with_last_epoch(metrics: dict, directory: Path) -> dict:
    """Add the last epoch's losses (history.json): overfitting shows as the gap growing after the best epoch."""
    history = directory / "history.json"
    if history.is_file():
        last = json.loads(history.read_text())[-1]
        metrics = {**metrics, **{f"last_epoch_{k}": last[k] for k in ("train_eval_loss", "val_loss") if k in last}}
    return metrics


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _counts(metrics: dict, keys: tuple[str, ...]) -> str:
    return " / ".join(f"{metrics[k]:.0f}" if metrics.get(k) == metrics.get(k) and k in metrics else "–" for k in keys)


def _gap(metrics: dict, prefix: str = "") -> float:
    return metrics.get(f"{prefix}val_loss", float("nan")) - metrics.get(f"{prefix}train_eval_loss", float("nan"))


def _changed_keys(spec: TuneSpec, base: JobSpec, tuned: JobSpec) -> list[str]:
    # Searched keys are YAML names, so aliases (e.g. a voxel input's `shape`) are the dump's keys.
    base_dump, tuned_dump = base.model_dump(mode="json", by_alias=True), tuned.model_dump(mode="json", by_alias=True)
    lines = []
    for key in spec.space:
        before, after = base_dump, tuned_dump
        for part in key.split("."):
            before = before.get(part) if isinstance(before, dict) else None
            after = after.get(part) if isinstance(after, dict) else None
        marker = "" if before == after else " ← changed"
        lines.append(f"| `{key}` | {_fmt(before)} | {_fmt(after)}{marker} |")
    return lines


def write_report(spec: TuneSpec, base: JobSpec, space_file: Path, out_dir: Path, path: Path | None = None) -> Path:
    """Train what is not trained yet (baseline/, best/, binary_<job>/ in out_dir) and write the
    report to path (default docs/tune_<search>.md). A run of the same settings is trained once:
    the best job of a search that found nothing better is the baseline."""
    out_dir = Path(out_dir)
    tuned_job = load_best_job(out_dir)
    baseline = run_once(base, out_dir / "baseline", reuse=(out_dir / "best",))
    tuned = run_once(tuned_job, out_dir / "best", reuse=(out_dir / "baseline",))
    rows = list(csv.DictReader((out_dir / TABLE_FILE).open()))
    lines = [
        *_search_section(spec, base, space_file, out_dir, rows),
        *_comparison_section(spec, base, tuned_job, baseline, tuned, out_dir),
    ]
    if spec.report.binary_jobs:
        lines += _pairs_section(spec, baseline, tuned, out_dir)
    lines += ["", "## Trials (best first)", "", *_trials_table(spec, rows)]
    path = Path(path) if path is not None else Path("docs") / f"tune_{spec.name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _search_section(spec: TuneSpec, base: JobSpec, space_file: Path, out_dir: Path, rows: list[dict]) -> list[str]:
    """The report's title and how the search ran: objective, trials, ASHA stops and where its outputs are."""
    return [
        f"# Search `{spec.name}`: baseline vs tuned",
        "",
        f"Generated by `hepray tune {space_file} --report` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({os.cpu_count()} cores, outputs in `{out_dir}`). Every number below is measured in this run.",
        "",
        "## Search",
        "",
        f"- base job `{spec.base_job}`; objective {', '.join(f'`{m}` ({mode})' for m, mode in zip(spec.metrics, spec.modes))}"
        f" at each trial's best epoch; Optuna TPE (seed {spec.seed}, {spec.startup_trials} random startup trials)",
        f"- {len(rows)} trials of {trial_epochs(spec, base)} epochs (trial-only keys: "
        f"{', '.join(f'`{k}={v}`' for k, v in spec.trial_overrides.items()) or 'none'}), "
        f"{spec.max_concurrent_trials} at a time; ASHA (grace {spec.scheduler.grace_period}, reduction factor "
        f"{spec.scheduler.reduction_factor:g}) stopped {sum(r['stopped_by_asha'] == 'True' for r in rows)} early",
        f"- study: `optuna-dashboard sqlite:///{(out_dir / 'study.db').resolve()}`; table: `{out_dir / TABLE_FILE}`;"
        f" best job: `{out_dir / BEST_JOB_FILE}`",
    ]


def _comparison_section(
    spec: TuneSpec, base: JobSpec, tuned_job: JobSpec, baseline: dict, tuned: dict, out_dir: Path
) -> list[str]:
    """Baseline vs tuned, both trained in full: test metrics, losses and their gap, and the searched keys."""
    same = _settings(tuned_job.model_dump(mode="json")) == _settings(base.model_dump(mode="json"))
    objective = spec.metrics[0]
    test_key = "test_" + objective.removeprefix("val_")
    lines = [
        "",
        "## Baseline vs tuned, each trained in full and evaluated on the test split",
        "",
        f"Baseline: `{spec.base_job}` as written. Tuned: the best trial's keys on the same job "
        f"(`{out_dir / BEST_JOB_FILE}`), same data, epochs and early stopping."
        + (
            " **At this budget the best trial was the baseline setup itself: the search found nothing better, "
            "and both columns are the same run.**"
            if same
            else ""
        ),
        "",
        "| | baseline | tuned |",
        "|---|---|---|",
    ]
    # The job's headline test metric too: an objective such as val_loss has no test_ counterpart.
    keys = [test_key, f"test_{HEADLINE[base.task.kind]}", objective, "train_eval_loss", "val_loss"]
    for key in dict.fromkeys(keys):
        if key in baseline and key in tuned:
            lines.append(f"| `{key}` | {_fmt(baseline[key])} | {_fmt(tuned[key])} |")
    return lines + [
        f"| loss gap `val_loss − train_eval_loss` | {_fmt(_gap(baseline))} | {_fmt(_gap(tuned))} |",
        f"| loss gap at the last epoch | {_fmt(_gap(baseline, 'last_epoch_'))} | {_fmt(_gap(tuned, 'last_epoch_'))} |",
        *(
            f"| {label} | {_counts(baseline, keys)} | {_counts(tuned, keys)} |"
            for label, keys in (
                ("best epoch / epochs run", ("best_epoch", "epochs_run")),
                ("test events", ("test_events",)),
                ("parameters", ("parameters",)),
                ("train seconds", ("train_seconds",)),
            )
        ),
        "",
        "Losses are at the best epoch (the checkpoint kept), those of the 'last epoch' row at the last epoch trained; `train_eval_loss` "
        "re-evaluates training events in eval mode, so the gap compares like with like (no dropout, no augmentation).",
        "",
        "| searched key | baseline | tuned |",
        "|---|---|---|",
        *_changed_keys(spec, base, tuned_job),
    ]


def _pairs_section(spec: TuneSpec, baseline: dict, tuned: dict, out_dir: Path) -> list[str]:
    """Pairwise AUC of the multiclass model (softmax restricted to the two classes) vs a binary job."""
    lines = [
        "",
        "## Class pairs: multiclass vs dedicated binary models",
        "",
        "Multiclass pairwise AUC: test events of the two classes only, score p_a/(p_a+p_b) "
        "(`test_auc_<a>_vs_<b>` in metrics.json). Binary: the pair's own job trained in full, its `test_auc`. "
        f"Goal: binary − multiclass ≤ {spec.report.pair_goal}.",
        "",
        "| pair | binary job | binary AUC | multiclass baseline | gap before | tuned multiclass | gap after | goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    met = 0
    for job_file in spec.report.binary_jobs:
        job = load_job(job_file)
        a, b = job.data.class_names
        binary = run_once(job, out_dir / f"binary_{job.name}")["test_auc"]
        key = next(k for k in (f"test_auc_{a}_vs_{b}", f"test_auc_{b}_vs_{a}") if k in tuned)
        before, after = binary - baseline[key], binary - tuned[key]
        met += after <= spec.report.pair_goal
        lines.append(
            f"| {a} vs {b} | `{job_file}` | {_fmt(binary)} | {_fmt(baseline[key])} | {_fmt(before)} | "
            f"{_fmt(tuned[key])} | {_fmt(after)} | {'yes' if after <= spec.report.pair_goal else 'no'} |"
        )
    lines += ["", f"Goal met for {met} of {len(spec.report.binary_jobs)} pairs."]
    return lines


def _trials_table(spec: TuneSpec, rows: list[dict]) -> list[str]:
    objective, sign = spec.metrics[0], (-1 if spec.modes[0] == "max" else 1)

    def order(row):
        value = row.get(objective) or ""
        return sign * float(value) if value else float("inf")

    params = list(spec.space)
    header = [
        "trial",
        "state",
        "epochs",
        "stopped by ASHA",
        "best epoch",
        *dict.fromkeys([*spec.metrics, "loss_gap"]),
        *params,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=order):
        cells = [
            row["trial"],
            row["state"],
            row["epochs_run"],
            "yes" if row["stopped_by_asha"] == "True" else "",
            row["best_epoch"],
        ]
        cells += [_fmt(float(row[m])) if row.get(m) else "–" for m in dict.fromkeys([*spec.metrics, "loss_gap"])]
        cells += [_short(row.get(p, "")) for p in params]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value or "–"
    return f"{number:.3g}"
