"""Optuna internals the search needs, in one place: tested with Optuna 5.0 (pyproject pins >=5.0,<5.1).

Optuna's public API has no way back from RUNNING: a trial left running by an interrupted session
has no live Trial object, so it is put back in the queue through the study's storage. Nor can a
queued trial be read or taken out of the queue: the storage and the trial's system attributes do.
"""

from __future__ import annotations

import optuna


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Put a trial an interruption left running back as WAITING: the next `ask` (lowest number
    first) hands it out again, and its suggest calls return the values it already has."""
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.WAITING)


def queued_params(trial: optuna.trial.FrozenTrial) -> dict:
    """The keys an enqueued trial (an informed guess) was queued with; {} for a trial TPE proposed."""
    return trial.system_attrs.get("fixed_params", {})


def drop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Take a waiting trial out of the queue for good: it ends FAIL without ever starting."""
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
