"""Starting or joining Ray: the only place a driver calls ray.init."""

from __future__ import annotations

import os

import ray

# Set to "all" to see every worker process's stderr on the terminal, as Ray prints it by default.
WORKER_LOGS_ENV = "HEPRAY_WORKER_LOGS"
RAY_LOG_HANDLER = "ray_print_logs"  # the name ray.init gives its worker-log printer


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS, or start an embedded local Ray."""
    if not ray.is_initialized():
        ray.init(logging_level="WARNING", log_to_driver=True)
        if os.environ.get(WORKER_LOGS_ENV, "").lower() != "all":
            _forward_worker_stdout_only()


def _forward_worker_stdout_only() -> None:
    """Worker processes print hepray's progress on stdout; their stderr is Ray's logging, and for a
    bad input file a thousand lines of the same traceback from the read task, split coordinator,
    training worker and controller, above the one `error:` line the command prints. Only stdout
    reaches the terminal; stderr stays in the Ray session's log files (logs/worker-*.err)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = next((handler for name, handler in dispatcher.handlers if name == RAY_LOG_HANDLER), None)
    if printer is None:  # a Ray that names its printer otherwise: leave its logs as they are
        return
    dispatcher.remove_handler(RAY_LOG_HANDLER)
    dispatcher.add_handler(RAY_LOG_HANDLER, lambda data: None if data["is_err"] else printer(data))
