"""Per-event numbers beside the images: kind `scalars`, branches or expressions of them."""

from __future__ import annotations

from typing import Literal

import awkward as ak
import numpy as np
from pydantic import Field

from hepray.expr import Expression
from hepray.inputs.base import Encoder, Strict
from hepray.inputs.kernels import ArrayLike, check_finite, get_branch, per_event


class Scalars(Strict):
    """Per-event scalar branches (or expressions of them) passed beside the images."""

    kind: Literal["scalars"]
    branches: list[str] = Field(min_length=1)

    def shape(self) -> tuple[int, ...]:
        return (len(self.branches),)


class ScalarsEncoder(Encoder):
    kind = "scalars"
    spec_class = Scalars

    def __init__(self, spec: Scalars):
        super().__init__(spec)
        self.expressions = [Expression(text) for text in spec.branches]

    def branches(self) -> set[str]:
        return {name for expression in self.expressions for name in expression.branches}

    def dense(self, arrays: dict[str, ArrayLike]) -> np.ndarray:
        values = {}
        for expression in self.expressions:
            value = expression.evaluate(arrays)
            if isinstance(value, ak.Array) and value.ndim > 1:
                raise ValueError(f"'{expression.text}' has a list of values per event; one value per event expected")
            values[expression.text] = value
        return _scalars(self.spec, values)

    def derived_values(self, arrays: dict[str, ArrayLike], n_events: int) -> list[tuple[str, np.ndarray]]:
        """Each expression's values as float32, what the input ships (a value too large for float32
        is inf); an expression that is not one number per event is left to `dense` to name."""
        found = []
        with np.errstate(all="ignore"):
            for expression in self.expressions:
                values = _floats(expression.evaluate(arrays), n_events)
                if values is not None:
                    found.append((f"'{expression.text}'", values))
        return found


def _floats(values, n: int) -> np.ndarray | None:
    """A per-event expression's values as float32, or None if it is not one number per event."""
    if isinstance(values, ak.Array):
        if values.ndim != 1:
            return None
        values = ak.to_numpy(values)
    values = np.asarray(values)
    return values.astype(np.float32) if values.shape == (n,) else None


def _scalars(spec: Scalars, arrays: dict[str, ArrayLike]) -> np.ndarray:
    first = get_branch(arrays, spec.branches[0])
    n_events = len(first)
    out = np.empty((n_events, len(spec.branches)), dtype=np.float32)
    for column, name in enumerate(spec.branches):
        out[:, column] = per_event(arrays, name, n_events)
        check_finite(out[:, column], name)  # also catches float64 values too large for float32
    return out
