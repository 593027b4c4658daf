"""Ray internals the search needs, in one place: tested with Ray 2.60 (pyproject pins >=2.60,<2.61).

Ray Train V2 has no public hook for a run's placement group, and a trial ASHA stops cannot give
its resources back itself (see RecordTrainResources). The callback base classes live in
`ray.train.v2._internal` and a placement group is rebuilt from its id with `ray._raylet`'s
PlacementGroupID; both may move in another minor version.
"""

from __future__ import annotations

from pathlib import Path

import ray
from ray import tune
from ray._raylet import PlacementGroupID
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
from ray.util.placement_group import PlacementGroup


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
