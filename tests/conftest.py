"""Shared fixtures: the project root, the real params shrunk to test size, the shared data."""

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from sarcoma_seg.params import load_params
from sarcoma_seg.settings import Data, data_from

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_params() -> dict[str, Any]:
    """The real params.yaml, shrunk so that the whole pipeline runs in seconds."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["base"]["image_size"] = 32
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"] = {"n_patients": 4, "shape": [12, 48, 48]}
    params["split"].update(train=2, val=1, test=1)
    params["train"].update(epochs=2, batch_size=4, early_stopping_patience=2)
    params["evaluate"]["figure_slices"] = 2
    return params


def data_section(**keys: Any) -> Data:
    """The data section of the tiny params with keys replaced (values as YAML gives them)."""
    return data_from(tiny_params()["data"] | keys)


@pytest.fixture(autouse=True, scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """predict caches registry models in a temporary folder, never the user's ~/.cache."""
    os.environ["SARCOMA_SEG_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT data not found at {SHARED_DATA}")
    return SHARED_DATA


def run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    """Run a command in the copy; fail the test with its output if it fails. MLflow goes to the
    copy's own store unless extra_env names a tracking URI."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= extra_env or {}
    env |= {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (("NAME", "sarcoma-seg tests"), ("EMAIL", "tests@localhost"))
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran(output: str) -> list[str]:
    """The stages that a dvc repro output says it ran."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def copy_project(repo: Path) -> Path:
    """A git repository holding the project's tracked files, without results."""
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "plots/", "dvc.lock")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    run(["git", "init", "-q"], repo)
    return repo


def committed_project(repo: Path, params: dict[str, Any]) -> Path:
    """copy_project with these params committed (dvc exp needs a commit to branch from)."""
    copy_project(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny params"], repo)
    return repo


def model_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a saved Keras HDF5 model, by its path in the file."""
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                found.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return found
