"""A trained model in use: the `predict` console command on a registered model gives exactly
the masks evaluate scored, and `mlflow models serve` answers raw HU slices with the same masks."""

import csv
import json
import os
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest

from sarcoma_seg.inference import segment_volume
from sarcoma_seg.io.store import load_volumes
from sarcoma_seg.metrics import volume_scores
from sarcoma_seg.model_folder import MODEL_CONFIG_NAME, load_unet, read_model_config
from sarcoma_seg.stack import free_port
from tests.conftest import committed_project, ran, run, tiny_params
from tests.test_experiments import serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline, reproduced once: a registered model and its evaluation."""
    repo = committed_project(tmp_path_factory.mktemp("serving") / "repo", tiny_params())
    assert ran(run(["dvc", "repro"], repo))[-1] == "evaluate"
    return repo


def tracking_env(repo: Path) -> dict[str, str]:
    """The environment of a process that reads the copy's MLflow store."""
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}


def test_predict_on_the_registered_model_equals_evaluate(trained: Path) -> None:
    patient = json.loads((trained / "data" / "split.json").read_text())["test"][0]
    source = trained / "data" / "raw" / "source" / "lab_petct_vox_5.00mm.h5"
    out = trained / "predictions"
    printed = run(
        ["predict", str(source), "--patient", patient, "--model", "models:/sarcoma-seg/1",
         "--out", str(out)],
        trained,
        tracking_env(trained),
    )  # fmt: skip
    assert "slice" in printed  # the progress bar
    with h5py.File(out / "mask.h5") as h5:
        mask = h5[f"label_data/{patient}"][()]
    # evaluate's own path: the store volume, the model folder, the shared inference function
    volume = load_volumes(trained / "data" / "raw", [patient])[0]
    stored = read_model_config(trained / "data" / "model" / MODEL_CONFIG_NAME)
    pre, inference = stored.preprocessing, stored.inference
    model = load_unet(trained / "data" / "model")
    expected = segment_volume(model, pre, volume.ct, inference, volume.pet)
    assert np.array_equal(mask, expected)
    with (trained / "metrics" / "per_patient.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["patient"] == patient)
    scored = volume_scores(mask, volume.mask, volume.spacing)["dice_3d"]
    assert round(scored, 6) == float(row["dice_3d"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tumour_slices"] == int(mask.any(axis=(1, 2)).sum())


def test_mlflow_models_serve_answers_raw_hu_like_predict(trained: Path) -> None:
    patient = json.loads((trained / "data" / "split.json").read_text())["test"][0]
    source = trained / "data" / "raw" / "source" / "lab_petct_vox_5.00mm.h5"
    out = trained / "predictions-serve"
    run(
        ["predict", str(source), "--patient", patient, "--model", "models:/sarcoma-seg/1",
         "--out", str(out), "--no-progress"],
        trained,
        tracking_env(trained),
    )  # fmt: skip
    with h5py.File(out / "mask.h5") as h5:
        expected = h5[f"label_data/{patient}"][()]
    with h5py.File(source) as h5:
        ct = h5[f"ct_data/{patient}"][()].astype(float)
        pet = h5[f"pet_data/{patient}"][()].astype(float)
    pre = read_model_config(trained / "data" / "model" / MODEL_CONFIG_NAME).preprocessing
    body = {"inputs": {"ct": ct.tolist(), "pet": pet.tolist()}}
    if pre.pet_window is None:
        body = {"inputs": ct.tolist()}  # a CT-only model takes the bare HU tensor
    port = free_port()
    env = {**os.environ, **tracking_env(trained)}
    cmd = [
        "mlflow", "models", "serve", "-m", "models:/sarcoma-seg/1", "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with serving(cmd, f"http://127.0.0.1:{port}/ping", trained / "serve.log", env):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    masks = np.asarray(answer["predictions"], dtype=np.uint8)
    assert masks.shape == ct.shape
    assert np.array_equal(masks, expected)


def test_served_model_carries_its_preprocessing_and_code(trained: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_env(trained)["MLFLOW_TRACKING_URI"])
    local = Path(mlflow.artifacts.download_artifacts("models:/sarcoma-seg/1"))
    assert (local / "code" / "sarcoma_seg" / "inference.py").is_file()
    config = json.loads((local / "artifacts" / MODEL_CONFIG_NAME).read_text())
    assert config["hu_window"] and config["image_size"] == 32 and config["inference"]
    # the train stage wrote the model folder's config itself; MLflow logged that very file
    folder = trained / "data" / "model"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["mlflow_run.json", "model.h5", "model.onnx", "model_card.json", MODEL_CONFIG_NAME]
    )
    # the ONNX model is logged and registered with the rest of the folder, byte for byte
    assert (local / "artifacts" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    assert (local / "artifacts" / MODEL_CONFIG_NAME).read_bytes() == (
        folder / MODEL_CONFIG_NAME
    ).read_bytes()
