"""A training killed with SIGKILL during epoch 2 of 3 resumes on the next `dvc repro` and ends
bit for bit where an uninterrupted run ends, in the same MLflow run, with every epoch once."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from sarcoma_seg.checkpoint import checkpointed_epochs, open_checkpoint
from sarcoma_seg.dataset import SliceSet
from sarcoma_seg.pipeline_input import train_batches
from sarcoma_seg.transforms import build_augmentation
from tests.conftest import committed_project, model_arrays, ran, run, tiny_params


def resume_params() -> dict:
    """Tiny params with 3 epochs; batch size 2 makes 12 steps an epoch, so a kill lands inside
    epoch 2 without any sleep."""
    params = tiny_params()
    params["train"].update(epochs=3, batch_size=2, ensemble=1)
    return params


def outputs(repo: Path) -> dict[str, object]:
    """What the train and evaluate stages wrote (model weights, metrics, history)."""
    return {
        "weights": model_arrays(repo / "data" / "model" / "model.h5"),
        "train": (repo / "metrics" / "train.json").read_text(),
        "history": (repo / "plots" / "history.csv").read_text(),
        "evaluate": (repo / "metrics" / "evaluate.json").read_text(),
    }


def env() -> dict[str, str]:
    """The environment of a stage run by the tests: MLflow to the copy's own store."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def kill_during_epoch_2(cmd: list[str], repo: Path) -> None:
    """Start cmd, wait until the training has checkpointed epoch 1, then SIGKILL its whole
    process group (dvc and the stage)."""
    proc = subprocess.Popen(
        cmd, cwd=repo, env=env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while not list((repo / ".checkpoints").glob("train-*/state.npz")):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def forget_training(repo: Path) -> None:
    """Make DVC see train as never run, as for a first training with new params: drop its and
    evaluate's dvc.lock entries and the run cache (else DVC restores the reference's outputs)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in ("train", "evaluate"):
        del lock["stages"][stage]
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.rmtree(repo / ".dvc" / "cache" / "runs")


def test_checkpointed_epochs_reads_the_last_saved_epoch(tmp_path: Path) -> None:
    assert checkpointed_epochs(tmp_path) == 0  # no folder yet
    ckpt = open_checkpoint(tmp_path, "key")
    assert checkpointed_epochs(tmp_path) == 0  # folder, no epoch yet
    ckpt.save({"epoch": 3, "history": {}}, [np.zeros(2)], [np.ones(1)])
    assert checkpointed_epochs(tmp_path) == 3
    (ckpt.folder / "state.npz").write_bytes(b"half")  # caught mid-write: no epoch to count
    assert checkpointed_epochs(tmp_path) == 0
    ckpt.remove()


def test_resumed_input_gives_the_batches_an_uninterrupted_one_gives() -> None:
    params = tiny_params()
    rng = np.random.default_rng(0)
    data = SliceSet(
        rng.random((10, 32, 32, 3), dtype=np.float32),
        (rng.random((10, 32, 32)) > 0.7).astype(np.uint8),
        np.array(["p"] * 10),
        np.arange(10),
        {"p": [1.0, 1.0, 1.0]},
    )
    # every transform on, so each one's randomness is exercised
    augment = {k: dict(v, enabled=True, p=1.0) for k, v in params["train"]["augment"].items()}

    def batches(first_epoch: int) -> list[np.ndarray]:
        made = train_batches(
            data, 4, build_augmentation(augment, 32, 7, pet=True), 7, 3, 0.5, first_epoch
        )
        assert made.steps == 3
        return [images.numpy() for images, _ in made.dataset]

    whole = batches(0)
    resumed = batches(2)  # a training killed after epoch 2 of 3 resumes with epoch 3's batches
    assert len(whole) == 9 and len(resumed) == 3
    for got, want in zip(resumed, whole[6:], strict=True):
        assert np.array_equal(got, want)
    assert not np.array_equal(whole[0], whole[3])  # each epoch draws anew


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy reproduced once, uninterrupted: the reference."""
    repo = committed_project(tmp_path_factory.mktemp("resume") / "repo", resume_params())
    run(["dvc", "repro"], repo)
    return repo


def runs(repo: Path) -> list:
    """Every run of the copy's store, oldest first."""
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["sarcoma-seg"], output_format="list")
    return sorted(found, key=lambda r: r.info.start_time)


@pytest.mark.slow
def test_sigkill_in_epoch_2_resumes_bit_for_bit_in_the_same_run(repo: Path) -> None:
    reference = outputs(repo)
    reference_bytes = (repo / "data" / "model" / "model.h5").read_bytes()
    forget_training(repo)
    kill_during_epoch_2(["dvc", "repro"], repo)
    state = list((repo / ".checkpoints").glob("train-*/state.npz"))
    assert len(state) == 1
    with np.load(state[0]) as npz:
        assert json.loads(str(npz["meta"]))["epoch"] == 1  # killed before epoch 2 completed
    killed = runs(repo)[-1]
    assert killed.info.status == "RUNNING"  # until the next training takes it over

    out = run(["dvc", "repro"], repo)
    assert ran(out) == ["train", "evaluate"], out
    assert "resuming training after epoch 1" in out
    again = outputs(repo)
    assert again["train"] == reference["train"] and again["history"] == reference["history"]
    assert again["evaluate"] == reference["evaluate"]
    assert again["weights"].keys() == reference["weights"].keys()
    for name, array in reference["weights"].items():
        assert np.array_equal(again["weights"][name], array), name
    assert (repo / "data" / "model" / "model.h5").read_bytes() == reference_bytes
    assert not list((repo / ".checkpoints").glob("train-*"))  # removed once finished

    first, resumed = runs(repo)
    assert resumed.info.run_id == killed.info.run_id
    assert resumed.info.status == "FINISHED" and first.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_epoch"] == "1"
    client = mlflow.MlflowClient()
    for key in ("loss", "iou_score", "lr"):
        logged = client.get_metric_history(resumed.info.run_id, key)
        assert sorted(m.step for m in logged) == [0, 1, 2], key  # every epoch once
        expected = {m.step: m.value for m in client.get_metric_history(first.info.run_id, key)}
        assert {m.step: m.value for m in logged} == expected, key


def test_resume_key_covers_every_module_of_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sarcoma_seg import checkpoint
    from sarcoma_seg.settings import load_settings

    root = Path(__file__).resolve().parents[1]
    code = tmp_path / "code"
    shutil.copytree(root / "sarcoma_seg", code / "sarcoma_seg")
    (code / "stages").mkdir()
    shutil.copy2(root / "stages" / "train.py", code / "stages" / "train.py")
    monkeypatch.setattr(checkpoint, "CODE", code)
    settings, data = load_settings(root / "params.yaml"), tmp_path / "preprocessed"
    data.mkdir()
    before = checkpoint.checkpoint_key(settings, data)
    reader = code / "sarcoma_seg" / "io" / "nifti.py"
    reader.write_text(reader.read_text() + "\n# a changed reader\n")
    assert checkpoint.checkpoint_key(settings, data) != before
