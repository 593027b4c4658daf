"""Optuna internals the search needs, in one place: tested with Optuna 5.0 (pyproject pins >=5.0,<5.1).

Optuna's public API sets user attributes only through a live Trial object; a trial left RUNNING
by an interrupted session has none, so its attribute is set through the study's storage.
"""

from __future__ import annotations

import optuna


def mark_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Flag a trial an interruption left running, so it is not counted as finished."""
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
