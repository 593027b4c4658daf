"""`python -m benchmarks [MODULE ...]`: run every benchmarks/*.py module that has a main() (or the
ones named), each in its own process (its own Ray), print their JSON lines and rewrite
benchmarks/RESULTS.md with them, the machine's cores, its load and the date.
"""

from __future__ import annotations

import ast
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
TIMEOUT_SECONDS = 30 * 60
FIRST = ["pipeline", "raster", "train", "memory"]  # issue 8's figures, then any other module by name

# Issue 8's targets: figure -> (value key, comparison, what the target says).
TARGETS = {
    "dataset_over_read_x_cores": ("ratio", ">=", "1. dataset iteration >= 0.8 x bare read x cores"),
    "raster_kernel_per_core": ("sparse_kernel_events_per_s", ">=", "2. etaphi 47x47 kernel >= 300k events/s per core"),
    "ray_train_epoch_vs_plain_torch": ("ratio", ">=", "3. Ray Train epoch >= 0.9 x plain PyTorch loop"),
    "next_batch_wait": ("p99_over_median", "<=", "4. p99 wait for the next batch <= 2 x median"),
}

CHANGES = """\
## What the profile showed, and what changed

Profiled with py-spy (`py-spy record -f raw`) on the read tasks, the kernel and the bare read, on
this machine, before the changes:

- **Dense images dominated the read task.** Of a read task's time, ~22% went to permuting the
  task's dense 8.8 KB/event images (the within-task shuffle), ~20% to `np.add.at` into a zeroed
  dense buffer, ~5% to concatenating them and ~5% to turning them into Arrow tensors; the uproot
  read itself was ~25%. Images now leave the read task **sparse** (`<name>__pixel` int32 and
  `<name>__value` float32 list columns, shape and norm in the column metadata): the shuffle,
  concatenation and Arrow conversion move ~1 KB instead of ~8.9 KB per event, and the object
  store holds ~8x fewer bytes. `hepray.data.batches.to_tensors` densifies and normalises (the
  same numpy `densify` as the kernel's own, so images are bit-identical to the dense path); the
  training loop runs it as Ray's `collate_fn` in the prefetch threads, and batch inference calls
  the same function.
- **The kernel:** float64 -> int64 casts of pixel coordinates took 18% of it and
  `index // image_size` to recover events from flat indices another ~35%. Pixel indices are now
  int32 within the image (casts ~5x faster), and the sparse kernel gets each event's point count
  from a cumulative sum of the inside flags instead of dividing; the dense path adds the event
  offsets only where it accumulates.
- **Read tasks stay entry-range tasks over only the needed branches**; blocks are cut by their
  real size (`BLOCK_BYTES`), no longer by the dense estimate.
- **The training splits' read tasks now use every CPU Ray Data has.** Timing each read task showed
  one running at a time on two cores (mean concurrency 0.9-1.0 over three epochs) under Ray Data's
  per-operator resource reservation (half of its resources shared out among the operators; the
  split after the read needs no CPU). The train and val splits turn it off (`streamed_to_trainers`
  in `hepray/data/pipeline.py`): concurrency went to 1.4-1.5 and the dataset delivered 25-30% more
  events/s, in A/B runs on the same files. Inference keeps the reservation, which keeps its actor
  pool's CPUs. A calo3d training ran at the same speed either way: there the model is the limit.

After the changes the read task's profile is ~40% uproot (25% zlib inflate), ~25% the
within-task shuffle of the sparse points (`SparseImages.take`, a gather), ~15% the kernel and
~5% Arrow conversion. The shuffle is the next cost to cut (e.g. shuffling contiguous runs of
events and leaving the rest to the loader's local shuffle buffer), at some cost in mixing.

**Why target 1 cannot hold as stated.** Its denominator is the bare read alone, but every event
must also be rasterized and densified on the same cores. `serial_pipeline_over_read` runs the
pipeline's own work (the read tasks and the densification, no Ray, no shuffle across tasks) back
to back in one process: that ratio is the most any scheduling of it can reach, on any number of
cores. On this machine it is 0.39-0.59 over five runs, well below 0.8: the work besides the read
(cut, split, kernel, Arrow blocks, densification) costs most of a read again per event. The dataset
itself reached 0.20-0.22 as a training worker iterates it before the read tasks ran two at a time,
0.27 in this run, and about the same through the driver's own iterator (`driver_ingest_ratio`). Reaching 0.8 would need the read itself to get cheaper than `tree.arrays`
(e.g. files written with a faster codec, which speeds up the bare read as well) or the
rasterization moved off the CPU (a GPU collate).

**Target 4 is missed, narrowly in this run, on a median that is nearly zero.** The waits are
measured as a Ray Train worker sees them: the trainer's own `DataConfig` splits the dataset (the
streaming executor runs in its split-coordinator actor) and the small CNN trains on one torch
thread, as Ray runs a one-CPU worker. The next batch is then nearly always ready: a median wait of
0.2-0.6 ms against a training step of ~15 ms, a p99 of 1.5-2.5 ms and no wait above ~5 ms.
p99/median came out 8.1 in this run, 2.8 on 2026-11-25 and 3.6-12.7 in eight other runs, some
with the loader variants below. The slow waits
are not file or block boundaries: with the local shuffle buffer on or off and 2 or 8 prefetched
batches, 24-159 of 386 batches waited more than twice the median, spread over the epoch; the main
thread spends them blocked on Ray's batch queue, whose prefetch threads share the GIL and the two
cores with the read tasks. None of these moved the ratio beyond its run-to-run spread, each tried
alternately in one process: Python's switch interval at 5, 1 or 0.2 ms; garbage collection off
or frozen; Ray Data told to leave the trainer's core free (`exclude_resources`); the read tasks at
a lower CPU priority (Ray's workers already run at nice 15); 0, 1 or 2 prefetched batches. About
1% of batches wait a steady 3-4 ms, spread over the epoch (batches 32, 59, 61, 68, 187, 210, ...
in one run, where a read task ends every ~39 batches). With two read tasks now running at once,
this run's p99 was 5.9 ms. Before the measurement matched training, the benchmark trained
on two torch threads beside two read tasks on two cores and saw stalls of 95-210 ms; a one-CPU
worker does not oversubscribe its cores like that.

**Target 2's figure is absolute, and this run's machine was slower**: an Intel Xeon, where the
2026-11-25 run had an AMD EPYC. The same files read at 80k instead of 141k events/s per core, and
the kernel ran at 255k events/s per core against 862k then (343k when first measured). Nothing in
the kernel changed in between.

**Training ingests blocks in order** (`preserve_order`, for reproducible runs); targets 1, 3 and 4 are
measured with the trainer's own `DataConfig`. Target 3 takes each side's best epoch after the first:
the plain loop alone ran at 1430-1960 events/s from one run to the next on this shared machine, and
with last-epoch figures the ratio ranged 0.82-1.16 over six runs (it holds at 1.05 here).
"""


def modules(names: list[str]) -> list[str]:
    """benchmarks/*.py modules defining a top-level main(), found without importing them."""
    found = []
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found.append(path.stem)
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise SystemExit(f"no benchmark module {', '.join(unknown)} (known: {', '.join(found)})")
    found.sort(key=lambda name: (FIRST.index(name) if name in FIRST else len(FIRST), name))
    return [name for name in found if not names or name in names]


def run(module: str) -> tuple[list[dict], str]:
    """The module's JSON lines, and its error text if it failed."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{module}"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return [], f"timed out after {TIMEOUT_SECONDS} s"
    lines = []
    for text in done.stdout.splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict) and "figure" in line:
            lines.append(line)
            print(json.dumps({"module": module, **line}), flush=True)
    error = "" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    return lines, error


def verdict(line: dict) -> str:
    key, comparison, _ = TARGETS[line["figure"]]
    value, target = line[key], line["target"]
    holds = value >= target if comparison == ">=" else value <= target
    return f"{value} ({comparison} {target}: {'holds' if holds else 'MISSED'})"


def cpu_model() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(results: dict[str, tuple[list[dict], str]], started: float, loads: tuple[float, float]) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    out = [
        "# Throughput benchmarks (issue 8)",
        "",
        f"Written by `python -m benchmarks` on {now:%Y-%m-%d %H:%M} UTC in {time.time() - started:.0f} s: "
        f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}. "
        f"1-minute load average {loads[0]} at the start and {loads[1]} at the end (a shared machine: "
        "each figure's `load` is the load while it ran; ratios are taken within one module's run, "
        "same files and cores).",
        "",
        "## Targets",
        "",
        "| target | measured |",
        "|---|---|",
    ]
    lines = [line for module_lines, _ in results.values() for line in module_lines]
    ceiling = [line for line in lines if line["figure"] == "serial_pipeline_over_read"]
    for figure, (_, _, text) in TARGETS.items():
        found = [line for line in lines if line["figure"] == figure]
        note = ""
        if figure == "dataset_over_read_x_cores" and ceiling:
            note = (
                f"; ceiling {ceiling[0]['ratio']}: the same work serially in one process, no Ray, "
                f"runs at {ceiling[0]['ratio']} x the bare read per core"
            )
        out.append(f"| {text} | {verdict(found[0]) if found else 'not run'}{note} |")
    memory = [line for line in lines if line["figure"] == "memory_while_streaming"]
    if memory:
        m = memory[0]
        out.append(
            f"| 5. RSS bounded over a dataset {m['dataset_dense_mb']} MB through a {m['object_store_mb']} MB object store "
            f"| driver peak {m['driver_rss_peak_mid_mb']} -> {m['driver_rss_peak_late_mb']} MB, workers "
            f"{m['workers_rss_peak_mid_mb']} -> {m['workers_rss_peak_late_mb']} MB (middle third -> last third) |"
        )
    transport = {line["transport"]: line for line in lines if line["figure"] == "object_store_bytes_per_event"}
    if len(transport) == 2:
        dense, sparse = transport["dense"], transport["sparse"]
        out.append(
            f"| 6. object-store bytes per event, {dense['image_kind']} | dense {dense['bytes_per_event']}, "
            f"sparse {sparse['bytes_per_event']} ({sparse['points_per_event']} points/event): sparse is "
            f"{dense['bytes_per_event'] / sparse['bytes_per_event']:.1f}x smaller and is what `hepray run` ships |"
        )
    out += ["", "## Every figure (the JSON lines)", ""]
    for module, (module_lines, error) in results.items():
        out.append(f"`benchmarks/{module}.py`" + (f" — **failed**: {error}" if error else ""))
        out += ["", "```"] + [json.dumps(line) for line in module_lines] + ["```", ""]
    out.append(CHANGES)
    (HERE / "RESULTS.md").write_text("\n".join(out))


def main() -> None:
    started, load_before = time.time(), round(os.getloadavg()[0], 2)
    results = {}
    for module in modules(sys.argv[1:]):
        results[module] = run(module)
        write_results(results, started, (load_before, round(os.getloadavg()[0], 2)))  # after each: partial runs count
    failed = [module for module, (_, error) in results.items() if error]
    if failed:
        raise SystemExit(f"benchmark modules failed: {', '.join(failed)} (see benchmarks/RESULTS.md)")


if __name__ == "__main__":
    main()
