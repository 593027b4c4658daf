"""`hepray tune --report`: baseline (the base job) vs the best job, both trained in full, as
docs/tune_<search>.md (or --report-file); for multiclass searches also each class pair against a
dedicated binary job."""

from __future__ import annotations

import csv
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hepray.app.run import HEADLINE, run_from_checkpoints, run_job
from hepray.data.events import ENTRY, WEIGHT
from hepray.evaluate.bootstrap import REPLICAS, Interval
from hepray.spec import JobSpec, SpecError, load_job
from hepray.tune.intervals import (
    aligned_events,
    auc_of,
    gap_of,
    headline_problems,
    loss_of,
    pair_events,
    pair_problems,
    run_predictions,
)
from hepray.tune.search import (
    BEST_JOB_FILE,
    STUDY_FILE,
    TABLE_FILE,
    TrialRun,
    load_best_job,
    trained_trials,
    trial_epochs,
)
from hepray.tune.space import TuneSpec


def _settings(job: dict) -> dict:
    return {key: value for key, value in job.items() if key != "name"}


def _trained_settings(job: JobSpec) -> dict:
    """What decides a training run's result: not the job's name, its CPUs or how many checkpoints it keeps."""
    settings = _settings(job.model_dump(mode="json", by_alias=True))
    settings["scaling"].pop("cpus_per_worker")
    settings["train"].pop("keep_checkpoints")
    return settings


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
    directory = finished_run(job, out_dir, reuse)
    found = {
        k: (float("nan") if v is None else v) for k, v in json.loads((directory / "metrics.json").read_text()).items()
    }
    return _with_last_epoch(found, directory)


def finished_run(
    job: JobSpec, out_dir: Path, reuse: tuple[Path, ...] = (), trials: list[TrialRun] | tuple = ()
) -> Path:
    """The directory of a finished run of this job (same settings, any name): out_dir or a reuse
    directory; else out_dir, made from the checkpoints of a search trial that trained the same
    settings, or trained there."""
    wanted = _settings(job.model_dump(mode="json", by_alias=True))
    for directory in (out_dir, *reuse):
        metrics, written = directory / "metrics.json", directory / "job.yaml"
        # A run writes job.yaml first and metrics.json last: an older metrics.json is another job's,
        # left by a run of this job that did not finish.
        finished = metrics.is_file() and written.is_file() and metrics.stat().st_mtime >= written.stat().st_mtime
        if finished and _written_settings(written) == wanted:
            return directory
    for trial in trials:
        if _trained_settings(trial.job) == _trained_settings(job):
            run_from_checkpoints(job, trial.checkpoints, out_dir, trial.seconds, {"search_trial": float(trial.number)})
            return out_dir
    run_job(job, out_dir)
    return out_dir


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


@dataclass
class Run:
    """A finished run the report compares: its job, directory, metrics and per-event scores."""

    job: JobSpec
    directory: Path
    metrics: dict
    events: dict[str, np.ndarray]


def finished(
    job: JobSpec,
    out_dir: Path,
    files: dict[str, list[str]],
    reuse: tuple[Path, ...] = (),
    trials: list[TrialRun] | tuple = (),
) -> Run:
    """The finished run of this job (from a trial's checkpoints or trained, if there is none) with
    its scores of the report's events."""
    directory = finished_run(job, out_dir, reuse, trials)
    return Run(job, directory, run_once(job, directory), run_predictions(job, directory, files))


def write_report(
    spec: TuneSpec,
    base: JobSpec,
    space_file: Path,
    out_dir: Path,
    path: Path | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """Train what is not trained yet (baseline/, best/, binary_<job>/ in out_dir, each also as
    <run>_seed<N>/ per report.seeds) and write the report to path (default docs/tune_<search>.md),
    its first line naming the command that regenerates it (with its --set `overrides`). A run of
    the same settings is trained once: the best job of a search that found nothing better is the
    baseline."""
    out_dir = Path(out_dir)
    files = spec.report.evaluation_files
    tuned_job = load_best_job(out_dir)
    trials = trained_trials(spec, base.model_dump(mode="json", by_alias=True), out_dir)
    baseline = finished(base, out_dir / "baseline", files, reuse=(out_dir / "best",), trials=trials)
    tuned = finished(tuned_job, out_dir / "best", files, reuse=(out_dir / "baseline",), trials=trials)
    rows = list(csv.DictReader((out_dir / TABLE_FILE).open()))
    path = Path(path) if path is not None else default_report_file(spec)
    lines = [
        *_search_section(spec, base, report_command(spec, space_file, out_dir, path, overrides or []), out_dir, rows),
        *_comparison_section(spec, base, tuned_job, baseline.metrics, tuned.metrics, out_dir),
        *_intervals_section(baseline, tuned, spec.report.evaluation),
    ]
    if spec.report.binary_jobs:
        lines += _pairs_section(spec, baseline, tuned, out_dir)
    lines += ["", "## Trials (best first)", "", *_trials_table(spec, rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def default_out_dir(spec: TuneSpec) -> Path:
    return Path("runs") / "tune" / spec.name


def default_report_file(spec: TuneSpec) -> Path:
    return Path("docs") / f"tune_{spec.name}.md"


def report_command(spec: TuneSpec, space_file: Path, out_dir: Path, report_file: Path, overrides: list[str]) -> str:
    """The command that regenerates the report; --out and --report-file only where they are not the
    defaults (another budget in the default directory would retrain its runs over this report's)."""
    words = ["hepray tune", str(space_file), *(f"--set {shlex.quote(item)}" for item in overrides)]
    if Path(out_dir).resolve() != default_out_dir(spec).resolve():
        words += ["--out", shlex.quote(str(out_dir))]
    words.append("--report")
    if Path(report_file).resolve() != default_report_file(spec).resolve():
        words += ["--report-file", shlex.quote(str(report_file))]
    return " ".join(words)


def _search_section(spec: TuneSpec, base: JobSpec, command: str, out_dir: Path, rows: list[dict]) -> list[str]:
    """The report's title and how the search ran: objective, trials, ASHA stops and where its outputs are."""
    epochs = trial_epochs(spec, base)
    rungs, grace = spec.scheduler.rungs(epochs), spec.scheduler.grace_period
    asha = (
        f"ASHA (grace {grace}, reduction factor {spec.scheduler.reduction_factor:g}; rungs at epochs "
        f"{', '.join(map(str, rungs))}, each trial judged against the others' values at the same epoch) stopped "
        f"{sum(r['stopped_by_asha'] == 'True' for r in rows)} early: they reach Optuna as PRUNED, so TPE counts "
        "only trials of the full budget as complete"
        if rungs
        else f"ASHA with grace {grace} has no rung below the trials' {epochs} epochs: every trial ran its full budget"
    )
    return [
        f"# Search `{spec.name}`: baseline vs tuned",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({os.cpu_count()} cores, outputs in `{out_dir}`). Every number below is measured in this run.",
        "",
        "## Search",
        "",
        f"- base job `{spec.base_job}`; objective {', '.join(f'`{m}` ({mode})' for m, mode in zip(spec.metrics, spec.modes))}"
        f" at each trial's best epoch; Optuna TPE (seed {spec.seed}, {spec.startup_trials} random startup trials)",
        f"- {len(rows)} trials of {epochs} epochs (trial-only keys: "
        f"{', '.join(f'`{k}={v}`' for k, v in spec.trial_overrides.items()) or 'none'}), "
        f"{spec.max_concurrent_trials} at a time; {asha}",
        f"- study: `optuna-dashboard sqlite:///{(out_dir / STUDY_FILE).resolve()}`; Tune experiment: "
        f"`{out_dir / 'ray'}` (one session_NN per run of the search); trial table: `hepray tune --status {out_dir}` "
        f"or `{out_dir / TABLE_FILE}`; best job: `{out_dir / BEST_JOB_FILE}`",
    ]


def _as_run(spec: TuneSpec) -> str:
    """How the search changed its base job (and the report its binary jobs)."""
    if not spec.job_overrides:
        return "as written"
    return "with the search's `job_overrides` " + ", ".join(f"`{k}={v}`" for k, v in spec.job_overrides.items())


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
        f"Baseline: `{spec.base_job}` {_as_run(spec)}. Tuned: the best trial's keys on the same job "
        f"(`{out_dir / BEST_JOB_FILE}`), same data, epochs and early stopping."
        + (
            " **At this budget the best trial was the baseline setup itself: the search found nothing better, "
            "and both columns are the same run.**"
            if same
            else ""
        )
        + _from_trials(baseline, tuned),
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
        *_unlike_losses(base, tuned_job),
        "",
        "| searched key | baseline | tuned |",
        "|---|---|---|",
        *_changed_keys(spec, base, tuned_job),
    ]


def _unlike_losses(base: JobSpec, tuned_job: JobSpec) -> list[str]:
    """A warning when the task keys that define the loss differ: the loss rows then compare two objectives."""
    before, after = base.task.model_dump(mode="json"), tuned_job.task.model_dump(mode="json")
    changed = [f"`task.{key}` {_fmt(before[key])} → {_fmt(after[key])}" for key in before if before[key] != after[key]]
    if not changed:
        return []
    return [
        "",
        f"**The two jobs' losses are defined differently** ({', '.join(changed)}): compare a loss with the other "
        "losses of its own column (the gaps), and the two columns by their AUCs.",
    ]


def _intervals_section(baseline: Run, tuned: Run, evaluation: str) -> list[str]:
    """The headline AUC of both runs with bootstrap intervals, and their paired difference."""
    kind = baseline.job.task.kind
    if kind == "regression":
        return []
    key = f"test_{HEADLINE[kind]}" if evaluation == "test" else f"{HEADLINE[kind]} (evaluation sample)"
    base_events, tuned_events = aligned_events(baseline.events, tuned.events)
    weights = base_events.get(WEIGHT)
    return [
        "",
        f"### Error bars ({len(base_events[ENTRY])} {evaluation} events)",
        "",
        f"Bootstrap over the events ({REPLICAS} replicas): value [68 % interval, 16th–84th percentile]. The "
        "difference is paired: every replica scores both models on the same resampled events.",
        "",
        "| | value [68 % interval] |",
        "|---|---|",
        f"| baseline `{key}` | {auc_of(headline_problems(baseline.job, baseline.events), baseline.events.get(WEIGHT))} |",
        f"| tuned `{key}` | {auc_of(headline_problems(tuned.job, tuned.events), tuned.events.get(WEIGHT))} |",
        f"| tuned − baseline (paired) | "
        f"{gap_of(headline_problems(tuned.job, tuned_events), headline_problems(baseline.job, base_events), weights)} |",
        *_loss_gap_rows(baseline, tuned, evaluation),
    ]


def _loss_gap_rows(baseline: Run, tuned: Run, evaluation: str) -> list[str]:
    """Each model's loss on the interval events minus its train_eval_loss at the best epoch: the
    overfitting gap measured on many unseen events instead of the small validation split."""
    gaps = {}
    for name, run in (("baseline", baseline), ("tuned", tuned)):
        loss, train = loss_of(run.job, run.events), run.metrics.get("train_eval_loss", float("nan"))
        gaps[name] = Interval(loss.value - train, loss.low - train, loss.high - train)
    ratio = gaps["baseline"].value / gaps["tuned"].value if gaps["tuned"].value > 0 else float("inf")
    return [
        *(
            f"| {name} loss gap: {evaluation} loss − `train_eval_loss` (best epoch) | {gap} |"
            for name, gap in gaps.items()
        ),
        f"| loss gap baseline / tuned | {'tuned gap ≤ 0' if ratio == float('inf') else f'{ratio:.1f}×'} |",
        "",
        f"A loss gap here is the job's own loss on the {evaluation} events (with its bootstrap interval) minus its "
        "loss on the training events at the best epoch: unlike `val_loss − train_eval_loss` above, which "
        "has no interval, its noise is the interval shown.",
    ]


def _from_trials(baseline: dict, tuned: dict) -> str:
    """Which of the two runs a search trial trained (the report evaluated its checkpoints instead)."""
    trials = {
        name: f"{metrics['search_trial']:.0f}"
        for name, metrics in (("baseline", baseline), ("tuned job", tuned))
        if "search_trial" in metrics
    }
    if not trials:
        return ""
    if len(trials) == 2 and len(set(trials.values())) == 1:
        made = f"Both are trial {trials['baseline']}'s training"
    else:
        made = "; ".join(f"the {name} is trial {number}'s training" for name, number in trials.items())
        made = made[0].upper() + made[1:]
    return f" {made}, evaluated from its checkpoints (same settings and seed: not trained again)."


def _stopping_kind(metric: str) -> str:
    """val_auc and val_auc_macro are the same kind of metric for a binary and a multiclass job."""
    return metric.removeprefix("val_").removesuffix("_macro")


def budget(job: JobSpec) -> tuple:
    stop = job.train.early_stopping
    rule = None if stop is None else (_stopping_kind(stop.metric), stop.mode, stop.patience)
    return job.train.epochs, rule


def budget_text(job: JobSpec) -> str:
    stop = job.train.early_stopping
    if stop is None:
        return f"{job.train.epochs} epochs, no early stopping"
    return f"{job.train.epochs} epochs, early stopping on `{stop.metric}` ({stop.mode}, patience {stop.patience})"


@dataclass
class PairGap:
    """A class pair: binary AUC, the multiclass model's pairwise AUC and their paired gap, each
    the mean over the training seeds compared, and each seed's own gap."""

    binary: Interval
    multiclass: Interval
    gap: Interval
    events: int
    per_seed: list[float]


def pair_gaps(binaries: list[Run], multis: list[Run]) -> PairGap:
    """The pair of a binary job, on the events every run scored: binaries[i] (a binary job trained
    with one seed) beside multis[i] (the multiclass job with the same seed); one bootstrap over
    those events gives the intervals of the means over seeds."""
    background, signal = binaries[0].job.data.class_names
    events = aligned_events(
        *(run.events for run in binaries),
        *(pair_events(run.job, run.events, (background, signal)) for run in multis),
    )
    weights = events[0].get(WEIGHT)
    scores = [pair_problems(run.job, ev, signal, background) for run, ev in zip([*binaries, *multis], events)]
    first, second = scores[: len(binaries)], scores[len(binaries) :]
    binary, multi = sum(first[1:], first[0]), sum(second[1:], second[0])
    return PairGap(
        auc_of(binary, weights),
        auc_of(multi, weights),
        gap_of(binary, multi, weights),
        len(events[0][ENTRY]),
        [one.point(weights) - other.point(weights) for one, other in zip(first, second)],
    )


def with_seed(job: JobSpec, seed: int) -> JobSpec:
    return job.model_copy(update={"train": job.train.model_copy(update={"seed": seed})})


def seed_runs(run: Run, seeds: list[int], files: dict[str, list[str]]) -> list[Run]:
    """The run's job trained once per seed (default: the run itself): the job's own seed is the
    run, another seed beside it in <directory>_seed<N>. The baseline and a tuned job of the same
    settings share a directory, so they share their seed runs too."""
    return [
        run
        if seed == run.job.train.seed
        else finished(with_seed(run.job, seed), run.directory.with_name(f"{run.directory.name}_seed{seed}"), files)
        for seed in seeds or [run.job.train.seed]
    ]


def _pair_score(job: JobSpec) -> str:
    return "pair heads" if job.task.pair_heads else "softmax"


def _pairs_section(spec: TuneSpec, baseline: Run, tuned: Run, out_dir: Path) -> list[str]:
    """Pairwise AUC of the multiclass model (softmax restricted to the two classes, or its pair head)
    vs a binary job, averaged over the report's training seeds."""
    goal, evaluation, seeds, files = (
        spec.report.pair_goal,
        spec.report.evaluation,
        spec.report.seeds,
        spec.report.evaluation_files,
    )
    lines = [
        "",
        "## Class pairs: multiclass vs dedicated binary models",
        "",
        f"Multiclass pairwise AUC: {evaluation} events of the two classes only, score p_a/(p_a+p_b), or the "
        "pair head's own logit for a job with `task.pair_heads` (baseline: "
        f"{_pair_score(baseline.job)}, tuned: {_pair_score(tuned.job)}). Binary: the "
        "pair's own job trained in full, on the same events. Values [68 % bootstrap interval]; each gap "
        f"(binary − multiclass) is a paired bootstrap on those events. Goal: gap ≤ {goal} (point estimate).",
        "",
        f"Budgets: multiclass baseline {budget_text(baseline.job)}; tuned {budget_text(tuned.job)}.",
    ]
    if len(seeds) > 1:
        lines.append(
            f"Training seeds {', '.join(map(str, seeds))}: every model of this section is trained once per seed, "
            "each AUC and gap is the mean over the seeds (its interval a bootstrap of that mean over the events), "
            "and the 'per seed' column gives each seed's own gap after: how far a single training run can move it."
        )
    baselines = seed_runs(baseline, seeds, files)
    # A search that found nothing better: one run is both, and its seed runs are scored once.
    tuned_runs = baselines if tuned.directory == baseline.directory else seed_runs(tuned, seeds, files)
    written = "with the same job_overrides" if spec.job_overrides else "as written"
    rows, met = [], 0
    for job_file in spec.report.binary_jobs:
        job = spec.binary_job(job_file)
        binaries = seed_runs(finished(job, out_dir / f"binary_{job.name}", files), seeds, files)
        before, after = pair_gaps(binaries, baselines), pair_gaps(binaries, tuned_runs)
        met += after.gap.value <= goal
        a, b = job.data.class_names
        lines.append(f"Binary `{job_file}` ({written}): {budget_text(job)}.")
        if budget(job) != budget(tuned.job) or budget(job) != budget(baseline.job):
            lines.append(
                f"> **Warning: unequal training budgets: `{job_file}` ({budget_text(job)}) vs the multiclass "
                "jobs above: this gap compares models trained under different rules.**"
            )
        cells = [f"{a} vs {b}", f"`{job_file}`", after.events, after.binary, before.multiclass, before.gap]
        cells += [after.multiclass, after.gap]
        cells += [", ".join(f"{gap:+.4f}" for gap in after.per_seed)] if len(seeds) > 1 else []
        rows.append("| " + " | ".join(map(str, [*cells, "yes" if after.gap.value <= goal else "no"])) + " |")
    header = ["pair", "binary job", "events", "binary AUC", "multiclass baseline", "gap before", "tuned multiclass"]
    header += ["gap after", *(["gap after, per seed"] if len(seeds) > 1 else []), "goal met"]
    return [
        *lines,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *rows,
        "",
        f"Goal met for {met} of {len(spec.report.binary_jobs)} pairs.",
    ]


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
        # The epoch of the trial's best objective: its values come from there. The checkpoint a job
        # keeps is its own early-stopping metric's best, another epoch when that metric differs.
        "objective's best epoch",
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
