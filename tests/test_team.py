"""Working as a team, against real servers on 127.0.0.1: the DVC remote on S3 (moto), the MLflow
server with logins on PostgreSQL with artifacts in the bucket, and no secret anywhere.

One stack (`python -m sarcoma_seg.stack up`) and one tiny `dvc exp run` serve every check."""

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import requests

from sarcoma_seg.stack import BUCKET, Stack, alive, load_state, port_open
from tests.conftest import committed_project, ran, run, tiny_params

pytestmark = pytest.mark.slow

# a secret every process of the run has in its env (made here: this file is in the project too)
CANARY = "canary-" + secrets.token_hex(12)
REMOTE = "team"


@dataclass
class Team:
    """The running stack and the project that ran once against it."""

    stack: Stack
    repo: Path
    env: dict[str, str]  # what a team member's shell holds, plus the canary
    logs: Path  # everything the pipeline printed


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack started and stopped by its command; afterwards nothing listens or runs."""
    state = tmp_path_factory.mktemp("stack") / "state"
    command = [sys.executable, "-m", "sarcoma_seg.stack"]
    printed = run([*command, "up", "--dir", str(state)], Path.cwd())
    started = load_state(state)
    assert not any(secret in printed for secret in started.secrets())
    try:
        yield started
    finally:
        run([*command, "down", "--dir", str(state)], Path.cwd())
        ports = (started.pg_port, started.s3_port, started.mlflow_port)
        assert not any(port_open(port) for port in ports), "a server still listens"
        assert not any(alive(pid) for pid in started.pids.values()), "a server still runs"
        assert not state.exists() and not Path(started.pg_dir).exists()


def bucket_keys(stack: Stack, prefix: str) -> list[str]:
    """Every object key under prefix in the team bucket."""
    pages = (
        stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def point_at_remote(repo: Path, stack: Stack) -> None:
    """What a colleague does once per clone: the endpoint into .dvc/config.local."""
    run(["dvc", "remote", "modify", "--local", REMOTE, "endpointurl", stack.s3_endpoint], repo)


@pytest.fixture(scope="module")
def team(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Team:
    """The tiny pipeline run once as a `dvc exp run` logging to the server, committed, pushed."""
    base = tmp_path_factory.mktemp("team")
    repo = committed_project(base / "repo", tiny_params())
    env = stack.client_env() | {"KAGGLE_KEY": CANARY, "SARCOMA_CANARY": CANARY}
    point_at_remote(repo, stack)
    logs = base / "logs"
    logs.mkdir()
    output = run(["dvc", "exp", "run", "-n", "tiny"], repo, env)
    (logs / "exp_run.log").write_text(output)
    assert ran(output)[-1] == "evaluate"
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny run"], repo)
    (logs / "push.log").write_text(run(["dvc", "push"], repo, env))
    return Team(stack, repo, env, logs)


@pytest.fixture(scope="module")
def clone(team: Team, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A colleague's fresh clone with an empty cache, after `dvc pull`."""
    where = tmp_path_factory.mktemp("colleague") / "clone"
    run(["git", "clone", "-q", str(team.repo), str(where)], team.repo.parent)
    assert not (where / ".dvc" / "cache").exists() and not (where / "data" / "model").exists()
    point_at_remote(where, team.stack)
    (team.logs / "pull.log").write_text(run(["dvc", "pull"], where, team.env))
    return where


def test_fresh_clone_pulls_everything_and_reproduces_nothing(team: Team, clone: Path) -> None:
    assert "up to date" in run(["dvc", "status"], clone, team.env)
    output = run(["dvc", "repro"], clone, team.env)
    (team.logs / "repro.log").write_text(output)
    assert ran(output) == []
    assert bucket_keys(team.stack, "dvc/files/md5/")  # DVC 3's layout on the remote
    model = clone / "data" / "model" / "model.h5"
    assert model.read_bytes() == (team.repo / "data" / "model" / "model.h5").read_bytes()


def run_predict(model: str, clone: Path, out: Path, env: dict[str, str]) -> np.ndarray:
    """predict one test patient of the clone's pulled raw data with `model`; its mask."""
    import h5py

    patient = json.loads((clone / "data" / "split.json").read_text())["test"][0]
    source = clone / "data" / "raw" / "source" / "lab_petct_vox_5.00mm.h5"
    argv = [str(source), "--patient", patient, "--model", model, "--out", str(out)]
    predict = [sys.executable, "-m", "sarcoma_seg.predict", *argv, "--no-progress"]
    printed = run(predict, clone, env).splitlines()
    summary = json.loads(next(line for line in printed if line.startswith("{")))
    assert summary["model"] == model
    with h5py.File(out / "mask.h5") as f:
        return f[f"label_data/{patient}"][()]


def test_exp_run_is_on_the_server_with_artifacts_in_the_bucket(team: Team) -> None:
    from mlflow import MlflowClient

    with mock.patch.dict(os.environ, team.env):  # the client reads the login from there
        client = MlflowClient(team.stack.tracking_uri)
        experiment = client.get_experiment_by_name("sarcoma-seg")
        (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.tags["dvc.experiment"] == "tiny"
    assert found.data.params["train.epochs"] == "2" and found.data.params["base.image_size"] == "32"
    assert {"loss", "best_epochs_run"} <= set(found.data.metrics)
    assert any(k.startswith("test_") for k in found.data.metrics)  # evaluate logged into it
    keys = bucket_keys(team.stack, "mlflow/")
    for name in ("MLmodel", "model.h5", "loss.png", "manifest.json", "per_patient.csv"):
        assert any(k.endswith(name) for k in keys), f"{name} not in the bucket: {keys}"


def test_registered_version_loads_through_the_server(team: Team, clone: Path) -> None:
    with ThreadPoolExecutor(2) as pool:  # two processes at once: each spends seconds on imports
        pulled, registered = pool.map(
            lambda model, out: run_predict(model, clone, clone / "predictions" / out, team.env),
            ("data/model", "models:/sarcoma-seg/1"),
            ("pulled", "registered"),
        )
    np.testing.assert_array_equal(pulled, registered)  # the pushed model is the registered one


def test_logins_are_required_and_editing_needs_a_grant(team: Team) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    api = f"{team.stack.tracking_uri}/api/2.0/mlflow"
    search = {"max_results": 10}
    assert requests.post(f"{api}/experiments/search", json=search, timeout=30).status_code == 401
    admin = ("admin", team.stack.admin_password)
    wrong = ("admin", team.stack.admin_password + "x")
    assert requests.post(f"{api}/experiments/search", json=search, auth=wrong).status_code == 401
    experiment = requests.get(
        f"{api}/experiments/get-by-name", params={"experiment_name": "sarcoma-seg"}, auth=admin
    ).json()["experiment"]["experiment_id"]
    colleague = ("colleague", "colleague-" + os.urandom(8).hex())
    with mock.patch.dict(os.environ, team.env):
        AuthServiceClient(team.stack.tracking_uri).create_user(*colleague)
        tag = {"experiment_id": experiment, "key": "reviewed", "value": "yes"}
        readable = requests.get(f"{api}/experiments/get", params={"experiment_id": experiment},
                                auth=colleague)  # fmt: skip
        assert readable.status_code == 200  # default_permission READ: colleagues see runs
        denied = requests.post(f"{api}/experiments/set-experiment-tag", json=tag, auth=colleague)
        assert denied.status_code == 403
        AuthServiceClient(team.stack.tracking_uri).grant_user_permission(
            colleague[0], "experiment", experiment, "EDIT"
        )
    granted = requests.post(f"{api}/experiments/set-experiment-tag", json=tag, auth=colleague)
    assert granted.status_code == 200, granted.text


CONCURRENT = """
import sys
import time
import mlflow
from mlflow.entities import Metric
from sarcoma_seg import tracking
tracking.use_experiment("concurrent")  # both create it at once: one of them finds it taken
steps, per_request = int(sys.argv[2]), 10
with mlflow.start_run(run_name=sys.argv[1]) as run:
    client, now = mlflow.MlflowClient(), int(time.time() * 1000)
    for first in range(0, steps, per_request):
        metrics = [Metric(key, sign * step, now, step) for step in range(first, first + per_request)
                   for key, sign in (("a", 1.0), ("b", 2.0), ("c", -1.0))]
        client.log_batch(run.info.run_id, metrics=metrics)
print(run.info.run_id)
"""
STEPS = 200  # per run: 3 metrics x 200 steps in 20 requests, both runs at the same moment


def test_two_runs_logging_at_once_both_complete(team: Team) -> None:
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | team.env
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT, name, str(STEPS)], env=env,
                         cwd=team.repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("first", "second")
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    with mock.patch.dict(os.environ, team.env):
        client = MlflowClient(team.stack.tracking_uri)
        for out, _ in outputs:
            run_id = out.split()[-1]
            assert client.get_run(run_id).info.status == "FINISHED"
            for key in ("a", "b", "c"):
                history = client.get_metric_history(run_id, key)
                assert sorted(m.step for m in history) == list(range(STEPS))


def leaks(blob: bytes, hidden: list[str]) -> bool:
    """Whether any of the hidden values appears in blob."""
    return any(secret.encode() in blob for secret in hidden)


def test_no_secret_reaches_files_mlflow_or_the_bucket(team: Team, clone: Path) -> None:
    from mlflow import MlflowClient

    hidden = [CANARY, *team.stack.secrets()]
    for tree in (team.repo, clone, team.logs):
        for path in tree.rglob("*"):
            if path.is_file() and ".dvc/config.local" not in path.as_posix():
                assert not leaks(path.read_bytes(), hidden), f"a secret in {path}"
    with mock.patch.dict(os.environ, team.env):
        client = MlflowClient(team.stack.tracking_uri)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], max_results=100
        )
    assert runs
    for found in runs:
        text = json.dumps([found.data.params, found.data.tags, found.info.run_name])
        assert not leaks(text.encode(), hidden), f"a secret in run {found.info.run_id}"
    s3 = team.stack.s3_client()
    keys = bucket_keys(team.stack, "")
    assert keys
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert not leaks(body, hidden), f"a secret in s3://{BUCKET}/{key}"


def test_stack_files_with_secrets_are_owner_only(stack: Stack) -> None:
    for name in ("env.sh", "basic_auth.ini", "state.json"):
        assert (Path(stack.state_dir) / name).stat().st_mode & 0o077 == 0, name
