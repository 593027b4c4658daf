"""Starting or joining Ray: the only place a driver calls ray.init."""

from __future__ import annotations

import logging
import os
import warnings

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
            _quiet_ray_data_console()


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


def _quiet_ray_data_console() -> None:
    """Ray Data logs each dataset's plan, start and end at INFO and, without a terminal, its
    progress every few seconds: hundreds of lines around hepray's epoch lines. On the console it
    now shows warnings and errors only; its log file (the Ray session's logs/ray-data) keeps all.
    Two warnings about Ray's own doings are dropped: Ray Train copies the deprecated
    ExecutionOptions.exclude_resources, and a model actor pool is larger than a small sample's blocks."""
    for handler in ray_data_console_handlers():
        handler.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`ExecutionOptions.exclude_resources` is deprecated")
    warnings.filterwarnings("ignore", message=r"The minimum number of concurrent actors")


def ray_data_console_handlers() -> list[logging.Handler]:
    """The handlers of Ray Data's logger that print to the terminal (not its log files)."""
    import ray.data  # noqa: F401  (configures Ray Data's loggers)

    return [
        handler
        for handler in logging.getLogger("ray.data").handlers
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler"
    ]
