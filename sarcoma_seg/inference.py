"""Segment whole CT volumes with a trained U-Net: the one inference path that evaluate, the MLflow
pyfunc and predict share, so they give identical masks."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.transforms import Preprocessing

CONFIG_NAME = "preprocessing.json"


def save_config(path: Path, pre: Preprocessing, threshold: float | None = None) -> None:
    """Write the preprocessing (and the model's threshold, once there is a model)."""
    config = {**asdict(pre), "threshold": threshold}
    Path(path).write_text(json.dumps(config, indent=2) + "\n")


def load_config(path: Path) -> tuple[Preprocessing, float | None]:
    """Read what save_config wrote."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SarcomaSegError(f"{path}: cannot read the preprocessing ({exc})") from exc
    threshold = config.pop("threshold", None)
    config["hu_window"] = tuple(config["hu_window"])
    return Preprocessing(**config), threshold


def segment_volume(
    model: Any, pre: Preprocessing, ct: np.ndarray, threshold: float, batch_size: int = 8
) -> np.ndarray:
    """(slices, rows, cols) HU -> uint8 tumour mask on the same grid."""
    from sarcoma_seg.model import predict_probabilities

    probs = predict_probabilities(model, pre.volume(ct), batch_size)
    return np.stack([pre.restore_mask(p >= threshold, s.shape) for p, s in zip(probs, ct)])
