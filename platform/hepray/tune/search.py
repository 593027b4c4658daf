"""`hepray tune`: Ray Tune trials, each a Ray Train run of the base job with searched keys set,
proposed by Optuna (TPE, stored in SQLite) and stopped early by ASHA on per-epoch reports; a trial
ASHA stops is told to Optuna as pruned, never as complete with a value of fewer epochs.

The Optuna study is the search's memory: a resumed search counts its finished trials, trains the
trials an interruption left running again (same keys, from scratch, before any new trial), and
runs only the rest of the budget in a new Tune session (out/ray/session_NN), so a finished trial
is never trained again. It follows the search file's first_trials as they are now: a guess still
waiting that the file no longer has is dropped, and one the study has not met is queued.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from hepray.app.job_data import build_job_data, ensure_data, training_job
from hepray.app.reweight import reweight_table
from hepray.app.session import ensure_ray
from hepray.spec import JobSpec, SpecError, validate_job
from hepray.train.trainer import ResourceError, build_trainer, check_scaling
from hepray.tune.optuna_internals import drop, queued_params, requeue
from hepray.tune.ray_internals import (
    PruningOptunaSearch,
    RecordingASHA,
    RecordTrainResources,
    ReleaseStoppedTrials,
    resources_file,
)
from hepray.tune.space import TuneSpec, job_with, trial_values

STUDY_FILE = "study.db"
TABLE_FILE = "trials.csv"
BEST_JOB_FILE = "best_job.yaml"
TRIAL_KEY = "optuna_trial"  # the Optuna trial number, carried in each Tune trial's config
LOSS_COLUMNS = ["train_loss", "train_eval_loss", "val_loss", "loss_gap"]
STARTED = tuple(state for state in optuna.trial.TrialState if state != optuna.trial.TrialState.WAITING)


class ObjectiveReport(TuneReportCallback):
    """Forwards rank 0's epoch report to Tune with `loss_gap` (val_loss - train_eval_loss) added, and
    the objectives, losses and epoch also as `best_<key>`: their values at the epoch with the best
    first objective so far. Tune, ASHA and Optuna see `best_<objective>`: a trial is judged by its
    best epoch, which is the checkpoint its job keeps when the job early-stops on the objective."""

    def __init__(self, metrics: list[str], mode: str):
        super().__init__()
        self.keys = list(dict.fromkeys([*metrics, *LOSS_COLUMNS, "epoch"]))
        self.metric, self.mode = metrics[0], mode
        self.best: dict[str, float] | None = None

    def after_report(self, run_context, metrics, checkpoint):
        current = dict(metrics[0])
        if "val_loss" in current and "train_eval_loss" in current:
            current["loss_gap"] = current["val_loss"] - current["train_eval_loss"]
        value = current[self.metric]
        if self.best is None or _better(value, self.best[self.metric], self.mode):
            self.best = {key: current[key] for key in self.keys if key in current}
        current.update({f"best_{key}": value for key, value in self.best.items()})
        super().after_report(run_context, [current, *metrics[1:]], checkpoint)


def _better(value: float, best: float, mode: str) -> bool:
    if math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def trial_job(spec: TuneSpec, base_raw: dict, values: dict[str, Any], number: int) -> JobSpec:
    """The job a trial trains: base job, searched values, trial-only overrides, the trial's workers."""
    raw = job_with(base_raw, {**values, **spec.trial_overrides})
    raw["name"] = f"{raw['name']}_trial{number:03d}"
    scaling = raw.setdefault("scaling", {})
    if spec.resources.num_workers is not None:
        scaling["num_workers"] = spec.resources.num_workers
    if spec.resources.cpus_per_worker is not None:
        scaling["cpus_per_worker"] = spec.resources.cpus_per_worker
    raw.setdefault("train", {})["keep_checkpoints"] = 1  # trials are retrained; keep disk use small
    return validate_job(raw, f"{spec.name}: trial {number}")


def _trainable(config: dict, spec_raw: dict, base_raw: dict, out_dir: str) -> None:
    """One Tune trial: a Ray Train run whose epoch reports reach Tune through ObjectiveReport."""
    spec = TuneSpec.model_validate(spec_raw)
    number = config[TRIAL_KEY]
    job = trial_job(spec, base_raw, {k: v for k, v in config.items() if k in spec.space}, number)
    runs = Path(out_dir) / "trials"
    # A retried trial (Tune's max_failures, or a resume after an interruption) trains from scratch,
    # so its epochs line up with ASHA's rungs.
    tensorboard = Path(out_dir) / "tensorboard" / f"trial_{number:03d}"
    for directory in (runs / f"trial_{number:03d}", tensorboard):
        shutil.rmtree(directory, ignore_errors=True)
    data = build_job_data(job)
    trained, weight_scale = training_job(job, data)
    table = reweight_table(job, data, runs / f"trial_{number:03d}")[0] if job.data.reweight else None
    trainer = build_trainer(
        trained,
        data,
        runs,
        f"trial_{number:03d}",
        tensorboard,
        callbacks=[ObjectiveReport(spec.metrics, spec.modes[0]), RecordTrainResources(resources_file(runs, number))],
        weight_scale=weight_scale,
        reweight=table,
    )
    trainer.fit()


def trial_epochs(spec: TuneSpec, base: JobSpec) -> int:
    return int(spec.trial_overrides.get("train.epochs", base.train.epochs))


def open_study(spec: TuneSpec, out_dir: Path) -> optuna.Study:
    directions = ["maximize" if mode == "max" else "minimize" for mode in spec.modes]
    return optuna.create_study(
        storage=storage_url(out_dir), study_name=spec.name, directions=directions, load_if_exists=True
    )


def storage_url(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / STUDY_FILE}"


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False) if t.state in done and not dropped(t)]


def dropped(trial: optuna.trial.FrozenTrial) -> bool:
    """A queued guess that was taken out of the queue: it failed without ever starting."""
    return trial.state == optuna.trial.TrialState.FAIL and trial.datetime_start is None


def _point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def drop_stale_guesses(spec: TuneSpec, study: optuna.Study, resolved_base: dict) -> int:
    """A resumed search follows the search file's first_trials: a guess still waiting (never
    started) that the file no longer has was taken out of it, and is dropped. Returns how many."""
    wanted = {_point_key(point) for point in spec.first_points(resolved_base)}
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    stale = [t for t in waiting if t.datetime_start is None and _point_key(queued_params(t)) not in wanted]
    for trial in stale:
        drop(study, trial)
    return len(stale)


def guesses_to_queue(spec: TuneSpec, study: optuna.Study, resolved_base: dict, num_samples: int) -> list[dict]:
    """The search file's informed guesses that no trial of the study has (a new study: all of them),
    as many as fit in a session of num_samples trials after those already waiting: a guess beyond
    them would wait in the study forever."""
    trials = [t for t in study.get_trials(deepcopy=False) if not dropped(t)]
    met = {_point_key(queued_params(t) or t.params) for t in trials}
    waiting = sum(1 for t in trials if t.state == optuna.trial.TrialState.WAITING)
    new = [point for point in spec.first_points(resolved_base) if _point_key(point) not in met]
    return new[: max(num_samples - waiting, 0)]


def _requeue_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by an interrupted session will never report: queue them again, so their
    keys (an informed guess, or TPE's pick) are trained rather than lost."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        requeue(study, trial)
    return len(running)


def check_resources(spec: TuneSpec, base: JobSpec) -> float:
    """Concurrent trials must leave a CPU to Ray Data's read tasks, or every trial waits forever.
    Returns the CPUs per worker of each trial (`auto` resolved for the concurrent trials)."""
    scaling = base.scaling.model_copy(
        update={
            key: value
            for key, value in (
                ("num_workers", spec.resources.num_workers),
                ("cpus_per_worker", spec.resources.cpus_per_worker),
            )
            if value is not None
        }
    )
    reserved = spec.max_concurrent_trials * spec.resources.driver_cpus
    try:
        return check_scaling(scaling, trials=spec.max_concurrent_trials, reserved=reserved)
    except ResourceError as error:
        raise SpecError(
            f"{spec.name}: resources: {spec.max_concurrent_trials} concurrent trials with "
            f"{spec.resources.driver_cpus:g} driver CPUs each: {error}"
        ) from None


def run_search(
    spec: TuneSpec, base: JobSpec, base_raw: dict, out_dir: str | Path, resume: bool = False
) -> dict[str, Any]:
    """Run (or continue) the search; write the trial table and the best job. Returns a summary."""
    out_dir = Path(out_dir).resolve()
    if not resume:
        for name in (STUDY_FILE, TABLE_FILE, BEST_JOB_FILE):
            (out_dir / name).unlink(missing_ok=True)
        for name in ("ray", "tensorboard", "trials"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    # Trials train with the resolved CPUs: `auto` in a trial would count only its own workers.
    resolved = spec.resources.model_copy(update={"cpus_per_worker": check_resources(spec, base)})
    spec = spec.model_copy(update={"resources": resolved})
    ensure_data(base.data)  # once, before trials that would all generate it at the same time

    study = open_study(spec, out_dir)
    study.set_user_attr("metrics", spec.metrics)  # names the objectives for `hepray tune --status`
    interrupted = _requeue_interrupted(study)
    resolved = base.model_dump(mode="json", by_alias=True)  # defaults filled in: the base job exactly
    stale_guesses = drop_stale_guesses(spec, study, resolved)
    remaining = spec.num_samples - len(finished_trials(study))
    if remaining > 0:
        _tune_session(spec, base, base_raw, resolved, out_dir, study, remaining)

    study = open_study(spec, out_dir)
    rows = trial_table(spec, out_dir, study)
    _write_csv(rows, out_dir / TABLE_FILE)
    best = best_trial(spec, study)
    if best is None:
        raise RuntimeError(f"{spec.name}: no trial finished; see the trial errors under {out_dir / 'ray'}")
    write_best_job(spec, base_raw, best, len(rows), trial_epochs(spec, base), out_dir / BEST_JOB_FILE)
    return {
        "trials": len(rows),
        "finished": len(finished_trials(study)),
        "interrupted_requeued": interrupted,
        "guesses_dropped": stale_guesses,
        "stopped_by_asha": sum(1 for row in rows if row["stopped_by_asha"]),
        "best_trial": best.number,
        **{metric: value for metric, value in zip(spec.metrics, best.values)},
        "table": str(out_dir / TABLE_FILE),
        "best_job": str(out_dir / BEST_JOB_FILE),
        "study": storage_url(out_dir),
    }


def _tune_session(
    spec: TuneSpec,
    base: JobSpec,
    base_raw: dict,
    resolved: dict,
    out_dir: Path,
    study: optuna.Study,
    num_samples: int,
) -> None:
    first = guesses_to_queue(spec, study, resolved, num_samples) or None
    trainable = tune.with_parameters(
        _trainable, spec_raw=spec.model_dump(mode="json"), base_raw=base_raw, out_dir=str(out_dir)
    )
    tune_trials(spec, out_dir, study, trainable, trial_epochs(spec, base), num_samples, first)


def tune_trials(
    spec: TuneSpec,
    out_dir: Path,
    study: optuna.Study,
    trainable,
    epochs: int,
    num_samples: int,
    first: list[dict] | None = None,
) -> None:
    """One Tune session of `num_samples` trials of `trainable`, which reports `best_<metric>` per
    epoch (a hepray job's trials; tests pass a function). ASHA judges each trial at its rungs
    against the other trials' values at the same epoch; a trial it stops before `epochs` reaches
    Optuna as PRUNED (ray_internals), so TPE models only values of the full budget as complete."""
    objectives = [f"best_{metric}" for metric in spec.metrics]
    single = len(objectives) == 1
    # A new seed per session: the same seed would replay the first session's random startup trials.
    sampler = optuna.samplers.TPESampler(
        seed=spec.seed + len(study.trials),
        n_startup_trials=spec.startup_trials,
        constant_liar=spec.max_concurrent_trials > 1,
    )
    stopped: set[str] = set()  # Tune trial ids ASHA cut short, shared by scheduler and searcher
    searcher = PruningOptunaSearch(
        space=_DefineByRun(spec),
        metric=objectives[0] if single else objectives,
        mode=spec.modes[0] if single else spec.modes,
        points_to_evaluate=first,
        sampler=sampler,
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(storage_url(out_dir)),
        stopped=stopped,
    )
    scheduler = RecordingASHA(
        stopped,
        time_attr="training_iteration",
        metric=objectives[0],
        mode=spec.modes[0],
        max_t=spec.scheduler.budget(epochs),
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )
    sessions = out_dir / "ray"
    session = f"session_{len(list(sessions.glob('session_*'))) if sessions.exists() else 0:02d}"
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": spec.resources.driver_cpus}),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            storage_path=str(sessions),
            name=session,
            verbose=1,
            callbacks=[ReleaseStoppedTrials(out_dir / "trials", TRIAL_KEY)],
            failure_config=tune.FailureConfig(max_failures=spec.trial_retries),
        ),
    )
    tuner.fit()


class _DefineByRun:
    """Optuna asks the searched keys (conditional ones only when their condition holds); the trial
    number travels in the config. A class, not a closure: Tune pickles the searcher's state."""

    def __init__(self, spec: TuneSpec):
        self.spec = spec

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {**self.spec.suggest(trial), TRIAL_KEY: trial.number}


def _trial_dirname(trial) -> str:
    return f"trial_{trial.config[TRIAL_KEY]:03d}"


def _last_result(out_dir: Path, number: int) -> dict[str, Any]:
    # A trial trained again after an interruption has a directory in each session: the latest counts,
    # even before its first report.
    runs = sorted((out_dir / "ray").glob(f"session_*/trial_{number:03d}"), reverse=True)
    result = runs[0] / "result.json" if runs else None
    lines = result.read_text().splitlines() if result is not None and result.is_file() else []
    return json.loads(lines[-1]) if lines else {}


@dataclass
class TrialRun:
    """A trial that trained its whole budget: the job it trained, its checkpoints and how long it took."""

    number: int
    job: JobSpec
    checkpoints: Path
    seconds: float


def trained_trials(spec: TuneSpec, base_raw: dict, out_dir: Path) -> list[TrialRun]:
    """The complete trials whose checkpoints are on disk (ASHA-stopped trials are PRUNED, and
    their checkpoints released)."""
    runs = []
    for trial in open_study(spec, out_dir).get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        checkpoints = out_dir / "trials" / f"trial_{trial.number:03d}"
        if any(path.is_dir() for path in checkpoints.glob("checkpoint_*")):
            job = trial_job(spec, base_raw, trial_values(spec, trial.params), trial.number)
            seconds = _last_result(out_dir, trial.number).get("time_total_s", math.nan)
            runs.append(TrialRun(trial.number, job, checkpoints, seconds))
    return runs


def trial_table(spec: TuneSpec, out_dir: Path, study: optuna.Study) -> list[dict[str, Any]]:
    """One row per Optuna trial: its state (PRUNED: ASHA stopped it), the epochs it reached, which
    of them its values come from (`value_epochs`: the best epoch's values within the first
    value_epochs epochs; compare values of equal value_epochs), the values and its keys."""
    columns = list(dict.fromkeys([*spec.metrics, *LOSS_COLUMNS]))
    rows = []
    # A WAITING trial never started (`hepray tune --status` lists it: it runs next on --resume).
    for trial in study.get_trials(deepcopy=False, states=STARTED):
        if dropped(trial):
            continue
        result = _last_result(out_dir, trial.number)
        state = trial.state.name
        epochs_run = int(result.get("training_iteration", 0))
        valued = state in ("COMPLETE", "PRUNED") and epochs_run > 0
        row = {
            "trial": trial.number,
            "state": state,
            "stopped_by_asha": state == "PRUNED",
            "epochs_run": epochs_run,
            "value_epochs": epochs_run if valued else None,
            "best_epoch": result.get("best_epoch"),
            **{column: result.get(f"best_{column}") for column in columns},
            **trial_values(spec, trial.params),
        }
        rows.append(row)
    return rows


def search_status(out_dir: str | Path) -> list[dict[str, Any]]:
    """The trial table of a running or finished search, from its study.db and Tune's result files
    only (nothing is started): state, epochs reached, objective(s) (a running trial's best so far)
    and keys (a queued guess's too)."""
    out_dir = Path(out_dir)
    storage = storage_url(out_dir)
    names = optuna.study.get_all_study_names(storage) if (out_dir / STUDY_FILE).is_file() else []
    if not names:
        raise SpecError(f"{out_dir}: no search here (no study in {out_dir / STUDY_FILE})")
    study = optuna.load_study(study_name=names[0], storage=storage)
    metrics = study.user_attrs.get("metrics") or [f"objective_{k}" for k in range(len(study.directions))]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        result = _last_result(out_dir, trial.number)
        values = trial.values if trial.values else [result.get(f"best_{metric}") for metric in metrics]
        rows.append(
            {
                "trial": trial.number,
                "state": "DROPPED" if dropped(trial) else trial.state.name,
                "epochs": int(result.get("training_iteration", 0)),
                **dict(zip(metrics, values)),
                **(trial.params or queued_params(trial)),  # a guess still queued shows the keys it will try
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned text columns (numbers to 4 significant digits)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(text) for text in [column, *(line[k] for line in cells)]) for k, column in enumerate(columns)]
    lines = [[column.ljust(width) for column, width in zip(columns, widths)]]
    lines += [[text.ljust(width) for text, width in zip(line, widths)] for line in cells]
    return "\n".join("  ".join(line).rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})


def best_trial(spec: TuneSpec, study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best finished trial; with two objectives, the Pareto-front trial best in the first."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    if len(spec.metrics) == 1:
        return study.best_trial
    sign = 1 if spec.modes[0] == "max" else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def best_job_raw(spec: TuneSpec, base_raw: dict, trial: optuna.trial.FrozenTrial) -> dict:
    raw = job_with(base_raw, trial_values(spec, trial.params))
    raw["name"] = f"{base_raw['name']}_tuned"
    return raw


def write_best_job(
    spec: TuneSpec, base_raw: dict, trial: optuna.trial.FrozenTrial, n_trials: int, epochs: int, path: Path
) -> None:
    raw = best_job_raw(spec, base_raw, trial)
    validate_job(raw, str(path))
    values = ", ".join(f"{m}={v:.4f}" for m, v in zip(spec.metrics, trial.values))
    header = (
        f"# Best of {n_trials} trials of search '{spec.name}' (base job {spec.base_job}): trial {trial.number},\n"
        f"# {values} at its best epoch in trials of {epochs} epochs. Train it: hepray run {path.name}\n"
    )
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))


def load_best_job(out_dir: str | Path) -> JobSpec:
    path = Path(out_dir) / BEST_JOB_FILE
    if not path.is_file():
        raise SpecError(f"{path}: no best job yet; run the search first")
    return validate_job(yaml.safe_load(path.read_text()), str(path))
