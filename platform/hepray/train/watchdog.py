"""A training run that waits for data forever is stopped, saying why.

Ray Train's workers and Ray Data's read tasks share the cluster's CPUs. When the workers hold
them all, the read tasks stay pending and the first batch never comes, without a word from Ray.
`watched` passes batches through from a background thread and, when none has come for
`stall_seconds` while Ray reports less than one free CPU for a read task, raises StalledInput.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator

import ray

POLL_SECONDS = 5.0
_DONE = object()


class TrainingStopped(RuntimeError):
    """The run cannot go on (no data arriving, a non-finite loss): the message says where and why."""


def starved_of_cpus() -> str | None:
    """Why read tasks cannot start, or None when a CPU is free for them."""
    free = ray.available_resources().get("CPU", 0.0)
    if free >= 1.0:
        return None
    total = ray.cluster_resources().get("CPU", 0.0)
    return (
        f"{free:g} of the cluster's {total:g} CPUs are free and a read task needs 1; "
        f"lower scaling.cpus_per_worker or scaling.num_workers (or leave cpus_per_worker: auto)"
    )


def watched(batches: Iterable, stall_seconds: float, what: str) -> Iterator:
    """The batches, one at a time; TrainingStopped if they stop while read tasks cannot run."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        handoff.put(batch, timeout=POLL_SECONDS)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(_DONE)
        except BaseException as error:  # handed to the training thread, which raises it
            handoff.put(error)

    threading.Thread(target=produce, name=f"hepray-{what}-batches", daemon=True).start()
    last = time.monotonic()
    try:
        while True:
            try:
                item = handoff.get(timeout=min(POLL_SECONDS, stall_seconds))
            except queue.Empty:
                waited = time.monotonic() - last
                reason = starved_of_cpus() if waited >= stall_seconds else None
                if reason:
                    raise TrainingStopped(
                        f"no {what} batch for {waited:.0f} s (train.stall_seconds): {reason}"
                    ) from None
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            last = time.monotonic()
    finally:
        stop.set()
