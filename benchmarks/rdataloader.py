"""ROOT's own ML loader on the electron-ID benchmark files (issue 21): `ROOT.Experimental.ML.RDataLoader`
over the same events (the cut applied, both classes), the towers as padded vectors (no images:
it does less work than hepray's dataset), ROOT's implicit multithreading on `cores` threads,
batches of 256 as torch tensors; events/s over three epochs after a warm-up one.

    python -m benchmarks.rdataloader

Optional: it needs `import ROOT` (pip `root`, not a project dependency) and otherwise prints one
skip line. Compare its events/s with `dataset_iteration` of benchmarks/pipeline.py, same files
and cores, in the same `python -m benchmarks` run.
"""

from __future__ import annotations

import time

import awkward as ak
import uproot

from benchmarks.common import cores, electron_id_job, emit, load
from hepray.data.root_source import labelled_files

BATCH = 256
TOWERS = ["tower_e", "tower_eta", "tower_phi"]
SCALARS = ["ele_eta", "ele_phi", "ele_pt"]


def most_towers(paths: list[str], tree: str) -> int:
    """The largest tower count of any event: the padded length, so no tower is cut off."""
    return max(int(ak.max(ak.num(uproot.open(path)[tree]["tower_e"].array()))) for path in paths)


def loader(ROOT, job, padded: int, seed: int = 1):
    """One RDataFrame per class (its files, the job's cut, a label column), as RDataLoader takes them."""
    frames = []
    by_label: dict[int, list[str]] = {}
    for path, label in labelled_files(job.data):
        by_label.setdefault(label, []).append(path)
    for label, paths in sorted(by_label.items()):
        frame = ROOT.RDataFrame(job.data.tree, paths).Filter(job.data.cut).Define("label", f"(float){label}")
        frames.append(frame)
    return ROOT.Experimental.ML.RDataLoader(
        frames,
        batch_size=BATCH,
        columns=[*TOWERS, *SCALARS, "label"],
        max_vec_sizes={name: padded for name in TOWERS},
        target="label",
        shuffle=True,
        drop_remainder=False,
        set_seed=seed,
    )


def main() -> None:
    try:
        import ROOT
    except ImportError:
        emit("rdataloader", skipped="no `import ROOT` (pip install root, in a scratch environment)")
        return
    n_cores = cores()
    ROOT.EnableImplicitMT(n_cores)
    job = electron_id_job()
    paths = [path for path, _ in labelled_files(job.data)]
    padded = most_towers(paths, job.data.tree)
    batches = loader(ROOT, job, padded).as_torch()
    for _ in batches:  # warm-up: ROOT's JIT compiles the loader and the cut
        pass
    epochs, events = 3, 0
    started = time.perf_counter()
    for _ in range(epochs):
        for features, _label in batches:
            events += len(features)
    rate = events / (time.perf_counter() - started)
    emit(
        "rdataloader",
        root=ROOT.gROOT.GetVersion(),
        events_per_s=round(rate),
        events_per_epoch=events // epochs,
        threads=n_cores,
        padded_towers=padded,
        features_per_event=len(features[0]),
        batch=BATCH,
        meaning="padded tower vectors, no images: less work than hepray's dataset",
        load=load(),
    )


if __name__ == "__main__":
    main()
