"""Issue 20's drift-chamber class-pair gaps at a larger sample: the multiclass job and its three binary
pair jobs trained on --events per class (the jobs ship 3000), with --epochs, everything else as the
search's report trains them (its job_overrides, these three replaced); each gap (binary AUC - the
multiclass model's pairwise AUC) with its paired 68 % bootstrap interval on the search report's
evaluation sample, as docs/tune_drift_chamber_multiclass.md has them.

    python docs/drift_chamber_sample_size.py [--events 10000] [--epochs 20] [--out runs/sample_size]
        [--data DIR] [--seed N] [--pairs NAME ...] [--set KEY=VALUE ...] [--label NAME]

--set changes the multiclass job only (e.g. --set "task.class_weights=[1.0, 1.5, 1.5]" --label w15;
the label names its run directory). --seed trains every job with that seed (default: the jobs' own,
1); --pairs keeps the named pair jobs only (e.g. ee_vs_mumu); --data reads and generates the
sample there (default: data_<events> in --out). Finished runs in --out are reused. The evaluation
sample first:

    hepray make-data drift_chamber --out data/drift_chamber_eval --events 20000 --seed 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hepray.spec import apply_overrides, load_job, validate_job
from hepray.tune.report import finished, pair_gaps
from hepray.tune.space import TuneSpec, load_search

SEARCH = "tune_spaces/drift_chamber_multiclass.yaml"
MULTICLASS = "jobs/drift_chamber_multiclass.yaml"


def sized_search(events: int, epochs: int, data: Path, seed: int | None) -> tuple[TuneSpec, dict]:
    """The search (and its base job as YAML) with every job on `events` per class generated into
    `data`, trained for `epochs` (with `seed`): its job_overrides, which give each binary job its own classes."""
    sample = {
        "data.generate.out": data,
        "data.generate.events": events,
        "train.epochs": epochs,
        **({"train.seed": seed} if seed is not None else {}),
        **{f"data.files.{name}": f"{data}/{name}_*.root" for name in load_job(MULTICLASS).data.class_names},
    }
    search, _, base_raw = load_search(SEARCH, [f"job_overrides.{key}={value}" for key, value in sample.items()])
    return search, base_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000, help="events per class")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/sample_size"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="multiclass job only")
    parser.add_argument("--label", default="", help="names the multiclass run directory")
    parser.add_argument("--data", type=Path, help="the sample's directory (default: data_<events> in --out)")
    parser.add_argument("--seed", type=int, help="every job's train.seed (default: the jobs' own)")
    parser.add_argument("--pairs", nargs="+", help="pair jobs to compare, e.g. ee_vs_mumu (default: all three)")
    args = parser.parse_args()
    search, base_raw = sized_search(args.events, args.epochs, args.data or args.out / f"data_{args.events}", args.seed)
    files = search.report.evaluation_files
    pair_jobs = {
        search.binary_job(path).name.removeprefix("drift_chamber_"): path for path in search.report.binary_jobs
    }
    unknown = sorted(set(args.pairs or ()) - set(pair_jobs))
    if unknown:
        parser.error(f"--pairs: no pair job {', '.join(unknown)}; choose from {', '.join(pair_jobs)}")
    seeded = f"_seed{args.seed}" if args.seed is not None else ""
    name = f"multiclass_{args.events}" + (f"_{args.label}" if args.label else "") + seeded
    multi = finished(validate_job(apply_overrides(base_raw, args.overrides), MULTICLASS), args.out / name, files)
    print(
        f"{name}: {args.events} events per class, {args.epochs} epochs, {' '.join(args.overrides) or 'the job as is'}"
    )
    print("| pair | events | binary AUC | multiclass AUC | gap [68 %] |\n|---|---|---|---|---|")
    for pair in args.pairs or pair_jobs:
        job = search.binary_job(pair_jobs[pair])
        binary = finished(job, args.out / f"{job.name}_{args.events}{seeded}", files)
        pair = pair_gaps([binary], [multi])
        gap = pair.gap
        print(
            f"| {job.name.removeprefix('drift_chamber_')} | {pair.events} | {pair.binary.value:.4f} "
            f"| {pair.multiclass.value:.4f} | {gap.value:+.4f} [{gap.low:+.4f}, {gap.high:+.4f}] |",
            flush=True,
        )


if __name__ == "__main__":
    main()
