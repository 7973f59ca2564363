"""The MLflow pyfunc model: raw HU slices in, binary tumour masks out, preprocessing included."""

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.inference import segment_volume
from sarcoma_seg.model_folder import MODEL_CONFIG_NAME, MODEL_FILE, read_model_config
from sarcoma_seg.onnx_model import ONNX_FILE
from sarcoma_seg.transforms import Preprocessing

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_ARTIFACT = "model_config"  # the pyfunc's artifact key of model_config.json
OLDER_CONFIG_ARTIFACT = "preprocessing"  # what models logged before model_config.json used
ONNX_ARTIFACT = "onnx_model"  # model.onnx, beside the weights in the artifacts folder


class UnetSegmenter(mlflow.pyfunc.PythonModel):
    """Wraps the Keras U-Net with the exact preprocessing it was trained with."""

    def load_context(self, context: Any) -> None:
        """The stored config, and the network through the model folder's one door: ONNX Runtime
        where the model was logged with model.onnx (checked as data: onnx_model.load_onnx), else
        the U-Net rebuilt from our code with only its weights read (model.load_unet)."""
        from sarcoma_seg.model_folder import open_model_folder

        config = Path(context.artifacts[config_artifact(context.artifacts)])
        folder = Path(context.artifacts["keras_model"]).parent
        opened = open_model_folder(folder, None, config)
        self.pre, self.inference = opened.stored.pre, opened.stored.inference
        self.predictor, self.engine = opened.predictor, opened.engine

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints
        """(N, rows, cols) or (rows, cols) HU -> uint8 masks of the same shape; a model that
        reads PET takes {"ct": ..., "pet": ...} with PET on the CT grid."""
        if isinstance(model_input, dict):
            hu, pet = model_input["ct"], model_input.get("pet")
        else:
            hu, pet = model_input, None
        hu = np.asarray(hu, dtype=np.float32)
        pet = None if pet is None else np.asarray(pet, dtype=np.float32)
        check_finite(hu, pet)
        single = hu.ndim == 2
        if single:
            hu, pet = hu[None], None if pet is None else pet[None]
        masks = segment_volume(None, self.pre, hu, self.inference, pet, predictor=self.predictor)
        return masks[0] if single else masks


def config_artifact(artifacts: dict[str, str]) -> str:
    """The artifact key of the stored config: model_config, or an older model's preprocessing."""
    return CONFIG_ARTIFACT if CONFIG_ARTIFACT in artifacts else OLDER_CONFIG_ARTIFACT


def check_finite(hu: np.ndarray, pet: np.ndarray | None) -> None:
    """Refuse NaN or infinite input as predict refuses such a scan (it would give an empty mask)."""
    for name, values in (("CT", hu), ("PET", pet)):
        if values is not None and not np.isfinite(values).all():
            raise SarcomaSegError(f"model input: {name} holds NaN or infinite voxels")


def signature_and_example(pre: Preprocessing) -> tuple[ModelSignature, Any]:
    """Raw slices in (float32 HU, any count and size), uint8 masks of the same shape out; a
    model that reads PET takes named ct and pet tensors."""
    volume = TensorSpec(np.dtype(np.float32), (-1, -1, -1))
    masks = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))])
    # a small synthetic example: a soft-tissue disc in air, as HU (and a PET hot spot, SUV)
    rows, cols = np.mgrid[:64, :64]
    disc = (rows - 32) ** 2 + (cols - 32) ** 2 < 24**2
    ct = np.where(disc, 40.0, -1000.0).astype(np.float32)[None]
    if pre.pet_window is None:
        return ModelSignature(inputs=Schema([volume]), outputs=masks), ct
    named = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1), name=n) for n in ("ct", "pet")])
    pet = np.where((rows - 32) ** 2 + (cols - 32) ** 2 < 6**2, 8.0, 0.5).astype(np.float32)[None]
    return ModelSignature(inputs=named, outputs=masks), {"ct": ct, "pet": pet}


def log_pyfunc(folder: Path, registered_model: str | None = None) -> Any:
    """Log the model folder the train stage wrote (its weights and model_config.json, as they
    are) as a pyfunc that loads without segmentation-models' loss objects, with its signature
    and an input example, and register it under registered_model."""
    folder = Path(folder)
    config_path = folder / MODEL_CONFIG_NAME
    signature, example = signature_and_example(read_model_config(config_path).preprocessing)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=UnetSegmenter(),
        artifacts=model_artifacts(folder, config_path),
        code_paths=[str(PACKAGE_DIR)],
        # explicit requirements: MLflow's inference would load the model in a subprocess
        pip_requirements=_requirements(),
        signature=signature,
        input_example=example,
        registered_model_name=registered_model,
    )


def model_artifacts(folder: Path, config_path: Path) -> dict[str, str]:
    """The pyfunc's artifacts: weights, config and, where exported, model.onnx (one folder)."""
    artifacts = {"keras_model": str(folder / MODEL_FILE), CONFIG_ARTIFACT: str(config_path)}
    if (folder / ONNX_FILE).is_file():
        artifacts[ONNX_ARTIFACT] = str(folder / ONNX_FILE)
    return artifacts


def _requirements() -> list[str]:
    """Pinned runtime requirements of the served model."""
    from importlib.metadata import version

    names = ["tensorflow", "tf-keras", "segmentation-models", "opencv-python-headless", "numpy"]
    names += ["onnx", "onnxruntime"]
    return [f"{n}=={version(n)}" for n in names] + ["mlflow"]
