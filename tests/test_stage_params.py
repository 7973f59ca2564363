"""Bad params stop a stage before it writes anything, naming the param and allowed values."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarcoma_seg import training
from sarcoma_seg.errors import SarcomaSegError
from stages import preprocess, train
from tests.conftest import ROOT, tiny_params


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder with tiny params, as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def write(project: Path, section: str, key: str, value: object) -> None:
    """Write tiny params with one value changed."""
    params = tiny_params()
    params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def produced(project: Path) -> list[str]:
    """Everything a stage left behind besides params.yaml."""
    return sorted(
        str(p.relative_to(project)) for p in project.rglob("*") if p.name != "params.yaml"
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "backbone", "resnet9000", r"train\.backbone='resnet9000'.*resnet18"),
        ("train", "epochs", 0, r"train\.epochs=0"),
        ("train", "encoder_weights", "noisy-student", r"train\.encoder_weights.*imagenet"),
        ("train", "loss", "mse", r"train\.loss='mse'.*dice_focal"),
        ("base", "image_size", 100, r"base\.image_size=100.*multiple of 32"),
        ("train", "monitor", "val_acc", r"train\.monitor='val_acc'.*val_dice"),
        ("train", "registered_model", "a/b", r"train\.registered_model='a/b'"),
        ("train", "registered_model", "", r"train\.registered_model=''"),
        ("train", "lr_schedule", "step", r"train\.lr_schedule='step'.*cosine"),
        ("train", "ensemble", 0, r"train\.ensemble=0.*integer >= 1"),
        ("train", "ensemble", 1.5, r"train\.ensemble=1\.5.*integer >= 1"),
    ],
)
def test_train_refuses_bad_params_before_writing(
    project: Path, section: str, key: str, value: object, expected: str
) -> None:
    write(project, section, key, value)
    with pytest.raises(SarcomaSegError, match=expected):
        train.main()
    assert produced(project) == []


def test_plateau_schedule_without_a_monitor_is_refused(project: Path) -> None:
    params = tiny_params()
    params["train"].update(monitor="last", lr_schedule="plateau")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SarcomaSegError, match=r"train\.lr_schedule=plateau.*train\.monitor=last"):
        train.main()
    assert produced(project) == []


def test_ensemble_with_a_picking_monitor_is_refused(project: Path) -> None:
    params = tiny_params()
    params["train"].update(ensemble=2, monitor="val_dice", lr_schedule="cosine")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SarcomaSegError, match=r"train\.ensemble=2.*train\.monitor=val_dice"):
        train.main()
    assert produced(project) == []


def test_preprocess_refuses_image_size_not_multiple_of_32(project: Path) -> None:
    write(project, "base", "image_size", 72)
    with pytest.raises(SarcomaSegError, match=r"base\.image_size=72"):
        preprocess.main()
    assert produced(project) == []


def test_cli_error_is_one_line_and_nonzero(project: Path) -> None:
    write(project, "train", "epochs", 0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "stages.train"], cwd=project, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: train.epochs=0 is not allowed; it must be an integer >= 1"]
    assert "Traceback" not in done.stderr
    assert produced(project) == []


def test_chosen_epoch_is_the_monitors_best_or_the_last() -> None:
    history = {"loss": [0.9, 0.5, 0.4], "val_dice": [0.2, 0.7, 0.6], "val_loss": [0.8, 0.5, 0.3]}
    assert training.chosen_epoch(history, "val_dice") == 1
    assert training.chosen_epoch(history, "val_loss") == 2
    assert training.chosen_epoch(history, "last") == 2
