"""Ray internals the search needs, in one place: tested with Ray 2.60 (pyproject pins >=2.60,<2.61).

Ray Train V2 has no public hook for a run's placement group, and a trial ASHA stops cannot give
its resources back itself (see RecordTrainResources). The callback base classes live in
`ray.train.v2._internal` and a placement group is rebuilt from its id with `ray._raylet`'s
PlacementGroupID; both may move in another minor version. Ray's OptunaSearch tells Optuna a trial
the scheduler stopped as COMPLETE; PruningOptunaSearch tells it PRUNED through OptunaSearch's
private `_ot_trials`, `_ot_study` and `_completed_trials`.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import ray
from ray import tune
from ray._raylet import PlacementGroupID
from ray.air.constants import TRAINING_ITERATION
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.util.placement_group import PlacementGroup

STOPPED_EARLY = "stopped_early"  # the training loop's own early stopping, in its last epoch report


class RecordingASHA(ASHAScheduler):
    """ASHA that notes the trials it stops before their full budget (`max_t` epochs) in `stopped`,
    a set it shares with PruningOptunaSearch in the same Tune driver. A stop at max_t is ASHA ending
    a finished trial, and a trial whose training stopped itself (early stopping) is finished too."""

    def __init__(self, stopped: set[str], **options):
        super().__init__(**options)
        self.stopped = stopped
        self.budget = options["max_t"]

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        cut = result.get(TRAINING_ITERATION, self.budget) < self.budget and not result.get(STOPPED_EARLY)
        if decision == TrialScheduler.STOP and cut:
            self.stopped.add(trial.trial_id)
        return decision


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial ASHA cut short (RecordingASHA's `stopped`) as PRUNED,
    its value at the stopping epoch as the last intermediate value at that step, instead of COMPLETE.
    TPE then ranks pruned trials below complete ones and among themselves by the epoch they reached
    (Optuna's _split_pruned_trials), so it never learns from values of different budgets as if equal."""

    def __init__(self, *args, stopped: set[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.stopped = stopped

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or trial_id not in self.stopped or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        trial = self._ot_trials[trial_id]
        # Tune skips on_trial_result for the result its scheduler stops a trial on: report it here.
        # Optuna has no intermediate values for two objectives: the pruned trial then has no value.
        value = (result or {}).get(self.metric) if isinstance(self.metric, str) else None
        if value is not None:
            trial.report(value, result[TRAINING_ITERATION])
        self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def resources_file(runs: Path, number: int) -> Path:
    return runs / f"trial_{number:03d}_resources.txt"


class RecordTrainResources(WorkerGroupCallback, ControllerCallback):
    """Notes what a trial's Ray Train run holds: its run id and its workers' placement groups.

    When ASHA stops a trial, Tune ends the trial's actor and with it the Train controller, which
    then cannot give its resources back: its placement group stays (Ray Train's own cleaner asks
    the State API, which needs the dashboard) and so does its resource request to Ray's autoscaling
    coordinator (for 180 s), which Ray Data's budget subtracts. The next trial's data reads would
    wait, so the search gives both back (ReleaseStoppedTrials)."""

    def __init__(self, path: Path):
        self.path = path

    def _note(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")

    def after_controller_start(self, train_run_context) -> None:
        self._note(f"run {train_run_context.run_id}")

    def after_worker_group_start(self, worker_group) -> None:
        group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        self._note(f"placement_group {group.id.hex()}")


class ReleaseStoppedTrials(tune.Callback):
    """Gives back what RecordTrainResources noted of a trial that ended."""

    def __init__(self, runs: Path, trial_key: str):
        self.runs, self.trial_key = runs, trial_key

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def _release(self, trial) -> None:
        recorded = resources_file(self.runs, trial.config[self.trial_key])
        if not recorded.is_file():
            return
        table = ray.util.placement_group_table()
        for kind, value in (line.split() for line in recorded.read_text().splitlines()):
            if kind == "placement_group" and table.get(value, {}).get("state") not in (None, "REMOVED"):
                ray.util.remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(value))))
            elif kind == "run":
                try:
                    coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
                except ValueError:  # never created: nothing was requested
                    continue
                coordinator.cancel_request.remote(requester_id=f"train-{value}")
