"""Figure 2: the 47x47 etaphi rasterization kernel at ~150 towers per event, one core, beside
study 000's per-tower Python loop and the bare uproot read.

    python -m benchmarks.raster

Target (issue 8): >= 300k events/s per core for the kernel the pipeline runs.
"""

from __future__ import annotations

import math
import time

import awkward as ak
import numpy as np

from benchmarks.common import bare_read_rate, electron_id_job, emit, load
from hepray.data.root_source import RASTER_EVENTS
from hepray.inputs import densify, make_input, make_sparse

TOWERS = 150
EVENTS = 2 * 8192


def tower_batch(n_events: int, towers: int, seed: int = 1) -> dict[str, ak.Array | np.ndarray]:
    """Poisson(`towers`) towers per event, uniform in dR < 0.4 around each electron, as uproot returns them."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(towers, n_events)
    ele_eta, ele_phi = rng.uniform(-2.4, 2.4, n_events), rng.uniform(-math.pi, math.pi, n_events)
    radius, angle = 0.4 * np.sqrt(rng.uniform(size=counts.sum())), rng.uniform(0, 2 * math.pi, counts.sum())
    eta = np.repeat(ele_eta, counts) + radius * np.cos(angle)
    phi = np.repeat(ele_phi, counts) + radius * np.sin(angle)
    phi = (phi + math.pi) % (2 * math.pi) - math.pi
    energy = rng.exponential(2.0, counts.sum())

    def jagged(values):
        return ak.unflatten(values.astype(np.float32), counts)

    return {
        "tower_eta": jagged(eta),
        "tower_phi": jagged(phi),
        "tower_e": jagged(energy),
        "ele_eta": ele_eta.astype(np.float32),
        "ele_phi": ele_phi.astype(np.float32),
    }


def rate(kernel, arrays, n_events: int, repeats: int = 5) -> float:
    """Best events/s over `repeats` passes, in slices of RASTER_EVENTS as the read tasks call it."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for begin in range(0, n_events, RASTER_EVENTS):
            kernel({key: value[begin : begin + RASTER_EVENTS] for key, value in arrays.items()})
        best = max(best, n_events / (time.perf_counter() - started))
    return best


def study_000_loop(arrays, n_events: int) -> float:
    """Events/s of the study's notebook: a Python loop per event and per tower, int(22 + d / 0.0174)."""
    columns = {
        key: ak.to_numpy(value) if value.ndim == 1 else np.array(ak.to_list(value), dtype=object)
        for key, value in ((k, ak.Array(v)) for k, v in arrays.items())
    }
    started = time.perf_counter()
    for event in range(n_events):
        image = np.zeros((47, 47))
        eta, phi, energy = columns["tower_eta"][event], columns["tower_phi"][event], columns["tower_e"][event]
        for tower in range(len(eta)):
            i = int(22 + (eta[tower] - columns["ele_eta"][event]) / 0.0174)
            j = int(22 + (phi[tower] - columns["ele_phi"][event]) / 0.0174)
            if 0 <= i < 47 and 0 <= j < 47:
                image[i, j] += energy[tower]
    return n_events / (time.perf_counter() - started)


def main() -> None:
    job = electron_id_job()
    spec = job.data.inputs["image"]
    arrays = tower_batch(EVENTS, TOWERS)
    towers = float(ak.mean(ak.num(arrays["tower_e"])))
    sparse = rate(lambda part: make_sparse(spec, part), arrays, EVENTS)
    dense = rate(lambda part: make_input(spec, part), arrays, EVENTS)
    images = [make_sparse(spec, {k: v[b : b + 256] for k, v in arrays.items()}) for b in range(0, EVENTS, 256)]
    started = time.perf_counter()
    for part in images:
        densify(part, spec.norm)
    densified = EVENTS / (time.perf_counter() - started)
    loop = study_000_loop(arrays, 500)
    read = bare_read_rate(job)
    emit(
        "raster_kernel_per_core",
        towers_per_event=round(towers, 1),
        image="etaphi 1x47x47 max norm",
        sparse_kernel_events_per_s=round(sparse),
        dense_kernel_events_per_s=round(dense),
        densify_256_batches_events_per_s=round(densified),
        study_000_loop_events_per_s=round(loop),
        bare_read_events_per_s=round(read),
        sparse_kernel_over_bare_read=round(sparse / read, 2),
        target=300000,
        load=load(),
    )


if __name__ == "__main__":
    main()
