"""Cluster operations against a real two-node Ray cluster started here on loopback (two `ray start`
processes, token authentication on, random free ports, its own temp dir) and torn down after:
cluster configs, `hepray submit/status/logs/stop`, Prometheus metrics, multi-node training, and
recovery from killed training and read-task workers."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from hepray.cluster import jobs
from hepray.spec import SpecError, load_job
from rootfiles import towers, write_tree

PROJECT = Path(__file__).resolve().parents[1]
JOB_FILE = PROJECT / "tests" / "cluster_job.yaml"
BIN = Path(sys.executable).parent
NODE_CPUS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _psutil():
    import psutil
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)

    return psutil


class LocalCluster:
    """A head and a worker node on this machine. Only processes started under this cluster's own
    temp dir (and their children) are ever signalled: other Ray instances on the machine are left alone."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="hr-", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.token = secrets.token_hex(16)
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        self.env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_metrics_report_interval_ms="1000",
            # Ray's memory monitor counts the whole machine's memory: here that includes the test
            # session's own Ray, whose use must not get this cluster's workers killed.
            RAY_memory_monitor_refresh_ms="0",
        )
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, *args: str) -> None:
        ports = {
            flag: str(free_port())
            for flag in (
                "--node-manager-port",
                "--object-manager-port",
                "--metrics-export-port",
                "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port",
                "--runtime-env-agent-port",
            )
        }
        started = subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                *args,
                "--node-ip-address",
                "127.0.0.1",
                "--temp-dir",
                self.temp_dir,
                "--num-cpus",
                str(NODE_CPUS),
                "--object-store-memory",
                str(256 * 2**20),
                "--disable-usage-stats",
                *[item for pair in ports.items() for item in pair],
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert started.returncode == 0, (
            f"ray start {' '.join(args)} failed:\n{started.stdout[-2000:]}\n{started.stderr[-3000:]}"
        )

    def start(self, attempts: int = 3) -> LocalCluster:
        """Ray gives a node 30 s to register: on a saturated machine, start again on fresh ports."""
        for attempt in range(attempts):
            try:
                self._start(
                    "--head",
                    "--port",
                    str(self.gcs_port),
                    "--dashboard-host",
                    "127.0.0.1",
                    "--dashboard-port",
                    str(self.dashboard_port),
                    "--ray-client-server-port",
                    str(free_port()),
                )
                self._start("--address", f"127.0.0.1:{self.gcs_port}")
                return self
            except AssertionError:
                self._kill_own_processes()
                if attempt == attempts - 1:
                    raise
                self.gcs_port, self.dashboard_port = free_port(), free_port()
                self.address = f"http://127.0.0.1:{self.dashboard_port}"

    def get(self, path: str) -> dict:
        response = requests.get(self.address + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        response.raise_for_status()
        return response.json()["data"]

    def nodes(self) -> list[dict]:
        """Ray's node table as the dashboard serves it (node id, metrics export port ...)."""
        return [node["raylet"] for node in self.get("/nodes?view=summary")["summary"]]

    def own_processes(self):
        """Ray's processes started for this cluster: their command lines name its temp dir."""
        psutil = _psutil()
        return [
            process
            for process in psutil.process_iter(["cmdline"])
            if any(self.temp_dir in part for part in process.info["cmdline"] or [])
        ]

    def workers(self, title_prefix: str):
        """Live worker processes of this cluster whose Ray process title starts with the prefix."""
        found = []
        for root in self.own_processes():
            for child in root.children(recursive=True):
                try:
                    if " ".join(child.cmdline()).startswith(title_prefix):
                        found.append(child)
                except _psutil().Error:  # exited while we looked
                    continue
        return found

    def stop(self) -> None:
        self._kill_own_processes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _kill_own_processes(self) -> None:
        psutil = _psutil()
        roots = self.own_processes()
        family = roots + [child for root in roots for child in root.children(recursive=True)]
        for process in family:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=15)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster()
    try:
        yield local.start()
    finally:
        local.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_data")
    write_tree(root / "narrow.root", towers(600, 0, seed=1, energy=4.0, spread=0.02))
    write_tree(root / "wide.root", towers(600, 1000, seed=2, energy=2.0, spread=0.12))
    return {"narrow": str(root / "narrow.root"), "wide": str(root / "wide.root")}


@pytest.fixture
def token(cluster, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    return cluster.token


def file_overrides(files) -> list[str]:
    return [f"data.files.{label}={path}" for label, path in files.items()]


def hepray(cluster, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_TOKEN": cluster.token}
    return subprocess.run(
        [str(BIN / "hepray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT
    )


def scrape(port: int) -> dict[str, float]:
    """hepray's series on one node's Prometheus endpoint, summed over labels."""
    totals: dict[str, float] = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text.splitlines():
        if line.startswith("ray_hepray_"):
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def train_events(files, job) -> list[tuple[int, int]]:
    """(label, entry) of the training split, from the split rule itself: each file holds one label."""
    from hepray.data.root_source import split_mask, split_of

    split, events = job.data.split, []
    for label, path in enumerate(files.values()):
        entries = np.arange(600)
        keep = split_mask(split_of(path, entries, split.seed), "train", split.val, split.test)
        events += [(label, int(entry)) for entry in entries[keep]]
    return sorted(events)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------ configs (no cluster needed)


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((PROJECT / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # Ray's ray-schema.json, plus its head/worker-type checks
    types = raw["available_node_types"]
    assert raw["head_node_type"] == "head" and {"cpu_worker", "gpu_worker"} <= set(types)
    assert all(types[name]["max_workers"] >= types[name]["min_workers"] for name in ("cpu_worker", "gpu_worker"))
    assert raw["file_mounts"]["~/hepray"] == "."
    assert any("pip install -q -e ~/hepray" in c for c in raw["setup_commands"])
    assert any("pip install -q -e ~/hepray" in c for c in types["gpu_worker"]["worker_setup_commands"])
    assert not any("whl/cpu" in c for c in types["gpu_worker"]["worker_setup_commands"])  # the CUDA build there
    start = " ".join(raw["head_start_ray_commands"] + raw["worker_start_ray_commands"])
    assert "0.0.0.0" not in start and "--dashboard-host=127.0.0.1" in start and start.count("RAY_AUTH_MODE=token") == 2

    from jsonschema import ValidationError

    with pytest.raises(ValidationError, match="setup_comands"):
        validate_config(prepare_config({**raw, "setup_comands": []}))


def test_kuberay_manifests_and_grafana_dashboard():
    from hepray import monitoring as metrics

    (cluster,) = yaml.safe_load_all((PROJECT / "deploy/kuberay/raycluster.yaml").read_text())
    (job,) = yaml.safe_load_all((PROJECT / "deploy/kuberay/rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    assert {group["groupName"] for group in cluster["spec"]["workerGroupSpecs"]} == {"cpu", "gpu"}
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert job["spec"]["entrypoint"].split("&& ")[1].startswith("hepray run jobs/")

    # Every series the dashboard plots is one hepray exports (Ray adds `ray_`; counters get `_total`).
    exported = {
        f"ray_{m._name}" + ("_total" if type(m).__name__ == "Counter" else "")
        for m in [*metrics._read_metrics().values(), *metrics._train_metrics().values()]
    }
    dashboard = json.loads((PROJECT / "deploy/grafana/hepray.json").read_text())
    plotted = {
        word
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for word in target["expr"].replace("(", " ").replace(")", " ").replace("[", " ").split()
        if word.startswith("ray_hepray")
    }
    assert plotted == exported


# ------------------------------------------------------------------ jobs API on a real cluster


@pytest.mark.slow  # starts a two-node cluster
def test_submission_needs_the_token_and_a_valid_job_inside_the_project(cluster, files, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token to fall back on
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with pytest.raises(jobs.ClusterError, match="no token found"):
        jobs.list_jobs(cluster.address)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(jobs.ClusterError, match="(?i)forbidden|authentication"):
        jobs.list_jobs(cluster.address)

    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    assert isinstance(jobs.list_jobs(cluster.address), list)
    with pytest.raises(SpecError, match="train.epochs"):  # checked here, before anything is uploaded
        jobs.submit(JOB_FILE, cluster.address, [*file_overrides(files), "train.epochs=0"])
    outside = tmp_path / "job.yaml"
    shutil.copy(JOB_FILE, outside)
    with pytest.raises(jobs.ClusterError, match="outside the project"):
        jobs.submit(outside, cluster.address, file_overrides(files))


@pytest.fixture(scope="module")
def multinode_run(cluster, files, tmp_path_factory):
    """`hepray submit` of the tiny job (2 training workers, one per node); `hepray logs --follow`
    until it ends, scraping every node's metrics endpoint meanwhile."""
    out = tmp_path_factory.mktemp("multinode") / "run"
    submitted = hepray(
        cluster,
        "submit",
        str(JOB_FILE.relative_to(PROJECT)),
        "--address",
        cluster.address,
        "--out",
        str(out),
        *[arg for o in file_overrides(files) for arg in ("--set", o)],
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    env = {**os.environ, "RAY_AUTH_TOKEN": cluster.token}
    follower = subprocess.Popen(
        [str(BIN / "hepray"), "logs", job_id, "--follow", "--address", cluster.address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ports = {node["nodeId"]: node["metricsExportPort"] for node in cluster.nodes()}
    seen: dict[str, dict[str, float]] = {node: {} for node in ports}

    def job_ended() -> bool:
        for node, port in ports.items():
            seen[node].update(scrape(port))
        return follower.poll() is not None

    try:
        wait_for(job_ended, 1800, "the job and `hepray logs --follow` to end")
    finally:
        if follower.poll() is None:
            follower.kill()
    log, errors = follower.communicate()

    def every_node_reported_training():  # series stay exported after the workers exit; the last report may lag
        for node, port in ports.items():
            seen[node].update(scrape(port))
        return all("ray_hepray_train_samples_total" in series for series in seen.values())

    wait_for(every_node_reported_training, 60, "hepray metrics on every node")
    return {"id": job_id, "out": out, "returncode": follower.returncode, "log": log + errors, "metrics": seen}


@pytest.mark.slow  # starts a two-node cluster
def test_submit_status_logs(cluster, multinode_run):
    assert multinode_run["returncode"] == 0, multinode_run["log"][-3000:]
    assert f"{multinode_run['id']} SUCCEEDED" in multinode_run["log"]
    assert "wrote" in multinode_run["log"] and "metrics.json" in multinode_run["log"]
    # Ray Data's INFO lines (each dataset's plan, start, end and, without a terminal, its progress)
    # stay in its log file, and Ray Train's use of a deprecated Ray Data option is not reported.
    assert "Running Dataset" not in multinode_run["log"] and "streaming_executor" not in multinode_run["log"]
    assert "exclude_resources" not in multinode_run["log"]

    shown = hepray(cluster, "status", multinode_run["id"], "--address", cluster.address)
    assert shown.stdout.startswith(f"{multinode_run['id']} SUCCEEDED"), shown.stderr
    assert "hepray run tests/cluster_job.yaml" in shown.stdout
    listed = hepray(cluster, "status", "--address", cluster.address).stdout
    assert multinode_run["id"] in listed
    assert '"test_auc"' in hepray(cluster, "logs", multinode_run["id"], "--address", cluster.address).stdout
    metrics = json.loads((multinode_run["out"] / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["events_read"] == 1200


@pytest.mark.slow  # starts a two-node cluster
def test_metrics_exported_and_both_nodes_did_work(cluster, files, multinode_run):
    """Each node exports its own series: read tasks and a training worker ran on both."""
    per_node = multinode_run["metrics"]
    assert len(per_node) == 2
    for series in per_node.values():
        assert series["ray_hepray_events_read_total"] > 0
        assert series["ray_hepray_read_seconds_total"] > 0
        assert series["ray_hepray_train_samples_total"] > 0
        assert series["ray_hepray_train_steps_total"] > 0
        assert "ray_hepray_train_step_seconds" in series and "ray_hepray_train_loss" in series
    # Several whole passes over the 1200 events (train and val each epoch, test, baselines), never
    # more training samples than two epochs hold. Not exact counts: a worker's last increments are
    # lost when it exits before Ray's next metrics report.
    assert sum(series["ray_hepray_events_read_total"] for series in per_node.values()) >= 3 * 1200
    samples = sum(series["ray_hepray_train_samples_total"] for series in per_node.values())
    assert 0 < samples <= 2 * len(train_events(files, load_job(JOB_FILE, file_overrides(files))))

    workers = cluster.get(
        "/api/v0/actors?detail=1&limit=1000&filter_keys=class_name&filter_predicates=%3D&filter_values=RayTrainWorker"
    )["result"]["result"]
    assert {worker["node_id"] for worker in workers} == set(per_node)


@pytest.mark.slow  # starts a two-node cluster
def test_multinode_matches_single_node(ray_session, files, multinode_run, tmp_path):
    from hepray.app.run import run_job

    job = load_job(JOB_FILE, [*file_overrides(files), "scaling.cpus_per_worker=0.5"])  # the same job on one node
    single = run_job(job, tmp_path)
    multi = json.loads((multinode_run["out"] / "metrics.json").read_text())
    assert multi["events_read"] == single["events_read"] and multi["test_events"] == single["test_events"]
    assert single["test_auc"] > 0.8 and multi["test_auc"] > 0.8
    assert multi["test_auc"] == pytest.approx(single["test_auc"], abs=0.05)
    assert multi["val_loss"] == pytest.approx(single["val_loss"], rel=0.25)


@pytest.mark.slow  # starts a two-node cluster
def test_stop_a_running_job(cluster, files, token):
    job_id = jobs.submit(JOB_FILE, cluster.address, [*file_overrides(files), "train.epochs=1000"])
    wait_for(lambda: jobs.status(job_id, cluster.address)["status"] == "RUNNING", 300, "the job to run")
    stopped = hepray(cluster, "stop", job_id, "--address", cluster.address)
    assert stopped.stdout.strip() == f"{job_id} STOPPED", stopped.stderr
    assert jobs.status(job_id, cluster.address)["status"] == "STOPPED"


# ------------------------------------------------------------------ fault tolerance


@pytest.mark.slow  # starts a two-node cluster
def test_training_resumes_from_checkpoint_after_a_worker_is_killed(cluster, files, token, tmp_path):
    out = tmp_path / "run"
    job_id = jobs.submit(
        JOB_FILE, cluster.address, [*file_overrides(files), "train.epochs=3", "scaling.num_workers=1"], out=str(out)
    )
    snapshot = out / "checkpoints" / "checkpoint_manager_snapshot.json"

    def first_checkpoint_registered():
        assert jobs.status(job_id, cluster.address)["status"] not in jobs.TERMINAL, jobs.logs(job_id, cluster.address)
        return snapshot.exists() and json.loads(snapshot.read_text())["checkpoint_results"]

    wait_for(first_checkpoint_registered, 600, "the first checkpoint")
    victims = cluster.workers("ray::RayTrainWorker")
    assert len(victims) == 1
    victims[0].kill()

    assert jobs.wait(job_id, cluster.address, timeout=900) == "SUCCEEDED", jobs.logs(job_id, cluster.address)[-3000:]
    log = jobs.logs(job_id, cluster.address)
    assert "hepray: resumed from the checkpoint of epoch" in log
    history = json.loads((out / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1, 2]


READ_DRIVER = """
import json, os, sys, threading, time
import ray
import psutil  # Ray's bundled copy, on sys.path once ray is imported
from hepray.app.job_data import build_job_data
from hepray.spec import JobSpec

job, temp_dir = JobSpec.model_validate_json(sys.argv[1]), os.environ["TEST_RAY_TEMP_DIR"]
ray.init(logging_level="ERROR")
dataset = build_job_data(job, splits=("train",)).datasets["train"]
# This cluster's own Ray processes (raylets, agents ...): read tasks run in their child workers.
roots = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in part for part in p.info["cmdline"] or [])]
killed = []

def kill_a_running_read_task():
    while not killed:
        for root in roots:
            for child in root.children(recursive=True):
                try:
                    title = " ".join(child.cmdline())
                    if title.startswith("ray::Read"):
                        child.kill()
                        killed.append(title)
                        return
                except psutil.Error:
                    pass
        time.sleep(0.005)

threading.Thread(target=kill_a_running_read_task, daemon=True).start()
for epoch in range(1, 4):  # until an epoch had one of its read tasks killed
    rows = [(int(label), int(entry)) for batch in dataset.iter_batches(batch_size=None, batch_format="numpy")
            for label, entry in zip(batch["label"], batch["entry"])]
    if killed:
        break
print(json.dumps({"killed": killed, "epochs": epoch, "rows": rows}))
"""


@pytest.mark.slow  # starts a two-node cluster
def test_killed_read_task_is_retried_without_losing_or_repeating_events(cluster, files):
    """A worker running a read task is SIGKILLed mid-epoch: Ray Data retries the task and the epoch
    delivers every (file, entry) of the split exactly once."""
    job = load_job(JOB_FILE, [*file_overrides(files), "data.events_per_task=100"])
    env = {**cluster.env, "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs_port}", "TEST_RAY_TEMP_DIR": cluster.temp_dir}
    driver = subprocess.run(
        [sys.executable, "-c", READ_DRIVER, job.model_dump_json(by_alias=True)],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    result = json.loads(driver.stdout.strip().splitlines()[-1])
    assert result["killed"], "no read task was caught running in 3 epochs"

    rows = [tuple(row) for row in result["rows"]]
    assert len(rows) == len(set(rows))  # no event twice
    assert sorted(rows) == train_events(files, job)  # and none missing
