"""Tracking faults against a real `mlflow server` on 127.0.0.1 that the tests stop and restart:
an unreachable server at the start, an outage from epoch 2 to past the stage's end, SIGTERM
(then `dvc exp run` resumes the run), a kill -9 orphan, and an exception."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sarcoma_seg.checkpoint import checkpointed_epochs
from sarcoma_seg.errors import run_cli
from sarcoma_seg.stack import free_port
from tests.conftest import committed_project, ran, run, tiny_params
from tests.test_experiments import wait_for

pytestmark = pytest.mark.slow
# the stage's own wait for the server at its end; 3 s instead of 30 keeps the test short
# (MLflow's other retry settings as the stage sets them, so in-process tests restore them)
STAGE_ENV = {
    "SARCOMA_SEG_TRACKING_WAIT": "3",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class Server:
    """A real `mlflow server` on a fixed free port that can be stopped and started again."""

    def __init__(self, store: Path) -> None:
        self.store, self.port = store, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        store.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Start it and wait until /health answers."""
        log = self.store / "server.log"
        cmd = [
            "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
            "--artifacts-destination", str(self.store / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(f"{self.url}/health", 120, self.proc, log)

    def stop(self) -> None:
        """Stop it at once (its whole process group), as a crash or a lost network would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (restarted by the outage test)."""
    srv = Server(tmp_path_factory.mktemp("server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy preprocessed once with tiny params (3 epochs of 12 steps)."""
    params = tiny_params()
    params["train"].update(epochs=3, batch_size=2, ensemble=1)
    repo = committed_project(tmp_path_factory.mktemp("faults") / "repo", params)
    run(["dvc", "repro", "preprocess"], repo)
    return repo


def stage_env(url: str) -> dict[str, str]:
    """The environment of a train stage logging to url."""
    return {**os.environ, **STAGE_ENV, "MLFLOW_TRACKING_URI": url}


def start_train(repo: Path, url: str, code: str | None = None) -> subprocess.Popen:
    """`python -m stages.train` (or code) in the copy, logging to url, output captured."""
    cmd = [sys.executable, "-m", "stages.train"] if code is None else [sys.executable, "-c", code]
    return subprocess.Popen(
        cmd, cwd=repo, env=stage_env(url), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def wait_epochs(repo: Path, proc: subprocess.Popen, epochs: int) -> None:
    """Wait until the training has checkpointed `epochs` epochs."""
    deadline = time.monotonic() + 300
    while checkpointed_epochs(repo) < epochs:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def the_run(url: str, repo: Path) -> str:
    """The run id the last training recorded beside its model."""
    return json.loads((repo / "data" / "model" / "mlflow_run.json").read_text())["run_id"]


def steps(client: MlflowClient, run_id: str, key: str = "loss") -> list[int]:
    """The steps a metric was logged at, with repeats."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_unreachable_server_stops_before_training(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import stages.train

    monkeypatch.chdir(repo)
    for key, value in stage_env(f"http://127.0.0.1:{free_port()}").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as stopped:
        run_cli(stages.train.main)
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "tracking server not reachable" in lines[0], err
    assert "nothing was trained" in lines[0]
    assert not (repo / ".checkpoints").exists()
    assert not (repo / "data" / "model" / "model.h5").exists()


def test_outage_from_epoch_2_past_the_end_then_rerun_finishes_the_logging(
    repo: Path, server: Server
) -> None:
    proc = start_train(repo, server.url)
    wait_epochs(repo, proc, 1)
    server.stop()  # epochs 2 and 3 cannot be sent; training goes on
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    # epoch 1 was logged unless the server went down while it was being sent
    assert "tracking server not reachable" in lines[0], lines
    assert re.search(r"epoch\(s\) (1, )?2, 3,", lines[0]), lines
    assert "run dvc repro again" in lines[0]
    model = (repo / "data" / "model" / "model.h5").read_bytes()  # the DVC outputs are complete
    assert json.loads((repo / "metrics" / "train.json").read_text())["epochs_run"] == 3
    assert list((repo / ".checkpoints" / "outbox").glob("*.jsonl"))

    server.start()
    proc = start_train(repo, server.url)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "resuming" not in out  # nothing left to train: only the logging is finished
    assert (repo / "data" / "model" / "model.h5").read_bytes() == model
    client = MlflowClient(server.url)
    run_id = the_run(server.url, repo)
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["resumed_from_epoch"] == "3"
    assert steps(client, run_id) == [0, 1, 2] and steps(client, run_id, "lr") == [0, 1, 2]
    assert "best_val_dice" in finished.data.metrics
    assert not list((repo / ".checkpoints").glob("train-*"))
    assert not list((repo / ".checkpoints" / "outbox").glob("*.jsonl"))


def test_sigterm_ends_the_run_killed_and_dvc_exp_run_resumes_it(repo: Path, server: Server) -> None:
    proc = start_train(repo, server.url)  # run_cli turns SIGTERM into an exception: 143
    wait_epochs(repo, proc, 1)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, out + err
    client = MlflowClient(server.url)
    killed = client.search_runs(
        [client.get_experiment_by_name("sarcoma-seg").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert killed.info.status == "KILLED"

    done = run(["dvc", "exp", "run"], repo, stage_env(server.url))
    assert "train" in ran(done) and "resuming training after epoch 1" in done
    resumed = client.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_epoch"] == "1"
    assert steps(client, killed.info.run_id) == [0, 1, 2]


def test_kill_9_orphan_is_marked_killed_by_the_next_training(repo: Path, server: Server) -> None:
    from sarcoma_seg import runlog

    orphan = (
        "import os, signal, mlflow; from sarcoma_seg import runlog; "
        f"mlflow.set_tracking_uri({server.url!r}); mlflow.set_experiment('sarcoma-seg'); "
        "run = mlflow.start_run(); print(run.info.run_id, flush=True); "
        f"runlog.claim_run({str(repo)!r}, run.info.run_id, {server.url!r}); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", orphan], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    run_id = done.stdout.split()[0]
    client = MlflowClient(server.url)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert runlog.mark_orphans(repo, server.url, keep="another-run") == [run_id]
    assert client.get_run(run_id).info.status == "KILLED"
    assert runlog.mark_orphans(repo, server.url) == []  # its lock file is gone


def test_exception_ends_the_run_failed(
    repo: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sarcoma_seg.training
    import stages.train

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in training")

    monkeypatch.chdir(repo)
    for key, value in stage_env(server.url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sarcoma_seg.training, "train", broken)
    with pytest.raises(RuntimeError, match="a bug in training"):
        stages.train.main()
    client = MlflowClient(server.url)
    failed = client.search_runs(
        [client.get_experiment_by_name("sarcoma-seg").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert failed.info.status == "FAILED"
