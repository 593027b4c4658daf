"""Figure 5: memory stays flat while iterating a dataset several times larger than the object store.

    python -m benchmarks.memory

Ray starts with a small object store; the electron-ID events are streamed with *dense* images
(the larger form, ~8.9 KB per event) into training-ready batches while a thread samples the RSS
of the driver and of this Ray's worker processes. Target (issue 8): RSS bounded, not growing
with the events read.
"""

from __future__ import annotations

import threading
import time

import psutil

from benchmarks.common import cores, electron_id_job, emit, load, start_ray
from benchmarks.pipeline import batches, dataset

OBJECT_STORE = 100 * 1024 * 1024
SAMPLE_SECONDS = 0.25
MB = 1024 * 1024


def rss_sampler(samples: list, stop: threading.Event) -> None:
    """(seconds, driver RSS, summed RSS of this driver's Ray worker processes) every SAMPLE_SECONDS."""
    driver, started = psutil.Process(), time.perf_counter()
    while not stop.is_set():
        workers = 0
        for process in driver.children(recursive=True):  # only this driver's Ray, not other clusters
            try:
                if "default_worker" in " ".join(process.cmdline()) or process.name().startswith("ray::"):
                    workers += process.memory_info().rss
            except psutil.Error:
                continue
        samples.append((time.perf_counter() - started, driver.memory_info().rss, workers))
        stop.wait(SAMPLE_SECONDS)


def main() -> None:
    job = electron_id_job()
    start_ray(cores(), object_store_memory=OBJECT_STORE)
    ds, plan = dataset(job, sparse=False)
    dense_bytes = plan.events * 4 * 47 * 47
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=rss_sampler, args=(samples, stop), daemon=True)
    sampler.start()
    events = 0
    for _ in range(2):
        for batch in batches(ds):
            events += len(batch["label"])
    stop.set()
    sampler.join()
    third = max(1, len(samples) // 3)
    early, late = samples[third : 2 * third], samples[2 * third :]  # the first third is start-up

    def peak(part, column):
        return max(sample[column] for sample in part) / MB

    series = [(round(t, 1), round(d / MB), round(w / MB)) for t, d, w in samples[:: max(1, len(samples) // 12)]]
    emit(
        "memory_while_streaming",
        events=events,
        dataset_dense_mb=round(2 * dense_bytes / MB),
        object_store_mb=OBJECT_STORE // MB,
        driver_rss_peak_mid_mb=round(peak(early, 1)),
        driver_rss_peak_late_mb=round(peak(late, 1)),
        workers_rss_peak_mid_mb=round(peak(early, 2)),
        workers_rss_peak_late_mb=round(peak(late, 2)),
        series_s_driver_mb_workers_mb=series,
        load=load(),
    )


if __name__ == "__main__":
    main()
