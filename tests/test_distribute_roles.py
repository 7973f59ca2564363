"""Who is the chief of a TF_CONFIG cluster, what the other workers write, and the refusals."""

import json
import os
from pathlib import Path

import pytest

from sarcoma_seg.distribute import (
    is_chief,
    make_strategy,
    state_root,
    tf_config,
    worker_settings,
    writes_checkpoint,
)
from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.settings import settings_from
from tests.conftest import tiny_params

TWO = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


@pytest.mark.parametrize(
    ("config", "chief"),
    [
        ({}, True),
        ({"cluster": TWO, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": TWO, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": TWO | {"chief": ["h:3"]}, "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": TWO | {"chief": ["h:3"]}, "task": {"type": "chief", "index": 0}}, True),
    ],
)
def test_the_chief_is_task_chief_or_worker_0(config: dict, chief: bool) -> None:
    assert is_chief(config) is chief


def test_other_workers_write_to_a_temporary_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    params = tiny_params()
    params["train"]["distribute"] = "multi_worker"
    settings = settings_from(params)
    task = {"cluster": TWO, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(task))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///real.db")
    moved = worker_settings(settings).paths
    for key in ("model", "metrics", "plots", "figures"):
        assert getattr(moved, key).is_relative_to(moved.model.parent)
        assert "sarcoma-seg-worker-" in str(getattr(moved, key))
    assert moved.preprocessed == settings.paths.preprocessed  # reads the data
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///real.db"  # it never logs: untouched
    root = Path("repo")
    assert state_root("multi_worker", moved.model, root) == moved.model.parent
    monkeypatch.setenv("TF_CONFIG", json.dumps(task | {"task": {"type": "worker", "index": 0}}))
    assert worker_settings(settings) is settings  # the chief writes the real outputs
    assert state_root("multi_worker", moved.model, root) == root


def test_multi_worker_needs_a_valid_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SarcomaSegError, match="needs TF_CONFIG"):
        make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(SarcomaSegError, match="TF_CONFIG: not valid JSON"):
        tf_config()
    with pytest.raises(SarcomaSegError, match="train.distribute='gpu' is not allowed"):
        make_strategy("gpu")


def test_every_worker_restores_the_chiefs_checkpoint_and_only_the_chief_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from sarcoma_seg.checkpoint import open_checkpoint

    cluster = {"cluster": TWO, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert writes_checkpoint("multi_worker")
    chief = open_checkpoint(tmp_path, "key", writes_checkpoint("multi_worker"))  # locked
    meta = {"epoch": 3, "member": 0, "stopped": False, "history": {}}
    chief.save(meta, [np.ones(2)], [np.zeros(1)])
    chief.save_run_id("run-of-the-chief")
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster | {"task": {"type": "worker", "index": 1}}))
    assert not writes_checkpoint("multi_worker")
    worker = open_checkpoint(tmp_path, "key", writes_checkpoint("multi_worker"))  # the same folder
    state = worker.load()
    assert state is not None and state["epoch"] == 3 and np.array_equal(state["weights"][0], [1, 1])
    worker.save(meta | {"epoch": 4}, [np.zeros(2)], [np.zeros(1)])  # ignored: the chief writes
    worker.save_run_id("run-of-the-worker")
    worker.remove()  # ignored too: the chief removes it once its run is logged
    assert chief.load()["epoch"] == 3 and chief.run_id() == "run-of-the-chief"
    assert writes_checkpoint("mirrored")  # one process: it writes its own
    chief.remove()
    assert not chief.folder.exists()
