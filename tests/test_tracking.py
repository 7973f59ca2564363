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


def test_experiment_created_by_someone_else_meanwhile_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from sarcoma_seg import tracking

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    taken = mlflow.create_experiment("raced", artifact_location=(tmp_path / "a").as_uri())
    real, looked = mlflow.get_experiment_by_name, []

    def first_look_misses(name: str):  # a colleague creates it right after our first look-up
        looked.append(name)
        return None if len(looked) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", first_look_misses)
    assert tracking.use_experiment("raced") == taken
