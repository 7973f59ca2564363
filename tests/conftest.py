"""Shared fixtures: the project root, the real params shrunk to test size, the shared data."""

import copy
from pathlib import Path
from typing import Any

import pytest

from sarcoma_seg.params import load_params

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_params() -> dict[str, Any]:
    """The real params.yaml, shrunk so that the whole pipeline runs in seconds."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["base"]["image_size"] = 32
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"] = {"n_patients": 4, "shape": [12, 48, 48]}
    params["split"] = {"train": 2, "val": 1, "test": 1}
    params["train"].update(epochs=2, batch_size=4, early_stopping_patience=2)
    params["evaluate"]["figure_slices"] = 2
    return params


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT data not found at {SHARED_DATA}")
    return SHARED_DATA
