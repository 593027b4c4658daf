"""Files at URLs: file:// and a loopback HTTP server (globs by directory listing, byte ranges),
planning from metadata only, a job's datasets through Ray Data, and errors that name the URL."""

from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest
from ray.data.block import BlockAccessor

from hepray.app.job_data import build_job_data
from hepray.data.root_source import DataError, EventReader, plan_reads
from hepray.data.rootio import expand_glob
from hepray.spec import JobSpec
from httpserver import FileServer
from rootfiles import etaphi_job, towers, write_tree


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Signal 600 + 500 events, background 700; ids unique. Towers make the event data ~50x the metadata."""
    root = tmp_path_factory.mktemp("remote")
    write_tree(root / "sig_0.root", towers(600, 0, seed=1, mean_towers=40))
    write_tree(root / "sig_1.root", towers(500, 1000, seed=2, mean_towers=40))
    write_tree(root / "bkg_0.root", towers(700, 5000, seed=3, mean_towers=40))
    return root


@pytest.fixture(scope="module")
def server(files):
    with FileServer(files) as running:
        yield running


def job_at(base: str, **data) -> JobSpec:
    return JobSpec.model_validate(etaphi_job({"sig": f"{base}/sig_*.root", "bkg": f"{base}/bkg_*.root"}, **data))


def read_ids(job: JobSpec) -> np.ndarray:
    """Every event id of the job's plan, read in-process as the read tasks do."""
    reader = EventReader(job.data, None)
    plan = plan_reads(job.data, reader.branches())
    return np.sort(
        np.concatenate(
            [BlockAccessor.for_block(block).to_numpy()["obs_evt"] for task in plan.tasks for block in reader.read(task)]
        )
    )


ALL_IDS = np.concatenate([np.arange(600), np.arange(1000, 1500), np.arange(5000, 5700)])


def test_file_urls_glob_and_read_like_local_paths(files):
    assert expand_glob(f"file://{files}/sig_*.root") == [f"file://{files}/sig_0.root", f"file://{files}/sig_1.root"]
    assert np.array_equal(read_ids(job_at(f"file://{files}", events_per_task=300)), ALL_IDS)


def test_http_glob_and_planning_read_metadata_only(server, files):
    assert expand_glob(f"{server.url}/sig_*.root") == [f"{server.url}/sig_0.root", f"{server.url}/sig_1.root"]
    assert expand_glob(f"{server.url}/bkg_0.root?version=1") == [
        f"{server.url}/bkg_0.root?version=1"
    ]  # a query, not a glob
    job = job_at(server.url, events_per_task=400)
    before = server.bytes_sent
    plan = plan_reads(job.data, EventReader(job.data, None).branches())
    planning_bytes = server.bytes_sent - before
    file_bytes = sum(path.stat().st_size for path in files.glob("*.root"))
    assert plan.events == 1800 and plan.files == 3
    assert planning_bytes < 0.1 * file_bytes, (planning_bytes, file_bytes)  # headers and TTree metadata, no baskets


def test_job_datasets_over_http_through_ray_data(ray_session, server):
    """The job's train/val/test datasets, read by Ray tasks from the loopback server: every event once."""
    data = build_job_data(job_at(server.url, events_per_task=500), splits=("train", "val", "test"))
    ids = [
        batch["obs_evt"]
        for split in ("train", "val", "test")
        for batch in data.datasets[split].iter_batches(batch_size=256, batch_format="numpy")
    ]
    assert np.array_equal(np.sort(np.concatenate(ids)), ALL_IDS)
    assert data.plan.tasks[0][0].path.startswith(server.url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_files_job(sig: str, bkg: str) -> JobSpec:
    return JobSpec.model_validate(etaphi_job({"sig": sig, "bkg": bkg}))


def test_missing_files_and_unreachable_servers_are_named(server):
    with pytest.raises(DataError, match=rf"^{server.url}/nothere.root: no such file$"):
        read_ids(two_files_job(f"{server.url}/nothere.root", f"{server.url}/bkg_0.root"))
    with pytest.raises(DataError, match=rf"^{server.url}/empty_\*.root: no such file \(no file matches the glob\)$"):
        expand_glob(f"{server.url}/empty_*.root")
    gone = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DataError, match=rf"^{gone}/sig_0.root: cannot reach the server \(\w+"):
        read_ids(two_files_job(f"{gone}/sig_0.root", f"{gone}/bkg_0.root"))
    with pytest.raises(DataError, match=rf"^{gone}/sig_\*.root: cannot reach the server"):
        expand_glob(f"{gone}/sig_*.root")


@pytest.mark.skipif(
    importlib.util.find_spec("fsspec_xrootd") is not None, reason="fsspec-xrootd gives root:// a filesystem"
)
def test_root_urls_need_the_xrootd_extra():
    with pytest.raises(
        DataError, match=r'root://eos.example//data/a.root: no filesystem for this URL .*pip install "hepray\[xrootd\]"'
    ):
        read_ids(two_files_job("root://eos.example//data/a.root", "root://eos.example//data/b.root"))
