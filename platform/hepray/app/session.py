"""Starting or joining Ray: the only place a driver calls ray.init."""

from __future__ import annotations

import ray


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS, or start an embedded local Ray."""
    if not ray.is_initialized():
        ray.init(logging_level="WARNING", log_to_driver=True)
