"""A read task's shuffle writes each range's points straight to their events' new places
(root_source._joined): the result is the ranges end to end, reordered event by event."""

from __future__ import annotations

import numpy as np

from hepray.data.root_source import _joined
from hepray.inputs import Ragged


def ragged(counts: list[int], first: int) -> Ragged:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pixel = np.arange(first, first + offsets[-1], dtype=np.int32)
    return Ragged(offsets, {"pixel": pixel, "value": pixel.astype(np.float32) / 10})


def test_joined_in_order_equals_the_events_taken_one_by_one():
    parts = [ragged([3, 0, 2], 0), ragged([], 100), ragged([1, 4, 0, 2], 200)]
    order = np.random.default_rng(5).permutation(7)
    joined = _joined(parts, order)
    events = [
        {name: column[part.offsets[i] : part.offsets[i + 1]] for name, column in part.columns.items()}
        for part in parts
        for i in range(len(part))
    ]
    assert np.array_equal(np.diff(joined.offsets), [len(events[k]["pixel"]) for k in order])
    for name in ("pixel", "value"):
        expected = np.concatenate([events[k][name] for k in order])
        assert joined.columns[name].dtype == parts[0].columns[name].dtype
        assert np.array_equal(joined.columns[name], expected)
    unshuffled = _joined(parts, None)
    assert np.array_equal(unshuffled.columns["pixel"], np.concatenate([part.columns["pixel"] for part in parts]))
    dense = _joined([np.arange(3), np.arange(3, 7)], order)  # per-event columns: the events reordered
    assert np.array_equal(dense, order)
