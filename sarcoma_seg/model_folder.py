"""The one door to a trained model folder (as nnU-Net's initialize_from_trained_model_folder):
its stored config read and checked, and the network opened with one of two engines, ONNX
Runtime (model.onnx, no TensorFlow) or TensorFlow (model.h5 rebuilt by model.load_unet).
predict, the evaluate stage, the MLflow pyfunc and the benchmarks all open models here."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarcoma_seg.errors import SarcomaSegError, choice
from sarcoma_seg.inference import (
    ModelConfig,
    Predictor,
    model_config_path,
    read_model_config,
    require_inference,
)
from sarcoma_seg.onnx_model import ONNX_FILE, load_onnx
from sarcoma_seg.settings import Inference
from sarcoma_seg.transforms import Preprocessing

ENGINES = ("onnx", "tensorflow")


@dataclass(frozen=True)
class FolderConfig:
    """A model folder's checked config: where it is, what it holds, how it infers."""

    folder: Path
    config_path: Path
    config: ModelConfig
    pre: Preprocessing
    inference: Inference


@dataclass(frozen=True)
class OpenedModel:
    """A model ready to run: its config and the network as a batch -> probabilities function
    (model: the Keras model for the tensorflow engine, None for onnx)."""

    stored: FolderConfig
    engine: str
    predictor: Predictor
    model: Any = None


def read_folder_config(folder: Path, config: Path | None = None) -> FolderConfig:
    """A model folder's stored config (model_config.json, an older model's preprocessing.json,
    or `config`), checked whole and required to say how the model infers; no TensorFlow."""
    folder = Path(folder)
    where = Path(config or model_config_path(folder))
    stored = read_model_config(where)
    inference = require_inference(where, stored)
    return FolderConfig(folder, where, stored, stored.preprocessing, inference)


def engine_for(stored: FolderConfig, engine: str | None) -> str:
    """The engine asked for, or the default: onnx where the folder holds a hashed model.onnx,
    else tensorflow (models trained before the export)."""
    if engine is not None:
        return choice("--engine", engine, list(ENGINES))
    section = stored.config.model
    has_onnx = section is not None and section.onnx_sha256 is not None
    return "onnx" if has_onnx and (stored.folder / ONNX_FILE).is_file() else "tensorflow"


def open_engine(stored: FolderConfig, engine: str) -> OpenedModel:
    """Load the network of a read folder with one engine (every check of its loader first)."""
    if engine == "onnx":
        section = stored.config.model
        if section is None:
            raise SarcomaSegError(f"{stored.config_path}: no model section; retrain the model")
        path = stored.folder / ONNX_FILE
        if not path.is_file():
            raise SarcomaSegError(f"{path}: not found; use --engine tensorflow for this model")
        return OpenedModel(stored, engine, load_onnx(path, section.onnx_sha256, stored.config_path))
    from sarcoma_seg.model import load_unet  # TensorFlow and segmentation-models

    model = load_unet(stored.folder, stored.config_path)
    return OpenedModel(stored, engine, model.predict_on_batch, model)


def open_model_folder(
    folder: Path, engine: str | None = None, config: Path | None = None
) -> OpenedModel:
    """A model folder, read, checked and loaded: the one way in."""
    stored = read_folder_config(folder, config)
    return open_engine(stored, engine_for(stored, engine))
