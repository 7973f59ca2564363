"""tf.distribute: MirroredStrategy over 2 logical CPUs matches one device, and two
MultiWorkerMirroredStrategy workers on 127.0.0.1 train end to end with only the chief writing."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarcoma_seg.stack import free_port
from tests.conftest import copy_project, run, tiny_params

pytestmark = pytest.mark.slow

# one epoch of the same batches on 1 device and on 2 replicas (2 slices each): the replicas'
# gradients are summed in another order and BatchNorm normalises each half batch on its own,
# so the two only agree within a tolerance
# and the Dice loss is pooled over each replica's share of the batch, not the whole batch
LOSS_TOLERANCE = 0.02  # absolute, on a Dice + focal loss near 1 (measured: 0.002)
PROB_TOLERANCE = 0.01  # mean absolute difference of validation probabilities (0.0005)

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


def test_two_workers_train_and_only_the_chief_writes(project: Path, tmp_path: Path) -> None:
    worker = tmp_path / "worker"  # a second machine's checkout, with the same data
    shutil.copytree(project, worker)
    before = files(worker)
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    procs = []
    for index, repo in enumerate((project, worker)):
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["train"]["distribute"] = "multi_worker"
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["TF_CONFIG"] = json.dumps(task)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "stages.train"],
                cwd=repo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:  # a worker that fails leaves the other waiting for it: the timeout ends both
        outputs = [p.communicate(timeout=1200)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert (project / "data" / "model" / "model.h5").is_file()
    assert json.loads((project / "metrics" / "train.json").read_text())["epochs_run"] == 1
    with sqlite3.connect(project / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    assert files(worker) == before  # the worker wrote nothing in its checkout
    assert "best epoch 1" in outputs[1]  # it trained all the same
