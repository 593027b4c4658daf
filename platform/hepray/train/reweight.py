"""Kinematic reweighting factors, looked up per event in the training worker (data.reweight).

A table holds, per class, one factor per bin of one or two variables; `factors` finds each
event's bin (values outside the edges go to the edge bins) and returns its class's factor.
The app computes the table from the train split before training (app/reweight.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

COLUMN_PREFIX = "reweight_input:"  # the event-table columns carrying the reweighting variables


def column(expression: str) -> str:
    return COLUMN_PREFIX + expression


@dataclass
class ReweightTable:
    vars: list[str]
    edges: list[list[float]]
    factors: list  # per class: nested lists, one level per variable

    def as_config(self) -> dict:
        return {"vars": self.vars, "edges": self.edges, "factors": self.factors}

    def factors_for(self, labels: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
        """Each event's factor: its class's value in the bin its variables fall in."""
        table = torch.as_tensor(np.asarray(self.factors, dtype=np.float32), device=labels.device)
        index = [labels.long()]
        for value, edges in zip(values, self.edges):
            inner = torch.as_tensor(edges[1:-1], dtype=value.dtype, device=value.device)
            index.append(torch.bucketize(value.contiguous(), inner, right=True))
        return table[tuple(index)]


def bin_index(values: list[np.ndarray], edges: list[list[float]]) -> tuple[np.ndarray, ...]:
    """numpy twin of factors_for's binning: values outside the edges go to the edge bins."""
    return tuple(np.searchsorted(np.asarray(e[1:-1]), v, side="right") for v, e in zip(values, edges))
