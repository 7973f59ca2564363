"""Comparing experiments: `dvc exp run` against a real `mlflow server` read back over its REST
API, the model registry, and the queue (`dvc exp run --queue`, `dvc queue start`)."""

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sarcoma_seg.stack import free_port
from tests.conftest import committed_project, run, tiny_params

pytestmark = pytest.mark.slow
MODEL = "sarcoma-seg"


def wait_for(url: str, seconds: float, proc: subprocess.Popen, log: Path) -> None:
    """Poll url until it answers 200, failing early if the process died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s:\n{log.read_text()[-3000:]}")


@contextmanager
def serving(cmd: list[str], health: str, log: Path, env: dict | None = None) -> Iterator[None]:
    """Start a server in its own process group, wait until healthy, stop it afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        wait_for(health, 120, proc, log)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def mlflow_server(store: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a free port and its own SQLite + artifact store."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    with serving(cmd, f"{url}/health", store / "server.log"):
        yield url


def rest(url: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call to the MLflow REST API (GET with query, or POST with a JSON body)."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def project(tmp_path: Path) -> Path:
    """A committed git + DVC copy of the project with tiny params."""
    repo = committed_project(tmp_path / "repo", tiny_params())
    return repo


def test_two_experiments_against_an_mlflow_server(tmp_path: Path) -> None:
    repo = project(tmp_path)
    with mlflow_server(tmp_path / "server") as url:
        env = {"MLFLOW_TRACKING_URI": url}
        run(["dvc", "exp", "run", "-n", "lr-high", "-S", "train.learning_rate=0.002"], repo, env)
        run(["dvc", "exp", "run", "-n", "lr-low", "-S", "train.learning_rate=0.0005"], repo, env)
        experiment = rest(url, "experiments/get-by-name", experiment_name="sarcoma-seg")
        found = rest(
            url, "runs/search", {"experiment_ids": [experiment["experiment"]["experiment_id"]]}
        )["runs"]
        versions = rest(url, "model-versions/search", filter=f"name='{MODEL}'")
    by_exp = {}
    for found_run in found:
        tags = {t["key"]: t["value"] for t in found_run["data"]["tags"]}
        params = {p["key"]: p["value"] for p in found_run["data"]["params"]}
        metrics = {m["key"] for m in found_run["data"]["metrics"]}
        by_exp[tags["dvc.experiment"]] = (found_run, tags, params, metrics)
    assert set(by_exp) == {"lr-high", "lr-low"}
    assert by_exp["lr-high"][2]["train.learning_rate"] == "0.002"
    assert by_exp["lr-low"][2]["train.learning_rate"] == "0.0005"
    for name, (found_run, tags, _params, metrics) in by_exp.items():
        assert found_run["info"]["run_name"] == f"{name}-synthetic-resnet18"
        assert len(tags["git.commit"]) == 40 and len(tags["dvc.lock.sha256"]) == 64
        assert tags["data.source"] == "synthetic" and len(tags["data.digest"]) == 64
        assert {"test_dice_3d_mean", "test_hd95_mm_mean", "best_val_dice", "val_dice"} <= metrics
        assert any(m.startswith("system/cpu_utilization") for m in metrics)
    # the same params and metric keys in every run, so the compare view lines them up
    assert set(by_exp["lr-high"][2]) == set(by_exp["lr-low"][2])
    assert by_exp["lr-high"][3] == by_exp["lr-low"][3]
    registered = versions["model_versions"]
    assert sorted(int(v["version"]) for v in registered) == [1, 2]
    assert {v["run_id"] for v in registered} == {r[0]["info"]["run_id"] for r in by_exp.values()}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).splitlines()[0])
    names = {e.get("name") for rev in shown for e in rev.get("experiments") or []}
    assert {"lr-high", "lr-low"} <= names


def test_queue_sweep_then_show_and_plots_diff(tmp_path: Path) -> None:
    repo = project(tmp_path)
    run(["dvc", "exp", "run", "--queue", "-S", "train.epochs=1,2"], repo)
    queued = run(["dvc", "queue", "status"], repo)
    assert queued.count("Queued") == 2, queued
    run(["dvc", "queue", "start", "-j", "2"], repo)  # two workers, one SQLite store
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    # both workers logged complete runs into the root's default sqlite:///mlflow.db
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sarcoma-seg").experiment_id
    found = client.search_runs([experiment])
    assert sorted(r.info.status for r in found) == ["FINISHED", "FINISHED"]
    assert sorted(len(client.get_metric_history(r.info.run_id, "loss")) for r in found) == [1, 2]
    assert all("test_dice_3d_mean" in r.data.metrics for r in found)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).splitlines()[0])
    experiments = [e for rev in shown for e in rev.get("experiments") or []]
    assert len(experiments) == 2
    names = [e["name"] for e in experiments]
    out = run(["dvc", "plots", "diff", *names, "--json"], repo)
    plotted = json.loads(out)["data"]
    assert "plots/history.csv" in plotted and "loss" in plotted
    # the loss plot overlays both experiments' curves
    loss = plotted["loss"][0]
    assert set(loss["revisions"]) == set(names)
    assert {row["rev"] for row in loss["content"]["data"]["values"]} == set(names)
