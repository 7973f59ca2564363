"""The one door to a trained model folder (as nnU-Net's initialize_from_trained_model_folder):
its files and their hashes, its stored config (read through model_config), and the network opened
with one of two engines: ONNX Runtime (model.onnx, no TensorFlow) or TensorFlow (model.h5, the
architecture rebuilt from our code). predict, the evaluate stage, the MLflow pyfunc and the
benchmarks all open models here; train writes them with the names and writer found here.

A folder holds model.h5 (weights only), model.onnx, model_config.json and model_card.json."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarcoma_seg.digest import file_sha256
from sarcoma_seg.errors import SarcomaSegError, choice
from sarcoma_seg.io.common import check_inside
from sarcoma_seg.model_config import (
    DATA_CONFIG_NAME,
    LEGACY_CONFIG_NAME,
    MODEL_CONFIG_NAME,
    ModelConfig,
    check_inference,
    model_config_path,
    read_data_config,
    read_model_config,
    require_inference,
    stored_config_name,
    write_data_config,
    write_model_config,
)
from sarcoma_seg.onnx_model import ONNX_FILE, load_onnx
from sarcoma_seg.settings import Inference, ModelSection
from sarcoma_seg.transforms import Preprocessing

# the stored config's names and reader-writer, reached through this door too
__all__ = [
    "DATA_CONFIG_NAME",
    "LEGACY_CONFIG_NAME",
    "MODEL_CONFIG_NAME",
    "MODEL_FILE",
    "ModelConfig",
    "check_inference",
    "model_config_path",
    "open_model_folder",
    "read_data_config",
    "read_model_config",
    "require_inference",
    "stored_config_name",
    "write_data_config",
    "write_model_config",
]

MODEL_FILE = "model.h5"  # weights only, HDF5: the architecture comes from model.build_unet
ENGINES = ("onnx", "tensorflow")
SHA256_HEX = 64  # characters of a hex SHA-256 digest


def check_model_section(where: Path, section: ModelSection | None) -> ModelSection:
    """The stored model section, present and holding SHA-256 digests (the MODEL_CONFIG schema
    has checked its keys, types and limits; the backbone is checked where it is rebuilt)."""
    if section is None:
        raise SarcomaSegError(
            f"{where}: no model section, so {MODEL_FILE} is an old whole-model file that "
            "loading would execute; retrain it"
        )
    for key in ("weights_sha256", "onnx_sha256"):
        sha = getattr(section, key)
        if sha is None and key == "onnx_sha256":
            continue
        if len(sha) != SHA256_HEX or any(c not in "0123456789abcdef" for c in sha):
            raise SarcomaSegError(f"{where}: model.{key}={sha!r} is not a SHA-256 hex digest")
    return section


def load_unet(folder: Path, config: Path | None = None) -> Any:
    """The tensorflow engine: a saved U-Net for inference, the architecture rebuilt from the
    model section of the folder's stored config (or `config`), the weights file checked (hash,
    links, every dataset's shape and type) before Keras reads it. Nothing stored is executed."""
    from sarcoma_seg import model as unet  # TensorFlow and segmentation-models

    folder = Path(folder)
    path, config = folder / MODEL_FILE, Path(config or model_config_path(folder))
    check_inside(path, folder, "the model folder")
    section = check_model_section(config, read_model_config(config).model)
    choice(f"{config}: model.backbone", section.backbone, unet.backbones())
    if not path.is_file():
        raise SarcomaSegError(f"{path}: model file not found; run the train stage first")
    if file_sha256(path) != section.weights_sha256:
        raise SarcomaSegError(
            f"{path}: SHA-256 differs from weights_sha256 in {config}; the file was changed "
            "or damaged since training"
        )
    return unet.load_checked_weights(path, unet.rebuild_unet(section))


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
    predictor: Any  # inference.Predictor
    model: Any = None


def read_folder_config(folder: Path, config: Path | None = None) -> FolderConfig:
    """A model folder's stored config (model_config.json, an older model's preprocessing.json,
    or `config`), checked whole and required to say how the model infers; no TensorFlow. None
    of the folder's files may be a link that leads out of it."""
    folder = Path(folder)
    for name in (MODEL_FILE, ONNX_FILE, MODEL_CONFIG_NAME, LEGACY_CONFIG_NAME):
        if (folder / name).exists() or (folder / name).is_symlink():
            check_inside(folder / name, folder, "the model folder")
    where = Path(config or model_config_path(folder))
    found = read_model_config(where)
    inference = require_inference(where, found)
    return FolderConfig(folder, where, found, found.preprocessing, inference)


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
        section = check_model_section(stored.config_path, stored.config.model)
        path = stored.folder / ONNX_FILE
        if not path.is_file():
            raise SarcomaSegError(f"{path}: not found; use --engine tensorflow for this model")
        run = load_onnx(path, section.onnx_sha256, stored.config_path)
        return OpenedModel(stored, engine, run)
    model = load_unet(stored.folder, stored.config_path)
    return OpenedModel(stored, engine, model.predict_on_batch, model)


def open_model_folder(
    folder: Path, engine: str | None = None, config: Path | None = None
) -> OpenedModel:
    """A model folder, read, checked and loaded: the one way in."""
    stored = read_folder_config(folder, config)
    return open_engine(stored, engine_for(stored, engine))
