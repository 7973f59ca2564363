"""Where MLflow runs go: the repository root's SQLite store, whatever the working directory."""

from pathlib import Path

import pytest

from sarcoma_seg.params import flatten
from sarcoma_seg.tracking import repo_root, tracking_uri


def test_store_is_at_the_repo_root_from_any_subfolder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "stages" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "stages" / "deep")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5005")
    assert tracking_uri() == "http://127.0.0.1:5005"


def test_queued_experiment_copies_report_to_the_real_root(tmp_path: Path) -> None:
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    assert repo_root(copy) == tmp_path.resolve()


def test_params_flatten_to_dotted_keys() -> None:
    nested = {"base": {"seed": 1}, "train": {"augment": {"affine": {"p": 0.5}}, "epochs": 2}}
    assert flatten(nested) == {"base.seed": 1, "train.augment.affine.p": 0.5, "train.epochs": 2}
