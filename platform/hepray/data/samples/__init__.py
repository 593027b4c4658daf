"""Sample generators: toy detector data written to ROOT files, so every job runs offline.

``GENERATORS`` maps a kind (the ``generate: {kind: ...}`` of a job, the argument of
``hepray make-data``) to a function ``(out_dir, events, seed=1, fmt="ttree", **options)
-> list[Path]``. Add a generator by adding an entry to this plain dict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hepray.data.samples import electron_id

GENERATORS: dict[str, Callable[..., list[Path]]] = {
    "electron_id": electron_id.generate,
}


def generate(kind: str, out_dir: str | Path, events: int, seed: int = 1, fmt: str = "ttree",
             **options) -> list[Path]:
    """Write ``events`` events (per class, for classification samples) of ``kind`` into
    ``out_dir`` as ROOT files (``fmt``: "ttree" or "rntuple"); returns the paths written.

    ``options`` go to the generator, e.g. ``events_per_file`` (default 5000).
    """
    try:
        generator = GENERATORS[kind]
    except KeyError:
        known = ", ".join(sorted(GENERATORS)) or "(none)"
        raise ValueError(f"unknown sample kind {kind!r}: known kinds are {known}") from None
    return generator(out_dir, events, seed=seed, fmt=fmt, **options)
