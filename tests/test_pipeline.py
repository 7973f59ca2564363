"""End to end: the real `dvc repro` in a temporary copy of the repo, with tiny params, and the
MLflow run it leaves behind (reopened, its model reloaded)."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from tests.conftest import copy_project, ran, run, tiny_params

pytestmark = pytest.mark.slow


def set_params(repo: Path, **train: object) -> None:
    """Write the tiny params with train overrides."""
    params = tiny_params()
    params["train"].update(train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project's tracked files, reproduced once with tiny params."""
    repo = copy_project(tmp_path_factory.mktemp("pipeline") / "repo")
    set_params(repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny params"], repo)  # dvc exp needs a commit to branch from
    first = run(["dvc", "repro"], repo)
    assert ran(first) == ["download", "split", "preprocess", "train", "evaluate"]
    return repo


def test_repro_writes_metrics_plots_and_figures(repo: Path) -> None:
    test = json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]
    assert test["patients"] == 1
    assert {"dice_3d_mean", "dice_3d_median", "slice_iou", "slice_fscore"} <= set(test)
    assert 0.0 <= test["dice_3d_mean"] <= 1.0
    stats = json.loads((repo / "metrics" / "data_stats.json").read_text())
    assert stats["train"]["patients"] == 2 and stats["train"]["slices"] == 24
    history = (repo / "plots" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,val_loss,val_dice,iou_score,val_iou_score")
    for name in ("loss.png", "iou_score.png", "predictions.png"):
        assert (repo / "data" / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    shown = run(["dvc", "metrics", "show", "--json"], repo)
    assert "dice_3d_mean" in shown


def test_second_repro_runs_nothing(repo: Path) -> None:
    assert ran(run(["dvc", "repro"], repo)) == []


def test_epochs_change_reruns_train_and_evaluate_only_and_is_deterministic(repo: Path) -> None:
    before = (repo / "metrics" / "evaluate.json").read_text()
    set_params(repo, epochs=1)
    assert ran(run(["dvc", "repro"], repo)) == ["train", "evaluate"]
    set_params(repo)
    # --force: retrain for real instead of restoring the run cache, to prove determinism
    assert ran(run(["dvc", "repro", "--force", "--single-item", "train"], repo)) == ["train"]
    assert ran(run(["dvc", "repro"], repo)) == ["evaluate"]
    assert (repo / "metrics" / "evaluate.json").read_text() == before


def test_mlflow_run_holds_everything_and_the_model_reloads(repo: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sarcoma-seg"], output_format="list")
    assert len(runs) >= 1
    latest = runs[0]
    assert latest.data.params["train.epochs"] == "2"
    assert latest.data.params["data.source"] == "synthetic"
    assert {"test_dice_3d_mean", "test_slice_iou", "val_loss", "best_val_iou_score"} <= set(
        latest.data.metrics
    )
    history = mlflow.MlflowClient().get_metric_history(latest.info.run_id, "val_iou_score")
    assert [m.step for m in history] == [0, 1]
    client = mlflow.MlflowClient()
    artifacts = {
        a.path
        for folder in ("plots", "evaluation", "data", "evaluation/patients")
        for a in client.list_artifacts(latest.info.run_id, folder)
    }
    test_ids = json.loads((repo / "data" / "split.json").read_text())["test"]
    assert {f"evaluation/patients/{p}.png" for p in test_ids} <= artifacts
    assert {
        "plots/loss.png",
        "plots/iou_score.png",
        "evaluation/predictions.png",
        "evaluation/per_patient.csv",
        "data/manifest.json",
    } <= artifacts
    tags = latest.data.tags
    assert latest.info.run_name == "workspace-synthetic-resnet18"
    assert tags["dvc.experiment"] == "workspace" and len(tags["git.commit"]) == 40
    assert any(k.startswith("system/") for k in latest.data.metrics)  # system metrics on
    version = client.get_model_version("sarcoma-seg", "1")
    # the model card: in the model folder, with the held-out figures in metrics/, and on the
    # registered version as its description
    card = json.loads((repo / "data" / "model" / "model_card.json").read_text())
    assert card["data"]["train_patients"] > 0 and "low FDG uptake" in " ".join(card["limitations"])
    evaluated = json.loads((repo / "metrics" / "model_card.json").read_text())
    test = json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]
    assert evaluated["evaluation"]["dice_3d_mean"] == test["dice_3d_mean"]
    assert "Limitations:" in version.description and "Held-out test" in version.description
    info = mlflow.models.get_model_info("models:/sarcoma-seg/1")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert version.run_id in {r.info.run_id for r in runs}
    model = mlflow.pyfunc.load_model(f"runs:/{latest.info.run_id}/model")
    hu = np.full((3, 48, 48), -1000.0, dtype=np.float32)
    masks = model.predict({"ct": hu, "pet": np.zeros_like(hu)})  # the phantoms carry PET
    assert masks.shape == (3, 48, 48) and set(np.unique(masks)) <= {0, 1}


def test_val_dice_checkpoint_with_plateau_schedule_and_without_pet_uptake(repo: Path) -> None:
    # the defaults (monitor last, cosine, PET uptake on) ran in the fixture; this is the other
    # branch: a checkpoint picked on validation Dice, ReduceLROnPlateau, no PET augmentation
    before = (repo / "metrics" / "evaluate.json").read_text()
    augment = tiny_params()["train"]["augment"]
    augment["pet_uptake"]["enabled"] = False
    set_params(repo, monitor="val_dice", lr_schedule="plateau", epochs=3, augment=augment)
    assert ran(run(["dvc", "repro"], repo)) == ["train", "evaluate"]
    summary = json.loads((repo / "metrics" / "train.json").read_text())
    history = (repo / "plots" / "history.csv").read_text().splitlines()[1:]
    val_dice = [float(row.split(",")[3]) for row in history]
    assert summary["epochs_run"] == len(history)
    assert summary["best_epoch"] == 1 + val_dice.index(max(val_dice))
    assert summary["val_dice"] == pytest.approx(max(val_dice), abs=1e-6)
    assert not (repo / "data" / "model" / "best.weights.h5").exists()
    set_params(repo)
    run(["dvc", "repro"], repo)  # back to the default params: DVC's run cache restores them
    assert (repo / "metrics" / "evaluate.json").read_text() == before


def test_val_zero_trains_on_every_non_test_patient_and_a_monitor_needs_validation(
    repo: Path,
) -> None:
    params = tiny_params()
    params["split"]["val"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(["dvc", "repro"], repo)) == ["split", "preprocess", "train", "evaluate"]
    stats = json.loads((repo / "metrics" / "data_stats.json").read_text())
    assert stats["val"] == {
        "patients": 0,
        "patients_without_tumour": 0,
        "slices": 0,
        "tumour_slices": 0,
        "tumour_pixel_fraction": 0.0,
    }
    assert stats["train"]["patients"] == 2  # split.train: 2 stays; the val patient goes unused
    history = (repo / "plots" / "history.csv").read_text().splitlines()
    assert [row.split(",")[2:4] for row in history[1:]] == [["", ""], ["", ""]]  # no val_*
    summary = json.loads((repo / "metrics" / "train.json").read_text())
    assert summary == {"best_epoch": 2, "epochs_run": 2}
    assert json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]["patients"] == 1
    model = (repo / "data" / "model" / "model.h5").read_bytes()
    params["train"]["monitor"] = "val_dice"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "stages.train"], cwd=repo, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "train.monitor=val_dice picks weights on validation, but split.val is 0 "
            "(no validation patients); use train.monitor: last"
        )
    )
    assert (repo / "data" / "model" / "model.h5").read_bytes() == model  # nothing rewritten
    set_params(repo)
    run(["dvc", "repro"], repo)


def test_ensemble_trains_each_member_and_saves_their_mean_as_one_model(repo: Path) -> None:
    set_params(repo, ensemble=2)
    assert ran(run(["dvc", "repro"], repo)) == ["train", "evaluate"]
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    latest = mlflow.search_runs(experiment_names=["sarcoma-seg"], output_format="list")[0]
    client = mlflow.MlflowClient()
    members = [
        [m.value for m in client.get_metric_history(latest.info.run_id, f"member_{i}/loss")]
        for i in (0, 1)
    ]
    assert len(members[0]) == len(members[1]) == 2 and members[0] != members[1]
    mean = [m.value for m in client.get_metric_history(latest.info.run_id, "loss")]
    assert np.allclose(mean, np.mean(members, axis=0))  # the plain keys hold the members' mean
    history = (repo / "plots" / "history.csv").read_text().splitlines()[1:]
    assert np.allclose([float(row.split(",")[1]) for row in history], mean, atol=1e-6)
    model = mlflow.pyfunc.load_model(f"runs:/{latest.info.run_id}/model")
    hu = np.full((2, 48, 48), 40.0, dtype=np.float32)
    assert model.predict({"ct": hu, "pet": np.zeros_like(hu)}).shape == (2, 48, 48)
    assert json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]["patients"] == 1
    set_params(repo)
    run(["dvc", "repro"], repo)


def test_dvc_exp_run_and_show_list_params_and_metrics(repo: Path) -> None:
    run(["dvc", "exp", "run", "-S", "train.epochs=1", "-n", "one-epoch"], repo)
    shown = run(["dvc", "exp", "show", "--json"], repo)
    assert "one-epoch" in shown
    assert '"train.json"' in shown or "train.json" in shown
    assert "dice_3d_mean" in shown and '"epochs": 1' in shown


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("source", "folder", "counts"),
    [("nifti", "ibsi-sts", (None, 2, 3)), ("slices", "sts-slices", (None, 1, 2))],
)
def test_real_sources_run_end_to_end_on_held_out_patients(
    tmp_path: Path, shared_data: Path, source: str, folder: str, counts: tuple
) -> None:
    repo = copy_project(tmp_path / "repo")
    params = tiny_params()
    params["data"].update(source=source, path=str(shared_data / folder))
    params["split"].update(zip(("train", "val", "test"), counts))
    params["train"].update(epochs=1, batch_size=16)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(["dvc", "repro"], repo))[-1] == "evaluate"
    split = json.loads((repo / "data" / "split.json").read_text())
    rows = (repo / "metrics" / "per_patient.csv").read_text().splitlines()[1:]
    evaluated = sorted(row.split(",")[0] for row in rows)
    assert evaluated == split["test"] and len(evaluated) == counts[2]
    assert not set(evaluated) & set(split["train"] + split["val"])
    manifest = json.loads((repo / "data" / "raw" / "manifest.json").read_text())
    assert manifest["source"] == source and len(manifest["files"]) > 20
