"""Bad events, not bad ranges: labels out of range, NaN/inf where an event is used, NaN observers
kept, `on_error: skip` dropping single events (counted once), corrupt baskets skipped as ranges,
transient remote errors retried, and errors that are not bad data left alone."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import threading

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from hepray.data import rootio
from hepray.data.root_source import DataError, EntryRange, EventReader, plan_reads, split_mask, split_of
from hepray.spec import JobSpec
from httpserver import RANGE, FileServer, RangeHandler
from rootfiles import etaphi_job, towers, write_tree

N = 300


def with_nan(data: dict, branch: str, events: list[int]) -> dict:
    """The data with one NaN in each of the events (the first point of a jagged branch)."""
    values = data[branch]
    if isinstance(values, ak.Array):
        assert np.all(ak.to_numpy(ak.num(values))[events] > 0), "events without points"
        flat = ak.to_numpy(ak.flatten(values)).copy()
        starts = np.concatenate([[0], np.cumsum(ak.num(values))])
        flat[starts[events]] = np.nan
        return {**data, branch: ak.unflatten(flat, ak.num(values))}
    values = values.copy()
    values[events] = np.nan
    return {**data, branch: values}


def one_file_job(path, **data) -> JobSpec:
    """A binary job over one file with a label branch (one range of N entries: events_per_task N)."""
    return JobSpec.model_validate(
        etaphi_job([str(path)], label_branch="is_signal", classes=["bkg", "sig"], events_per_task=N, **data)
    )


def labelled(seed: int = 1) -> dict:
    data = towers(N, 0, seed=seed)
    data["is_signal"] = (np.arange(N) % 2).astype(np.int32)
    return data


def read_range(job: JobSpec, split: str | None = None, **reader):
    """One read task's work on the file's single range: (columns, skips)."""
    path = job.data.files[0]
    return EventReader(job.data, split, **reader)._read_range(EntryRange(path, None, 0, N))


def read_all(job: JobSpec, split: str | None = None) -> dict[str, np.ndarray]:
    reader = EventReader(job.data, split)
    plan = plan_reads(job.data, reader.branches())
    blocks = [block for task in plan.tasks for block in reader.read(task)]
    return {
        name: np.concatenate([block[name].to_numpy() for block in blocks]) for name in ("obs_evt", "obs_x", "label")
    }


# ------------------------------------------------------------------ labels


def test_label_out_of_range_names_file_range_and_value(tmp_path):
    data = labelled()
    data["is_signal"][[42, 200]] = 11
    write_tree(tmp_path / "labels.root", data)
    with pytest.raises(
        DataError,
        match=r"labels.root: entries \[0, 300\): label branch 'is_signal' has value 11 at "
        r"entry 42 \(2 events outside 0..1, the classes bkg, sig\)",
    ):
        read_all(one_file_job(tmp_path / "labels.root"))


def test_fractional_and_negative_labels_are_skipped_with_skip(tmp_path):
    data = labelled()
    data["is_signal"] = data["is_signal"].astype(np.float64)
    data["is_signal"][[3, 5]] = [0.5, -1.0]
    write_tree(tmp_path / "labels.root", data)
    with pytest.raises(DataError, match=r"label branch 'is_signal' has value 0.5 at entry 3"):
        read_all(one_file_job(tmp_path / "labels.root"))
    batch, skips = read_range(one_file_job(tmp_path / "labels.root", on_error="skip"))
    assert {reason: list(entries) for reason, entries in skips.by_reason.items()} == {
        "label branch 'is_signal' not in 0..1": [3, 5]
    }
    assert np.array_equal(batch["entry"], np.delete(np.arange(N), [3, 5]))
    assert set(batch["label"]) == {0, 1}


# ------------------------------------------------------------------ NaN/inf where the event is used


def test_nan_in_an_event_the_cut_removes_is_no_error_and_no_skip(tmp_path):
    data = labelled()
    removed = int(np.flatnonzero(data["x"] <= 0.5)[0])
    write_tree(tmp_path / "cut.root", with_nan(data, "tower_e", [removed]))
    out = read_all(one_file_job(tmp_path / "cut.root", cut="x > 0.5"))
    assert np.array_equal(np.sort(out["obs_evt"]), np.flatnonzero(data["x"] > 0.5))
    batch, skips = read_range(one_file_job(tmp_path / "cut.root", cut="x > 0.5", on_error="skip"))
    assert skips is None and len(batch["entry"]) == int((data["x"] > 0.5).sum())
    with pytest.raises(
        DataError,
        match=rf"cut.root: entries \[0, 300\): branch 'tower_e' has 1 NaN/inf values "
        rf"\(first at entry {removed}\)",
    ):
        read_all(one_file_job(tmp_path / "cut.root"))  # no cut: the event is used


def test_nan_outside_the_split_is_not_this_splits_error(tmp_path):
    job = one_file_job(tmp_path / "split.root")
    split = job.data.split
    val = np.flatnonzero(split_mask(split_of("split.root", np.arange(N), split.seed), "val", split.val, split.test))
    outside = int(np.setdiff1d(np.arange(N), val)[0])
    write_tree(tmp_path / "split.root", with_nan(labelled(), "tower_e", [outside]))
    assert np.array_equal(np.sort(read_all(job, "val")["obs_evt"]), val)
    with pytest.raises(DataError, match=rf"first at entry {outside}\)"):
        read_all(job, None)


def test_skip_drops_exactly_the_bad_event(tmp_path):
    data = labelled()
    write_tree(tmp_path / "one.root", with_nan(data, "tower_e", [57]))
    batch, skips = read_range(one_file_job(tmp_path / "one.root", on_error="skip"))
    assert np.array_equal(batch["entry"], np.delete(np.arange(N), 57))
    assert np.array_equal(batch["obs_evt"], np.delete(data["evt"], 57))
    assert len(batch["image"]) == N - 1
    assert {reason: list(entries) for reason, entries in skips.by_reason.items()} == {
        "branch 'tower_e' is NaN/inf": [57]
    }
    assert skips.events == 1 and len(skips.observers) == 0


def test_fail_names_branch_and_the_first_bad_entry(tmp_path):
    data = with_nan(with_nan(labelled(), "tower_e", [57, 250]), "cand_eta", [120])
    data["tower_phi"] = ak.where(ak.local_index(data["tower_phi"]) == 1, np.inf, data["tower_phi"])  # every event
    write_tree(tmp_path / "two.root", data)
    with pytest.raises(
        DataError,
        match=r"two.root: entries \[0, 300\): branch 'tower_phi' has \d+ NaN/inf values "
        r"\(first at entry (\d+)\)",
    ) as error:
        read_all(one_file_job(tmp_path / "two.root"))
    first = int(np.flatnonzero(ak.to_numpy(ak.num(data["tower_phi"])) > 1)[0])
    assert f"first at entry {first})" in str(error.value)
    data["tower_phi"] = towers(N, 0, seed=1)["tower_phi"]
    write_tree(tmp_path / "two.root", data)
    with pytest.raises(
        DataError,
        match=r"two.root: entries \[0, 300\): branch 'tower_e' has 2 NaN/inf values "
        r"\(first at entry 57\)$",
    ):
        read_all(one_file_job(tmp_path / "two.root"))
    batch, skips = read_range(one_file_job(tmp_path / "two.root", on_error="skip"))
    assert {reason: list(entries) for reason, entries in skips.by_reason.items()} == {
        "branch 'cand_eta' is NaN/inf": [120],
        "branch 'tower_e' is NaN/inf": [57, 250],
    }


def test_derived_values_are_checked_after_the_cut(tmp_path):
    """A target or scalar input that is NaN/inf (log(0) here) is an error only for the events used."""
    data = labelled()
    data["x"][[7, 8]] = 0.0
    write_tree(tmp_path / "derived.root", data)
    raw = etaphi_job([str(tmp_path / "derived.root")], target="log(x)", events_per_task=N)
    raw["task"] = {"kind": "regression"}
    raw["data"]["inputs"]["vars"] = {"kind": "scalars", "branches": ["e_sum", "1 / x"]}
    job = JobSpec.model_validate(raw)
    with pytest.raises(
        DataError,
        match=r"derived.root: entries \[0, 300\): target 'log\(x\)' is NaN/inf in 2 events "
        r"\(first at entry 7\)",
    ):
        read_all(job)
    batch, skips = read_range(JobSpec.model_validate({**raw, "data": {**raw["data"], "on_error": "skip"}}))
    assert {reason: list(entries) for reason, entries in skips.by_reason.items()} == {
        "target 'log(x)' is NaN/inf": [7, 8]
    }
    assert np.isfinite(batch["target"]).all() and np.isfinite(batch["vars"]).all() and len(batch["vars"]) == N - 2
    no_target = JobSpec.model_validate({**raw, "data": {**raw["data"], "target": "e_sum", "cut": "evt != 7"}})
    with pytest.raises(DataError, match=r"input 'vars': '1 / x' is NaN/inf in 1 event \(first at entry 8\)"):
        read_all(no_target)


def test_nan_observers_are_kept_and_flagged(tmp_path):
    data = labelled()
    write_tree(tmp_path / "obs.root", with_nan(data, "x", [9]))
    out = read_all(one_file_job(tmp_path / "obs.root"))
    assert len(out["obs_evt"]) == N and np.isnan(out["obs_x"]).sum() == 1
    batch, skips = read_range(one_file_job(tmp_path / "obs.root", on_error="skip"))
    assert skips.events == 0 and list(skips.observers) == [9] and len(batch["entry"]) == N
    # A branch read by an observer and by the cut is checked where the cut keeps the event.
    batch, skips = read_range(one_file_job(tmp_path / "obs.root", on_error="skip", cut="not (x < 0.5)"))
    assert list(skips.by_reason) == ["branch 'x' is NaN/inf"] and 9 not in batch["entry"]


# ------------------------------------------------------------------ through Ray: the ledger counts each event once


@pytest.mark.slow
def test_skipped_events_counted_once_across_splits_and_epochs(ray_session, tmp_path):
    from hepray.app.job_data import build_job_data

    sig = with_nan(with_nan(towers(N, 0, seed=1), "tower_e", [57, 58]), "x", [100])
    write_tree(tmp_path / "sig.root", sig)
    write_tree(tmp_path / "bkg.root", towers(N, 1000, seed=2))
    job = JobSpec.model_validate(
        etaphi_job(
            {"bkg": str(tmp_path / "bkg.root"), "sig": str(tmp_path / "sig.root")},
            on_error="skip",
            events_per_task=2 * N,
        )
    )
    data = build_job_data(job, splits=("train", "val", "test"))
    for _ in range(2):  # two epochs
        ids = np.concatenate(
            [
                batch["obs_evt"]
                for split in ("train", "val", "test")
                for batch in data.datasets[split].iter_batches(batch_format="numpy")
            ]
        )
        assert np.array_equal(np.sort(ids), np.delete(np.arange(N), [57, 58]).tolist() + list(range(1000, 1000 + N)))
    report = data.skip_report()
    assert report["events_skipped"] == 2 and report["ranges_skipped"] == 0 and report["observers_nonfinite"] == 1
    assert report["skipped"] == [
        f"{tmp_path}/sig.root: entries [0, {N}): 2 events skipped: branch 'tower_e' is NaN/inf (first at entry 57)"
    ]


# ------------------------------------------------------------------ unreadable data: ranges


def write_baskets(path, data: dict, basket: int) -> None:
    """A TTree with one basket per `basket` entries (compressed: a flipped byte breaks its basket)."""
    types = {name: (value.type if isinstance(value, ak.Array) else value.dtype) for name, value in data.items()}
    with uproot.recreate(path) as file:
        file.mktree("events", types)
        for start in range(0, N, basket):
            file["events"].extend({name: value[start : start + basket] for name, value in data.items()})


def corrupt_basket(path, branch: str, index: int) -> None:
    with uproot.open(path) as file:
        seek = int(file["events"][branch].member("fBasketSeek")[index])
    data = bytearray(path.read_bytes())
    data[seek + 200 : seek + 260] = bytes(b ^ 0x5A for b in data[seek + 200 : seek + 260])
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_corrupt_basket_is_a_bad_range(ray_session, tmp_path):
    write_baskets(tmp_path / "sig.root", towers(N, 0, seed=1, mean_towers=40), basket=100)
    write_tree(tmp_path / "bkg.root", towers(N, 1000, seed=2))
    corrupt_basket(tmp_path / "sig.root", "tower_e", 1)
    files = {"bkg": str(tmp_path / "bkg.root"), "sig": str(tmp_path / "sig.root")}
    fail = JobSpec.model_validate(etaphi_job(files, events_per_task=200))
    with pytest.raises(DataError, match=r"sig.root: entries \[100, 200\): reading \[.*'tower_e'.*\] failed \(\w+"):
        read_all(fail)
    from hepray.app.job_data import build_job_data

    data = build_job_data(
        fail.model_copy(update={"data": fail.data.model_copy(update={"on_error": "skip"})}),
        splits=("train", "val", "test"),
    )
    ids = np.concatenate(
        [
            batch["obs_evt"]
            for split in ("train", "val", "test")
            for batch in data.datasets[split].iter_batches(batch_format="numpy")
        ]
    )
    assert np.array_equal(np.sort(ids), list(range(100)) + list(range(200, N)) + list(range(1000, 1000 + N)))
    report = data.skip_report()
    assert report["events_skipped"] == 100 and report["ranges_skipped"] == 1
    assert re.match(r".*sig.root: entries \[100, 200\): reading .* failed", report["skipped"][0])


@pytest.mark.slow  # a `hepray run` process of its own, with its own Ray
def test_the_command_prints_a_corrupt_basket_as_one_error_line_without_worker_tracebacks(tmp_path):
    """The read task, split coordinator, training worker (twice: Ray Train retries it) and controller
    each log the failure to stderr; on the terminal there is only the command's `error:` line."""
    write_baskets(tmp_path / "sig.root", towers(N, 0, seed=1, mean_towers=40), basket=100)
    write_tree(tmp_path / "bkg.root", towers(N, 1000, seed=2))
    corrupt_basket(tmp_path / "sig.root", "tower_e", 1)
    raw = etaphi_job({"bkg": str(tmp_path / "bkg.root"), "sig": str(tmp_path / "sig.root")}, events_per_task=200)
    raw.update(train={"epochs": 1, "batch_size": 32}, scaling={"num_workers": 1})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    # A process of its own: in the test session's Ray, ensure_ray starts nothing.
    result = subprocess.run(
        [sys.executable, "-m", "hepray.cli", "run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(r"error: .*sig.root: entries \[100, 200\): reading .*'tower_e'", errors[0])
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "WorkerGroupError" not in output and "DataError" not in output


@pytest.mark.slow
def test_validate_read_lists_every_problem_before_a_run_meets_the_first(ray_session, tmp_path):
    from typer.testing import CliRunner

    from hepray.cli import app

    write_baskets(tmp_path / "sig.root", towers(N, 0, seed=1, mean_towers=40), basket=100)
    corrupt_basket(tmp_path / "sig.root", "tower_e", 1)
    write_tree(tmp_path / "bkg.root", with_nan(towers(N, 1000, seed=2), "tower_e", [57, 58]))
    raw = etaphi_job({"bkg": str(tmp_path / "bkg.root"), "sig": str(tmp_path / "sig.root")}, events_per_task=200)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))

    failed = CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml"), "--read"])
    assert failed.exit_code == 2, failed.output
    problems = [line for line in failed.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 2, failed.output
    assert any(re.search(r"sig.root: entries \[100, 200\): reading .*'tower_e'.* failed", line) for line in problems), (
        problems
    )
    assert any(
        re.search(r"bkg.root: entries \[0, 100\): 2 events skipped: .*'tower_e' is NaN", line) for line in problems
    ), problems
    # Every other event was read and encoded: the bad range's 100 and the 2 NaN events are missing.
    assert f"# read: {2 * N - 102} examples in" in failed.output and "2 problems (102 events" in failed.output
    assert failed.output.strip().splitlines()[-1].startswith("error: 2 problems in the data, listed above")

    clean = CliRunner().invoke(app, ["validate", str(tmp_path / "job.yaml"), "--read", "--set", "data.on_error=skip"])
    assert clean.exit_code == 0, clean.output
    assert len([line for line in clean.output.splitlines() if line.startswith("warning:")]) == 2, clean.output
    assert not any(line.startswith("error:") for line in clean.output.splitlines())


# ------------------------------------------------------------------ transient errors, and errors that are not data


class FlakyHandler(RangeHandler):
    """Answers 503 to the next `server.failures` byte-range requests that cover `server.poison`."""

    def send_head(self):
        server = self.server
        match = RANGE.fullmatch(self.headers.get("Range", "").strip())
        with server.lock:
            hit = (
                match is not None
                and server.failures > 0
                and int(match.group(1)) <= server.poison
                and (not match.group(2) or server.poison <= int(match.group(2)))
            )
            if hit:
                server.failures -= 1
                server.refused += 1
        if hit:
            self.send_error(503)
            return None
        return super().send_head()


@pytest.fixture
def flaky(tmp_path):
    write_tree(tmp_path / "sig.root", labelled())
    with uproot.open(tmp_path / "sig.root") as file:
        poison = int(file["events"]["tower_e"].member("fBasketSeek")[0]) + 50  # inside tower_e's basket
    server = FileServer(tmp_path)
    server.httpd.RequestHandlerClass = functools.partial(FlakyHandler, directory=str(tmp_path))
    server.httpd.lock, server.httpd.failures, server.httpd.refused, server.httpd.poison = threading.Lock(), 0, 0, poison
    with server:
        yield server


def test_transient_errors_are_retried(flaky, monkeypatch):
    """The server refuses the basket twice: the third attempt reads the range (uproot reports a failed
    range read as a TypeError, scikit-hep/uproot5#1450: it is recognised as the server's 503)."""
    url = f"{flaky.url}/sig.root"
    job = one_file_job(url)
    flaky.httpd.failures = 2
    batch, skips = read_range(job)
    assert flaky.httpd.refused == 2 and np.array_equal(batch["entry"], np.arange(N)) and skips is None
    monkeypatch.setattr(rootio, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    flaky.httpd.failures = 10
    with pytest.raises(
        DataError,
        match=rf"^{url}: entries \[0, 300\): reading \[.*\] failed \(ClientResponseError: 503.*"
        r"\) after 4 attempts$",
    ):
        read_range(job)
    assert flaky.httpd.refused == 2 + 4
    with pytest.raises(DataError, match=rf"^{flaky.url}/gone.root: entries \[0, 300\): no such file$"):
        rootio.read_arrays(f"{flaky.url}/gone.root", "events", ["x"], 0, N)  # a 404 is not retried


def test_retry_with_back_off_then_success(monkeypatch, tmp_path):
    """read_arrays itself: two OSErrors from a remote read, then the data; 0.5 s and 1 s apart."""
    write_tree(tmp_path / "a.root", labelled())
    real_open, calls, slept = uproot.open, [], []

    def flaky_open(path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= 2:
            raise OSError("connection reset by peer")
        return real_open(str(tmp_path / "a.root"))

    monkeypatch.setattr(rootio.uproot, "open", flaky_open)
    monkeypatch.setattr(rootio.time, "sleep", slept.append)
    arrays = rootio.read_arrays("https://example.org/a.root", "events", ["x"], 0, N)
    assert len(arrays["x"]) == N and len(calls) == 3 and slept == [0.5, 1.0]
    calls.clear()
    with pytest.raises(
        DataError, match=r"^/local/a.root: entries \[0, 300\): cannot be opened as a ROOT file \(OSError"
    ):
        rootio.read_arrays("/local/a.root", "events", ["x"], 0, N)  # local files are not retried
    assert len(calls) == 1


@pytest.mark.parametrize("error", [MemoryError(), TypeError("a bug"), AttributeError("a bug")])
def test_memory_errors_and_bugs_are_not_bad_data(tmp_path, monkeypatch, error):
    write_tree(tmp_path / "a.root", labelled())

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(rootio.Events, "arrays", broken)
    job = one_file_job(tmp_path / "a.root", on_error="skip")
    reader = EventReader(job.data, None, ledger="unused: a DataError would look the ledger up")
    with pytest.raises(type(error)) as raised:
        list(reader.read([EntryRange(str(tmp_path / "a.root"), None, 0, N)]))
    assert raised.value is error and not isinstance(raised.value, DataError)


def test_which_errors_are_transient():
    url, local = "https://eos.example/a.root", "/data/a.root"
    assert rootio.is_transient(url, OSError("reset")) and rootio.is_transient(url, TimeoutError())
    assert not rootio.is_transient(local, OSError("EIO")) and not rootio.is_transient("file:///a.root", OSError())
    assert not rootio.is_transient(url, FileNotFoundError()) and not rootio.is_transient(url, PermissionError())
    assert not rootio.is_transient(url, ValueError("bad"))
    from aiohttp import ClientResponseError, RequestInfo
    from yarl import URL

    info = RequestInfo(URL(url), "GET", {}, URL(url))
    assert rootio.is_transient(url, ClientResponseError(info, (), status=503))
    assert rootio.is_transient(url, ClientResponseError(info, (), status=429))
    assert not rootio.is_transient(url, ClientResponseError(info, (), status=403))
