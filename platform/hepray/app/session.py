"""Starting or joining Ray: the only place a driver calls ray.init."""

from __future__ import annotations

import logging
import os
import socket
import warnings

import ray

# Set to "all" to see every worker process's stderr on the terminal, as Ray prints it by default.
WORKER_LOGS_ENV = "HEPRAY_WORKER_LOGS"
RAY_LOG_HANDLER = "ray_print_logs"  # the name ray.init gives its worker-log printer


# Ray gives a starting local node 30 s to register (hard-coded): a busy 2-core machine can miss it.
LOCAL_START_ATTEMPTS = 2


class RayStartError(RuntimeError):
    """Ray did not start here, or the cluster named by RAY_ADDRESS could not be joined."""


def ensure_ray() -> None:
    """Join the cluster named by RAY_ADDRESS, or start an embedded local Ray."""
    if not ray.is_initialized():
        _start_ray()
        if os.environ.get(WORKER_LOGS_ENV, "").lower() != "all":
            _forward_worker_stdout_only()
            _quiet_ray_data_console()


def _start_ray() -> None:
    """ray.init; a local Ray whose node timed out during startup is started once more, then given
    up on with a RayStartError, as is a cluster that cannot be joined."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        _check_answers(address)
    for _ in range(LOCAL_START_ATTEMPTS):
        try:
            ray.init(logging_level="WARNING", log_to_driver=True)
            return
        except ConnectionError as error:
            where = f" at RAY_ADDRESS={address}" if address else ""
            raise RayStartError(f"cannot join the Ray cluster{where}: {error}") from None
        except Exception as error:  # Ray raises a bare Exception for a node that did not come up
            ray.shutdown()
            if address or "timed out during startup" not in str(error):
                raise
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    raise RayStartError(
        f"the local Ray node did not start within Ray's 30 s, {LOCAL_START_ATTEMPTS} times (load average "
        f"{load} on {os.cpu_count()} CPUs): let other jobs finish and run again; Ray's logs are in "
        "/tmp/ray/session_latest/logs"
    )


def _check_answers(address: str) -> None:
    """Ray retries a cluster address that does not answer for many minutes, printing a warning every
    few seconds: see first whether anything listens there. ("auto" and the like: Ray resolves them.)"""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()  # [IPv6]:port too
    except OSError as error:
        raise RayStartError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({error}): is the cluster up, and is "
            "this its head node's address (port 6379 unless set otherwise)? Unset RAY_ADDRESS to run on a "
            "local Ray"
        ) from None


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
