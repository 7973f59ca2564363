"""tf.distribute: MirroredStrategy over 2 logical CPUs matches one device, and two
MultiWorkerMirroredStrategy workers on 127.0.0.1 train end to end with only the chief writing;
both resume a killed training from its checkpoint."""

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from sarcoma_seg.checkpoint import checkpointed_epochs
from sarcoma_seg.distribute import CPU_REPLICAS_ENV
from sarcoma_seg.stack import free_port
from tests.conftest import copy_project, model_arrays, run, tiny_params

pytestmark = pytest.mark.slow

# one epoch of the same batches on 1 device and on 2 replicas (2 slices each): the replicas'
# gradients are summed in another order and BatchNorm normalises each half batch on its own,
# so the two only agree within a tolerance
# and the Dice loss is pooled over each replica's share of the batch, not the whole batch
LOSS_TOLERANCE = 0.02  # absolute, on a Dice + focal loss near 1 (measured: 0.002)
PROB_TOLERANCE = 0.01  # mean absolute difference of validation probabilities (0.0005)
# A mirrored checkpoint holds each BatchNorm moving statistic as the mean over the replicas (they
# are sync-on-read variables), and a resumed training gives that mean back to every replica: the
# saved model's statistics (the mean again) agree up to float rounding (measured 4.8e-7), but the
# validation after the resume runs each replica with the mean instead of its own statistics
VAL_TOLERANCE = 1e-4  # absolute, on validation loss and scores (measured: 4.3e-5)
MOVING_STATS_TOLERANCE = 1e-5  # absolute, on the saved moving means and variances

MIRRORED_CHECK = """
import json, sys
import numpy as np
from sarcoma_seg import distribute
distribute.split_cpu(2)  # before TensorFlow starts its runtime
import tensorflow as tf
from sarcoma_seg.dataset import load_slice_set
from sarcoma_seg.model import build_unet, compile_unet, seed_everything
from dataclasses import replace
from sarcoma_seg.pipeline_input import train_batches
from sarcoma_seg.settings import load_settings
from sarcoma_seg.transforms import build_augmentation

tp = replace(load_settings().train, batch_size=8)  # 4 per replica: BatchNorm sees a real batch
train = load_slice_set("data/preprocessed/train.npz")
val = load_slice_set("data/preprocessed/val.npz")

def fit(strategy):
    with strategy.scope():
        seed_everything(0)
        model = build_unet(tp.backbone, None, train.images.shape[-1], tp.bn_momentum)
        augment = build_augmentation(tp.augment, train.images.shape[1], 0, pet=True)
        batches = train_batches(train, tp.batch_size, augment, 0, 1)
        compile_unet(model, tp, batches.steps)
        fit = model.fit(batches.dataset, steps_per_epoch=batches.steps, epochs=1, verbose=0)
    return fit.history["loss"][-1], model.predict(val.images, verbose=0)

one = fit(tf.distribute.get_strategy())
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
two = fit(mirrored)
print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "loss": [one[0], two[0]],
                  "prob_diff": float(np.abs(one[1] - two[1]).mean())}))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with tiny params (1 epoch) and its data preprocessed."""
    repo = copy_project(tmp_path_factory.mktemp("distribute") / "chief")
    params = tiny_params()
    params["train"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "split", "preprocess"):
        run([sys.executable, "-m", f"stages.{stage}"], repo)
    return repo


def files(folder: Path) -> set[str]:
    """Every file under folder, relative."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_mirrored_over_two_logical_cpus_matches_one_device(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_CHECK], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)  # pytest -s shows it
    assert result["replicas"] == 2
    assert abs(result["loss"][0] - result["loss"][1]) < LOSS_TOLERANCE
    assert result["prob_diff"] < PROB_TOLERANCE


def set_train(repo: Path, **train: object) -> None:
    """Change keys of the copy's train section."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def start_training(repo: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    """`python -m stages.train` in the copy, in a process group of its own, MLflow to the copy's
    own store; output collected."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | extra_env
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"], cwd=repo, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def start_cluster(
    repos: list[Path], cluster: dict[str, list[str]], envs: list[dict] | None = None
) -> list[subprocess.Popen]:
    """One multi_worker training per checkout, worker i in repos[i] (with envs[i] added)."""
    tasks = [
        {"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(len(repos))
    ]
    envs = envs or [{} for _ in repos]
    return [
        start_training(r, {"TF_CONFIG": json.dumps(t)} | e) for r, t, e in zip(repos, tasks, envs)
    ]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Every process's output once all have exited; any failure fails the test with it. A worker
    that fails leaves the others waiting for it: the timeout ends them all."""
    try:
        outputs = [p.communicate(timeout=1200)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def kill_after_first_checkpoint(procs: list[subprocess.Popen], repo: Path) -> None:
    """SIGKILL every process group once repo's training checkpoint holds epoch 1."""
    deadline = time.monotonic() + 600
    try:
        while checkpointed_epochs(repo) < 1:
            assert all(p.poll() is None for p in procs), "training ended before its checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.05)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert checkpointed_epochs(repo) == 1  # killed inside epoch 2


def test_two_workers_train_and_only_the_chief_writes(project: Path, tmp_path: Path) -> None:
    worker = tmp_path / "worker"  # a second machine's checkout, with the same data
    shutil.copytree(project, worker)
    before = files(worker)
    for repo in (project, worker):
        set_train(repo, distribute="multi_worker")
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    # the worker is pointed at a store of its own: it must make no run there (nor anywhere)
    store = tmp_path / "worker-store" / "mlflow.db"
    store.parent.mkdir()
    envs = [{}, {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}]
    outputs = finish(start_cluster([project, worker], cluster, envs))
    assert not store.exists() and "(worker: nothing written)" in outputs[1]
    assert (project / "data" / "model" / "model.h5").is_file()
    assert json.loads((project / "metrics" / "train.json").read_text())["epochs_run"] == 1
    with sqlite3.connect(project / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    assert files(worker) == before  # the worker wrote nothing in its checkout
    assert "best epoch 1" in outputs[1]  # it trained all the same


def resumable_copy(folder: Path, **train: object) -> Path:
    """A preprocessed copy whose training runs 3 epochs of 6 steps (batch 4), so that a kill
    after epoch 1's checkpoint lands inside epoch 2."""
    repo = copy_project(folder)
    params = tiny_params()
    params["train"].update(epochs=3, batch_size=4, ensemble=1, **train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "split", "preprocess"):
        run([sys.executable, "-m", f"stages.{stage}"], repo)
    return repo


def test_killed_cluster_resumes_from_the_chiefs_checkpoint(tmp_path: Path) -> None:
    chief = resumable_copy(tmp_path / "chief", distribute="multi_worker")
    worker = tmp_path / "worker"
    shutil.copytree(chief, worker)
    (chief / ".checkpoints").mkdir()
    # the shared storage docs/distributed.md asks for: the worker's .checkpoints is the chief's
    (worker / ".checkpoints").symlink_to(chief / ".checkpoints", target_is_directory=True)
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    kill_after_first_checkpoint(start_cluster([chief, worker], cluster), chief)

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}  # restarted anew
    outputs = finish(start_cluster([chief, worker], cluster))
    for out in outputs:  # both workers restored the chief's epoch 1 and ran epochs 2-3 only
        assert "resuming training after epoch 1" in out, out[-3000:]
        assert "Epoch 1/3" not in out and "Epoch 3/3" in out
    assert json.loads((chief / "metrics" / "train.json").read_text())["epochs_run"] == 3
    assert len(history_columns(chief)["epoch"]) == 3
    assert not list((chief / ".checkpoints").glob("train-*"))  # the chief removed it at the end
    with sqlite3.connect(chief / "mlflow.db") as db:  # the killed run, continued
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
        tag = "select value from tags where key = 'resumed_from_epoch'"
        assert db.execute(tag).fetchall() == [("1",)]
    assert not (worker / "mlflow.db").exists() and not (worker / "data" / "model").exists()


def history_columns(repo: Path) -> dict[str, np.ndarray]:
    """The copy's plots/history.csv, column by column."""
    rows = list(csv.DictReader((repo / "plots" / "history.csv").open()))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def test_killed_mirrored_training_resumes_as_if_never_killed(tmp_path: Path) -> None:
    repo = resumable_copy(tmp_path / "repo", distribute="mirrored")
    replicas = {CPU_REPLICAS_ENV: "2"}  # MirroredStrategy over 2 logical CPUs
    finish([start_training(repo, replicas)])
    reference = model_arrays(repo / "data" / "model" / "model.h5")
    history = history_columns(repo)

    kill_after_first_checkpoint([start_training(repo, replicas)], repo)
    (out,) = finish([start_training(repo, replicas)])
    assert "resuming training after epoch 1" in out, out[-3000:]
    resumed = model_arrays(repo / "data" / "model" / "model.h5")
    assert resumed.keys() == reference.keys()
    for name, array in reference.items():
        if "moving_" in name:  # see MOVING_STATS_TOLERANCE
            assert np.allclose(resumed[name], array, rtol=0, atol=MOVING_STATS_TOLERANCE), name
        else:  # every trained weight, bit for bit
            assert np.array_equal(resumed[name], array), name
    again = history_columns(repo)
    for key, column in history.items():
        if key.startswith("val_"):
            assert np.allclose(again[key], column, rtol=0, atol=VAL_TOLERANCE), key
        else:
            assert np.array_equal(again[key], column), key
