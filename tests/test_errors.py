"""A user's mistake ends in one `error:` line naming the file, branch, key or address, never a
traceback: bad values found inside a read task while training or predicting, an unusable
model.pt, `hepray status/logs/stop` against a missing job or an address nobody answers at, and
expressions whose constant powers would hang a read task."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from hepray.cli import app, data_error_in
from hepray.cluster import jobs
from hepray.data.rootio import DataError
from hepray.evaluate.inference import MODEL_FILE, ModelFileError, load_job, load_model, save_model
from hepray.expr import Expression, ExpressionError
from hepray.models import build_model
from hepray.spec import JobSpec
from rootfiles import etaphi_job, towers, write_tree

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nobody listens on it
RAY_ADVICE = (
    "\nFailed to apply UDF transform after 1/1 attempts (total backoff 0.0s).\nTo change retry attempts, "
    "backoff, or which errors are retried, configure `ray.data.DataContext.get_current()`"
)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def assert_one_error_line(result, *names: str, max_lines: int = 15) -> str:
    """Exit code non-zero, no traceback, few lines, and one `error:` line naming every name."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output and "╭" not in result.output, result.output
    assert len(result.output.splitlines()) < max_lines, result.output
    (line,) = error_lines(result.output)
    for name in names:
        assert name in line, line
    return line


def with_nan(branches: dict, entries: list[int]) -> dict:
    """The first tower energy of each of these entries set to NaN."""
    counts = ak.num(branches["tower_e"])
    energies = ak.to_numpy(ak.flatten(branches["tower_e"])).copy()
    starts = np.concatenate([[0], np.cumsum(ak.to_numpy(counts))])
    for entry in entries:
        assert counts[entry] > 0
        energies[starts[entry]] = np.nan
    return {**branches, "tower_e": ak.unflatten(energies, counts)}


# ------------------------------------------------------------------ expressions


@pytest.mark.parametrize(
    "text",
    ["x ** 2", "x ** -3", "x ** 0.5", "x ** (1/3)", "2 ** 64", "(x ** 2) ** 3", "x ** y", "10 ** x", "x > 1e-3 ** 2"],
)
def test_ordinary_powers_pass(text):
    Expression(text).evaluate({"x": np.array([2.0]), "y": np.array([3.0])})


@pytest.mark.parametrize(
    "text, message",
    [
        ("x ** 65", "exponent '65' = 65 is too large"),
        ("x ** -100", "exponent '-100' = -100 is too large"),
        ("x ** (40 * 2)", "exponent '40 * 2' = 80 is too large"),
        ("x ** exp(5)", "exponent 'exp(5)' = 148.413 is too large"),
        ("e_sum > 9 ** 9 ** 9", "nested constant powers"),
        ("x ** 2 ** 3", "nested constant powers"),
        ("(2 ** 60) ** 60 < x", "nested constant powers"),
        ("x ** (1 / 0)", "cannot be computed"),
        ("x > 1e10 ** 64", "cannot be computed"),
    ],
)
def test_constant_powers_that_could_hang_a_read_task_are_rejected(text, message):
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match=re.escape(message)) as raised:
        Expression(text)
    assert str(raised.value).startswith(f"'{text}': ")  # names the expression
    assert time.perf_counter() - started < 1


def test_a_job_with_a_huge_power_fails_validation(tmp_path):
    raw = etaphi_job({"a": "a.root", "b": "b.root"}, cut="x > 9 ** 9 ** 9")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml")])
    assert result.exit_code != 0 and "nested constant powers" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------ errors Ray wrapped


def ray_task_error(error: Exception):
    """What ray.get raises for a task that raised `error`: RayTaskError(DataError)."""
    from ray.exceptions import RayTaskError

    try:
        raise error
    except Exception as raised:
        text = f"ray::ReadReadROOT()\n  File ...\n{type(error).__module__}.{type(error).__qualname__}: {raised}"
        return RayTaskError("ReadReadROOT", text, raised).as_instanceof_cause()


MESSAGE = "data/x/[ab].root: entries [2000, 4000): branch 'tower_e' has 3 NaN/inf values (first at entry 2417)"


def test_data_error_in_finds_the_error_in_every_ray_wrapper():
    from ray.train import ControllerError, WorkerGroupError

    task_error = ray_task_error(DataError(MESSAGE + RAY_ADVICE))
    assert isinstance(task_error, DataError)  # Ray's class is a DataError too, but with the traceback as message
    chained = RuntimeError("evaluation failed")
    chained.__cause__ = task_error
    for wrapped in (
        task_error,
        chained,
        ControllerError(task_error),
        WorkerGroupError("Training failed", {1: RuntimeError("other rank"), 0: task_error}),
    ):
        found = data_error_in(wrapped)
        assert type(found) is DataError and str(found) == MESSAGE  # Ray's retry advice cut off


def test_data_error_in_reads_the_traceback_text_when_only_that_survived():
    class Opaque(Exception):
        pass

    text = (
        "Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n"
        '  File "root_source.py", line 276, in _validate\n'
        f"\x1b[31mhepray.data.rootio.DataError: {MESSAGE}{RAY_ADVICE}"
    )
    found = data_error_in(Opaque(text))
    assert type(found) is DataError and str(found) == MESSAGE
    expression = data_error_in(
        Opaque("...\nhepray.expr.ExpressionError: 'x **': not a valid expression (invalid syntax)")
    )
    assert type(expression) is ExpressionError and str(expression).startswith("'x **'")
    assert data_error_in(RuntimeError("a bug, not the user's data")) is None
    assert data_error_in(KeyError("hepray.data.rootio.DataErrors: no")) is None


# ------------------------------------------------------------------ model files


@pytest.fixture(scope="module")
def job() -> JobSpec:
    return JobSpec.model_validate(etaphi_job({"narrow": "narrow.root", "wide": "wide.root"}))


def model_state(job: JobSpec, **model) -> dict:
    config = job.model.model_copy(update=model)
    torch.manual_seed(0)
    return build_model(config, job.data.input_shapes(), job.n_outputs).state_dict()


class NotATensor:
    pass


def write_broken(kind: str, path: Path, job: JobSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = job.model_dump(mode="json", by_alias=True)
    state = model_state(job)
    if kind == "text":
        path.write_text("not a model\n")
    elif kind == "bytes":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"job": raw, "state_dict": state}))
    elif kind == "object":
        torch.save({"job": raw, "state_dict": state, "extra": NotATensor()}, path)
    elif kind == "list":
        torch.save([raw, state], path)
    elif kind == "old job":
        torch.save(
            {"job": {**raw, "train": {**raw["train"], "epochs": 0}, "retired_key": 1}, "state_dict": state}, path
        )
    elif kind == "other shapes":
        save_model(path, job, model_state(job, filters=8))
    elif kind == "other keys":
        state = dict(state)
        state["head.extra.weight"] = state.pop(next(iter(state)))
        save_model(path, job, state)


BROKEN = {
    "text": "not a model file written by `hepray run` (torch.load cannot read it",
    "bytes": "not a model file written by `hepray run` (torch.load cannot read it",
    "pickle": "not a model file written by `hepray run`",
    "object": "it holds Python objects (test_errors.NotATensor), not only tensors and plain containers",
    "list": "not a model file written by `hepray run` (no job and state_dict in it)",
    "old job": "the job saved in it does not validate with this hepray (train.epochs: must be > 0; retired_key: unknown key)",
    "other shapes": "its weights do not fit the model its job describes (other shape (saved vs model): features.0.weight (8, 1, 3, 3) vs (4, 1, 3, 3)",
    "other keys": "its weights do not fit the model its job describes (missing: features.0.weight; unexpected: head.extra.weight)",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_an_unusable_model_file_is_one_clear_error(kind, job, tmp_path):
    path = tmp_path / MODEL_FILE
    write_broken(kind, path, job)
    with pytest.raises(ModelFileError) as raised:
        load_model(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and BROKEN[kind] in message and "\n" not in message
    assert "weights_only=False" not in message  # never the advice to load it unsafely


def test_load_job_does_not_need_the_weights_to_fit(job, tmp_path):
    write_broken("other shapes", tmp_path / MODEL_FILE, job)
    assert load_job(tmp_path / MODEL_FILE).model == job.model
    with pytest.raises(ModelFileError, match="no such file"):
        load_job(tmp_path / "missing" / MODEL_FILE)
    with pytest.raises(ModelFileError, match="a directory, not a model file"):
        load_job(tmp_path)


@pytest.mark.parametrize("kind", ["text", "object", "old job"])
def test_predict_with_an_unusable_model_file_prints_one_line(kind, job, tmp_path):
    """Found in the driver before Ray starts: a deep run directory makes the line longer than
    any terminal, and it still is one line."""
    run_dir = tmp_path / ("run_" + "x" * 80) / "[v2]"
    write_broken(kind, run_dir / MODEL_FILE, job)
    result = CliRunner().invoke(app, ["predict", str(run_dir), "--files", str(tmp_path / "none.root")])
    line = assert_one_error_line(result, f"{run_dir / MODEL_FILE}: ", BROKEN[kind], max_lines=3)
    assert result.exit_code == 2 and line.startswith("error: ")


# ------------------------------------------------------------------ the Jobs API


def invoke_timed(*args: str, seconds: float = 10):
    started = time.perf_counter()
    result = CliRunner().invoke(app, list(args))
    assert time.perf_counter() - started < seconds, f"hepray {' '.join(args)} took too long"
    return result


@pytest.mark.parametrize(
    "command",
    [["status", "somejob"], ["status"], ["logs", "somejob"], ["logs", "somejob", "--follow"], ["stop", "somejob"]],
)
def test_an_address_nobody_listens_at_is_one_line(command):
    result = invoke_timed(*command, "--address", UNREACHABLE)
    assert_one_error_line(result, UNREACHABLE, "cannot reach the Ray Jobs API", max_lines=3)


def test_a_ray_address_nobody_listens_at_is_one_line_not_minutes_of_retries(tmp_path):
    write_tree(tmp_path / "sig.root", towers(50, 0, seed=1))
    write_tree(tmp_path / "bkg.root", towers(50, 1000, seed=2))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(etaphi_job({"bkg": str(tmp_path / "bkg.root"), "sig": str(tmp_path / "sig.root")}))
    )
    address = UNREACHABLE.removeprefix("http://")
    # A process of its own, as a user runs it: the test session's Ray would be joined instead.
    result = subprocess.run(
        [sys.executable, "-m", "hepray.cli", "run", str(job_file), "--out", str(tmp_path / "run")],
        env={**os.environ, "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=120,  # Ray itself retries such an address for many minutes
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stdout + result.stderr)
    assert len(errors) == 1 and f"cannot reach the Ray cluster at RAY_ADDRESS={address}" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_local_ray_that_times_out_at_startup_is_started_again_then_one_error(monkeypatch):
    """Ray gives its node 30 s to come up, which a busy 2-core machine can miss: fault injected here."""
    from hepray.app import session

    attempts = []

    def node_timed_out(**kwargs):
        attempts.append(kwargs)
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(session.ray, "init", node_timed_out)
    monkeypatch.setattr(session.ray, "shutdown", lambda: None)
    with pytest.raises(session.RayStartError, match=r"did not start within Ray's 30 s, 2 times \(load average"):
        session._start_ray()
    assert len(attempts) == 2

    def another_failure(**kwargs):
        raise Exception("something else")

    monkeypatch.setattr(session.ray, "init", another_failure)
    with pytest.raises(Exception, match="something else"):  # anything else is Ray's to report
        session._start_ray()


def test_an_address_that_never_answers_times_out(monkeypatch):
    monkeypatch.setattr(jobs, "ANSWER_SECONDS", 1)
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = invoke_timed("status", "somejob", "--address", address, seconds=8)
    assert_one_error_line(result, address, "did not answer within 1 s", max_lines=3)


class FakeJobsAPI(http.server.BaseHTTPRequestHandler):
    """Answers like Ray's dashboard for a cluster without jobs: the version, then 404 for any job."""

    def log_message(self, format, *args) -> None:
        pass

    def _answer(self, status: int, body: str, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_GET(self):
        if self.path == "/api/version":
            import ray

            return self._answer(
                200,
                json.dumps({"version": "4", "ray_version": ray.__version__, "ray_commit": "x", "session_name": "s"}),
                "application/json",
            )
        job = self.path.split("/")[3] if self.path.startswith("/api/jobs/") else "?"
        self._answer(404, f"Job {job} does not exist")

    do_POST = do_GET


@pytest.fixture
def fake_jobs_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeJobsAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "command",
    [["status", "nosuchjob"], ["logs", "nosuchjob"], ["logs", "nosuchjob", "--follow"], ["stop", "nosuchjob"]],
)
def test_a_missing_job_is_one_line(fake_jobs_api, command):
    result = invoke_timed(*command, "--address", fake_jobs_api)
    line = assert_one_error_line(result, max_lines=3)
    assert line == f"error: job nosuchjob: no such job at {fake_jobs_api}"


@pytest.mark.slow
def test_a_missing_job_on_a_real_ray_head_is_one_line(monkeypatch):
    from test_cluster import LocalCluster, free_port

    head = LocalCluster()
    try:
        head._start(
            "--head",
            "--port",
            str(head.gcs_port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(head.dashboard_port),
            "--ray-client-server-port",
            str(free_port()),
        )
        monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
        for command in (
            ["status", "nosuchjob"],
            ["logs", "nosuchjob"],
            ["logs", "nosuchjob", "--follow"],
            ["stop", "nosuchjob"],
        ):
            result = invoke_timed(*command, "--address", head.address, seconds=30)
            assert error_lines(result.output) == [f"error: job nosuchjob: no such job at {head.address}"], result.output
            assert len(result.output.splitlines()) == 1
        assert invoke_timed("status", "--address", head.address, seconds=30).exit_code == 0
    finally:
        head.stop()


# ------------------------------------------------------------------ bad values found inside read tasks


@pytest.fixture(scope="module")
def nan_files(tmp_path_factory):
    """Two classes; wide.root has NaN energies in entries 450 and 451 only: planning (metadata)
    passes, the read task of the range holding them fails."""
    root = tmp_path_factory.mktemp("nan")
    write_tree(root / "narrow.root", towers(600, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(root / "wide.root", with_nan(towers(600, 1000, seed=2, energy=2.0, spread=0.12), [450, 451]))
    return root


def exception_chain(result) -> list[BaseException]:
    chain, error = [], result.exc_info[1] if result.exc_info else None
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


@pytest.mark.slow
def test_bad_values_found_while_training_end_in_one_line(ray_session, nan_files, tmp_path):
    raw = etaphi_job(
        {"narrow": str(nan_files / "narrow.root"), "wide": str(nan_files / "wide.root")}, events_per_task=100
    )
    raw["train"] = {"epochs": 1, "batch_size": 64}
    raw["evaluate"] = {"plots": False}
    raw["scaling"] = {"max_failures": 0}  # a retry would fail alike, only later
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run")])
    line = assert_one_error_line(result, str(nan_files / "wide.root"), "branch 'tower_e'", "NaN/inf")
    assert "Failed to apply UDF" not in result.output and "WorkerGroupError" not in result.output
    assert re.fullmatch(
        rf"error: {re.escape(str(nan_files / 'wide.root'))}: entries \[\d+, \d+\): branch 'tower_e' "
        r"has 2 NaN/inf values \(first at entry 450\)",
        line,
    ), line
    # Found while training, by a read task (not at planning): Ray Train's error is what the command caught.
    assert any(type(error).__name__ == "WorkerGroupError" for error in exception_chain(result))


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory, job):
    """A run directory holding an untrained model: enough to predict with."""
    run_dir = tmp_path_factory.mktemp("untrained")
    save_model(run_dir / MODEL_FILE, job, model_state(job))
    return run_dir


@pytest.mark.slow
def test_bad_values_found_while_predicting_end_in_one_line(ray_session, untrained_run, nan_files, tmp_path):
    result = CliRunner().invoke(
        app, ["predict", str(untrained_run), "--files", str(nan_files / "wide.root"), "--out", str(tmp_path)]
    )
    line = assert_one_error_line(result, str(nan_files / "wide.root"), "branch 'tower_e'", "NaN/inf")
    assert re.fullmatch(
        rf"error: {re.escape(str(nan_files / 'wide.root'))}: entries \[\d+, \d+\): branch 'tower_e' "
        r"has 2 NaN/inf values \(first at entry 450\)",
        line,
    ), line
    assert "Ray Data or Ray Core internal code" not in result.output  # Ray Data's own report kept off the console
    assert not list(tmp_path.glob("*.root"))  # no output for a failed input


@pytest.mark.slow
def test_weights_that_do_not_fit_fail_before_the_actors_start(ray_session, job, nan_files, tmp_path):
    run_dir = tmp_path / "run"
    write_broken("other keys", run_dir / MODEL_FILE, job)
    result = CliRunner().invoke(
        app, ["predict", str(run_dir), "--files", str(nan_files / "narrow.root"), "--out", str(tmp_path / "out")]
    )
    assert_one_error_line(result, f"{run_dir / MODEL_FILE}: ", BROKEN["other keys"])
    assert "(raylet)" not in result.output and "actor" not in result.output.lower()


def test_backquoted_branch_names_and_names_that_shadow_functions():
    from hepray.expr import Expression

    cut = Expression("`Jet.PT` > 20 and log > 0 and abs(`nJet.size` - 1) < 0.5")
    assert cut.branches == {"Jet.PT", "log", "nJet.size"}
    arrays = {
        "Jet.PT": np.array([10.0, 30.0, 40.0]),
        "log": np.array([1.0, 1.0, -1.0]),
        "nJet.size": np.array([1, 1, 1]),
    }
    np.testing.assert_array_equal(cut.evaluate(arrays), [False, True, False])
    assert Expression("log(`Jet.PT`)").branches == {"Jet.PT"}
