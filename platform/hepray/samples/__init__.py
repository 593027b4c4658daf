"""Sample generators: toy detector data written to ROOT files, so every job runs offline.

Each kind (the ``generate: {kind: ...}`` of a job, the argument of ``hepray make-data``) is a
module here with a function ``generate(out_dir, events, seed=1, fmt="ttree", **options)
-> list[Path]``. Add a generator by adding a module; ``common`` holds the shared writers.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

NOT_GENERATORS = {"common"}
RECORD = ".hepray-generated.json"  # in out_dir: what was generated there last (kind, events, seed, format)


def known_kinds() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_GENERATORS and not m.name.startswith("_")
    )


def generate(kind: str, out_dir: str | Path, events: int, seed: int = 1, fmt: str = "ttree", **options) -> list[Path]:
    """Write ``events`` events (per class, for classification samples) of ``kind`` into
    ``out_dir`` as ROOT files (``fmt``: "ttree" or "rntuple"); returns the paths written.

    ``options`` go to the generator, e.g. ``events_per_file`` (default 5000).
    """
    if kind not in known_kinds():
        raise ValueError(f"unknown sample kind {kind!r}: known kinds are {', '.join(known_kinds())}")
    module = importlib.import_module(f"{__name__}.{kind}")
    paths = module.generate(out_dir, events, seed=seed, fmt=fmt, **options)
    record = {"kind": kind, "events": events, "seed": seed, "format": fmt}
    (Path(out_dir) / RECORD).write_text(json.dumps(record) + "\n")
    return paths


def generated_events(out_dir: str | Path) -> int | None:
    """Events per class last generated into ``out_dir``, or None if no generator recorded any."""
    record = Path(out_dir) / RECORD
    return json.loads(record.read_text())["events"] if record.exists() else None
