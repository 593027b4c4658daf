"""Jobs on a Ray cluster through Ray's Jobs API: submit, status, logs, stop.

A submitted job is `hepray run JOB.yaml` run on the cluster's head node, with this project
directory as the runtime_env working_dir: the cluster gets the code and the job files as they
are on your disk now (data/, runs/, .venv/ and .git/ stay behind), and `platform/` goes first on
PYTHONPATH so that code wins over any hepray installed on the cluster. The cluster's Python
environment must have hepray's dependencies (cluster.yaml installs them; `pip=True` installs
them per job instead).

Ray's token authentication stays on: every request carries the cluster's token, taken, as Ray
itself takes it, from RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.

Every failure (nothing listening at the address, no answer, a refused token, an unknown job id)
is one ClusterError naming the address or the job; no request waits for ever.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from pathlib import Path

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# gitignore patterns: the leading "/" anchors them at the project root (a bare "data/" would also
# drop the package hepray/data/).
PROJECT_EXCLUDES = ["/data/", "/runs/", "/.venv/", "/.git/", "__pycache__/", "*.egg-info/", "/benchmarks/.data/"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
CONNECT_SECONDS = 5  # to open a connection to the Jobs API
ANSWER_SECONDS = 60  # for its answer to a request (an upload, a long log)


class ClusterError(RuntimeError):
    """A cluster operation failed; the message says which address and what to do."""


def default_address() -> str:
    """RAY_API_SERVER_ADDRESS (as Ray's own job CLI reads it), else the local dashboard."""
    return os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS)


def project_root() -> Path:
    """The source checkout hepray is imported from: what a submitted job receives."""
    import hepray

    root = Path(hepray.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "platform" / "hepray").is_dir():
        raise ClusterError(
            f"hepray is imported from {Path(hepray.__file__).parent}, not from a source checkout; "
            "submitting needs one (git clone, then pip install -e .)"
        )
    return root


def auth_token() -> str | None:
    """The Ray cluster token, looked up in the order Ray uses."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    return path.read_text().strip() if path.is_file() else None


def client(address: str | None = None):
    """A JobSubmissionClient that sends the token (Ray adds it itself only when this process
    runs in token mode, i.e. inside a cluster) and gives up on a request after a timeout."""
    address = address or default_address()
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _as_cluster_error(address, address):
        return _client_class()(address, headers=headers)


@cache
def _client_class():
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        """Ray's client sends its requests without a timeout: a silent address would hang."""

        def _do_request(self, *args, **kwargs):
            kwargs.setdefault("timeout", (CONNECT_SECONDS, ANSWER_SECONDS))
            return super()._do_request(*args, **kwargs)

    return TimedJobSubmissionClient


@contextmanager
def _as_cluster_error(address: str, where: str):
    """The Jobs API's failures as one ClusterError line about `where` (the address or a job)."""
    import requests
    from ray.exceptions import AuthenticationError

    at = "" if where == address else f" at {address}"
    try:
        yield
    except ClusterError:
        raise
    except (ConnectionError, requests.ConnectionError):  # refused, unroutable (ConnectTimeout), unknown host
        raise ClusterError(
            f"{where}: cannot reach the Ray Jobs API{at} (is the cluster up, and is this its "
            "dashboard address? --address or RAY_API_SERVER_ADDRESS)"
        ) from None
    except (requests.Timeout, TimeoutError):
        raise ClusterError(f"{where}: the Ray Jobs API{at} did not answer within {ANSWER_SECONDS} s") from None
    except AuthenticationError as error:
        raise ClusterError(f"{where}: {_first_line(error)}{_token_hint()}") from None
    except (RuntimeError, ValueError, OSError) as error:  # unknown job id, refused request, bad address
        text = _first_line(error)
        if "status code 404" in text and at:
            raise ClusterError(f"{where}: no such job{at}") from None
        raise ClusterError(f"{where}: the Ray Jobs API{at} failed{_token_hint()}: {text}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _token_hint() -> str:
    return "" if auth_token() else " (no token found: set RAY_AUTH_TOKEN or write it to ~/.ray/auth_token)"


def project_dependencies() -> list[str]:
    """hepray's requirements as installed here (extras left out)."""
    from importlib.metadata import requires

    return [requirement for requirement in requires("hepray") or [] if "extra ==" not in requirement]


def runtime_env(root: Path, pip: bool = False) -> dict:
    env = {
        "working_dir": str(root),
        "excludes": PROJECT_EXCLUDES,
        # Relative on purpose: the job's driver and every worker start in their node's copy of the
        # working_dir, so `platform` is that copy's package directory.
        "env_vars": {"PYTHONPATH": "platform"},
    }
    if pip:
        env["pip"] = project_dependencies()
    return env


def run_command(job_file: str | Path, overrides: list[str], out: str | None, root: Path, name: str) -> str:
    """The entrypoint: `hepray run` on the job file's path inside the working_dir."""
    try:
        relative = Path(job_file).resolve().relative_to(root)
    except ValueError:
        raise ClusterError(
            f"{job_file}: outside the project directory {root}, the directory the cluster receives; "
            f"put the job under {root / 'jobs'}"
        ) from None
    parts = ["hepray", "run", shlex.quote(relative.as_posix())]
    # Default output: outside the job's temporary working_dir copy, so it outlives the job.
    parts += ["--out", shlex.quote(out) if out else '"$HOME"/hepray-runs/' + shlex.quote(name)]
    for item in overrides:
        parts += ["--set", shlex.quote(item)]
    return " ".join(parts)


def submit(
    job_file: str | Path,
    address: str | None = None,
    overrides: list[str] | None = None,
    out: str | None = None,
    pip: bool = False,
) -> str:
    """Validate the job here, then submit it; returns the job's submission id."""
    from hepray.spec import load_job

    overrides = list(overrides or [])
    job = load_job(job_file, overrides)  # a bad key fails here, before anything is uploaded
    root = project_root()
    entrypoint = run_command(job_file, overrides, out, root, job.name)
    job_id = f"hepray-{job.name}-{uuid.uuid4().hex[:8]}"
    return _call(
        address,
        "submit_job",
        entrypoint=entrypoint,
        submission_id=job_id,
        runtime_env=runtime_env(root, pip),
        metadata={"hepray_job": job.name},
    )


def status(job_id: str, address: str | None = None) -> dict:
    info = _call(address, "get_job_info", job_id)
    return {
        "id": job_id,
        "status": str(info.status),
        "message": info.message or "",
        "entrypoint": info.entrypoint,
        "started": _when(info.start_time),
        "ended": _when(info.end_time),
    }


def list_jobs(address: str | None = None) -> list[dict]:
    rows = [
        {
            "id": job.submission_id or job.job_id,
            "status": str(job.status),
            "started": _when(job.start_time),
            "entrypoint": job.entrypoint,
        }
        for job in _call(address, "list_jobs")
    ]
    return sorted(rows, key=lambda row: row["started"])


def logs(job_id: str, address: str | None = None) -> str:
    return _call(address, "get_job_logs", job_id)


def follow(job_id: str, write, address: str | None = None, poll_seconds: float = 2.0) -> str:
    """Pass the job's log to `write` as it grows until the job ends; returns the final status."""
    status(job_id, address)  # an unknown job fails here, with its own message
    jobs = client(address)

    async def stream() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    async def until_the_job_ends() -> None:
        # Ray's log stream does not always close when a job ends (seen when its driver died), so
        # the job's status is watched beside it.
        streaming = asyncio.create_task(stream())
        while not streaming.done():
            await asyncio.wait({streaming}, timeout=poll_seconds)
            if not streaming.done() and str(await asyncio.to_thread(jobs.get_job_status, job_id)) in TERMINAL:
                await asyncio.wait({streaming}, timeout=5)  # the last lines
                streaming.cancel()
        if not streaming.cancelled():
            streaming.result()  # a broken stream raises here

    import aiohttp

    try:
        with _as_cluster_error(address or default_address(), f"job {job_id}"):
            asyncio.run(until_the_job_ends())
    except (aiohttp.ClientError, asyncio.CancelledError) as error:  # the log stream's
        raise ClusterError(
            f"job {job_id}: the log stream broke ({type(error).__name__}: {_first_line(error)})"
        ) from None
    return wait(job_id, address, timeout=30)


def stop(job_id: str, address: str | None = None, timeout: float = 60) -> str:
    """Ask the job to stop (SIGTERM, then SIGKILL after Ray's grace period); returns its final status."""
    _call(address, "stop_job", job_id)
    return wait(job_id, address, timeout)


def wait(job_id: str, address: str | None = None, timeout: float = 600) -> str:
    jobs = client(address)
    deadline = time.monotonic() + timeout
    while True:
        with _as_cluster_error(address or default_address(), f"job {job_id}"):
            current = str(jobs.get_job_status(job_id))
        if current in TERMINAL or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def _call(address: str | None, method: str, *args, **kwargs):
    jobs = client(address)
    address = address or default_address()
    with _as_cluster_error(address, f"job {args[0]}" if args else address):
        return getattr(jobs, method)(*args, **kwargs)


def _when(milliseconds: int | None) -> str:
    return datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M:%S") if milliseconds else ""
