"""The MLflow pyfunc model: raw HU slices in, binary tumour masks out, preprocessing included."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from sarcoma_seg.transforms import Preprocessing

PACKAGE_DIR = Path(__file__).resolve().parent


class UnetSegmenter(mlflow.pyfunc.PythonModel):
    """Wraps the Keras U-Net with the exact preprocessing it was trained with."""

    def load_context(self, context: Any) -> None:
        """Load the Keras model (without its loss objects) and the preprocessing config."""
        from sarcoma_seg.model import load_unet

        config = json.loads(Path(context.artifacts["preprocessing"]).read_text())
        self.threshold = float(config.pop("threshold"))
        config["hu_window"] = tuple(config["hu_window"])
        self.pre = Preprocessing(**config)
        self.model = load_unet(Path(context.artifacts["keras_model"]))

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints
        """(N, rows, cols) or (rows, cols) HU -> uint8 masks of the same shape."""
        from sarcoma_seg.model import predict_probabilities

        hu = np.asarray(model_input, dtype=np.float32)
        single = hu.ndim == 2
        hu = hu[None] if single else hu
        probs = predict_probabilities(self.model, self.pre.volume(hu))
        masks = np.stack(
            [self.pre.restore_mask(p >= self.threshold, s.shape) for p, s in zip(probs, hu)]
        )
        return masks[0] if single else masks


def log_pyfunc(keras_path: Path, pre: Preprocessing, threshold: float, work_dir: Path) -> Any:
    """Log the U-Net as a pyfunc that loads without segmentation-models' loss objects."""
    config_path = Path(work_dir) / "preprocessing.json"
    config_path.write_text(json.dumps({**asdict(pre), "threshold": threshold}, indent=2))
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=UnetSegmenter(),
        artifacts={"keras_model": str(keras_path), "preprocessing": str(config_path)},
        code_paths=[str(PACKAGE_DIR)],
        # explicit requirements: MLflow's inference would load the model in a subprocess
        pip_requirements=_requirements(),
    )


def _requirements() -> list[str]:
    """Pinned runtime requirements of the served model."""
    from importlib.metadata import version

    names = ["tensorflow", "tf-keras", "segmentation-models", "opencv-python-headless", "numpy"]
    return [f"{n}=={version(n)}" for n in names] + ["mlflow"]
