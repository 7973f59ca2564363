"""The stored config of a model folder (model_config.json) and of the preprocessed data
(data_config.json): one reader-writer for the format, every key checked against the schema
(config.MODEL_CONFIG) when it is read. Models trained before model_config.json named their config
preprocessing.json (LEGACY_CONFIG_NAME): the one documented fallback, read with the same checks.
Opening a model (its files, hashes and engines) is model_folder's work."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sarcoma_seg.config import STORED_INFERENCE, check_mapping, check_model_config
from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io.common import read_json
from sarcoma_seg.settings import Inference, ModelSection
from sarcoma_seg.transforms import Preprocessing

MODEL_CONFIG_NAME = "model_config.json"  # preprocessing, inference, architecture and hashes
# what models trained before model_config.json called their whole config (registry versions
# hold it): the one documented fallback, read with the same checks
LEGACY_CONFIG_NAME = "preprocessing.json"
MAX_CONFIG_BYTES = 64 << 10  # a stored config is ~1 kB; 64 kB leaves room, a 200 MB one is refused
DATA_CONFIG_NAME = "data_config.json"  # the preprocessed data's Preprocessing (no model yet)
# what models stored before these inference keys existed did: no postprocessing, no flip, no
# smoothing, no review rule (new models store every key, from params.yaml)
OLDER_MODEL_INFERENCE = {"postprocess": "none", "tta_flip": False, "z_sigma": 0.0}


@dataclass(frozen=True)
class ModelConfig:
    """A stored config: the preprocessing the model was trained with, how it infers and its
    architecture (the preprocessed data's config holds the preprocessing only)."""

    preprocessing: Preprocessing
    inference: Inference | None
    model: ModelSection | None


def check_inference(inference: dict[str, Any]) -> dict[str, Any]:
    """Validate a stored inference section against its schema; keys an older model lacks are
    what it did."""
    check_mapping("inference", STORED_INFERENCE, inference)
    filled = {**OLDER_MODEL_INFERENCE, **inference}
    return {
        "threshold": float(filled["threshold"]),
        "postprocess": filled["postprocess"],
        "tta_flip": filled["tta_flip"],
        "z_sigma": float(filled["z_sigma"]),
        "review_below": filled.get("review_below"),
    }


def stored_form(config: ModelConfig) -> dict[str, Any]:
    """The JSON form of a stored config: the preprocessing fields, inference, model."""
    stored = {**asdict(config.preprocessing), "inference": None}
    if config.inference is not None:
        inference = config.inference  # numbers stored as floats, as check_inference reads them
        stored["inference"] = asdict(inference) | {
            "threshold": float(inference.threshold),
            "z_sigma": float(inference.z_sigma),
        }
    if config.model is not None:
        stored["model"] = asdict(config.model)
    return stored


def write_model_config(
    path: Path,
    pre: Preprocessing,
    inference: Inference | dict[str, Any] | None = None,
    model: ModelSection | None = None,
) -> None:
    """Write a stored config: the preprocessing and, once there is a model, how it infers and
    its model section; an inference section given as a mapping is checked first."""
    if isinstance(inference, dict):
        inference = Inference(**check_inference(inference))
    text = json.dumps(stored_form(ModelConfig(pre, inference, model)), indent=2) + "\n"
    Path(path).write_text(text)


def stored_preprocessing(config: dict[str, Any]) -> Preprocessing:
    """The Preprocessing of a checked stored config (keys an older model lacks: its defaults)."""
    fields = {k: v for k, v in config.items() if k not in ("inference", "model")}
    for key in ("hu_window", "pet_window"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    if fields.get("hu_windows") is not None:
        fields["hu_windows"] = tuple(tuple(w) for w in fields["hu_windows"])
    return Preprocessing(**fields)


def read_model_config(path: Path) -> ModelConfig:
    """A stored config, every key checked against config.MODEL_CONFIG, as ModelConfig (a model
    section's backbone and hashes are checked where the model is opened)."""
    try:
        config = read_json(path, MAX_CONFIG_BYTES)
    except SarcomaSegError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise SarcomaSegError(f"{path}: cannot read the stored config ({reason})") from None
    try:
        check_model_config(config)
    except SarcomaSegError as exc:
        raise SarcomaSegError(f"{path}: {exc}") from None
    inference, model = config.get("inference"), config.get("model")
    return ModelConfig(
        stored_preprocessing(config),
        None if inference is None else Inference(**check_inference(inference)),
        None if model is None else ModelSection(**model),
    )


def write_data_config(folder: Path, pre: Preprocessing) -> None:
    """The preprocessed data's config: the Preprocessing train, evaluate and predict reuse."""
    write_model_config(Path(folder) / DATA_CONFIG_NAME, pre)


def read_data_config(folder: Path) -> Preprocessing:
    """The Preprocessing the preprocess stage wrote beside its data."""
    return read_model_config(Path(folder) / DATA_CONFIG_NAME).preprocessing


def require_inference(path: Path, config: ModelConfig) -> Inference:
    """The inference section of a model's stored config; a config without one (the
    preprocessed data's) cannot segment."""
    if config.inference is None:
        raise SarcomaSegError(f"{path}: has no inference section; it is not a model's config")
    return config.inference


def stored_config_name(names: set[str]) -> str | None:
    """The stored config among a model's file names: model_config.json, else an older model's
    preprocessing.json, else None."""
    for name in (MODEL_CONFIG_NAME, LEGACY_CONFIG_NAME):
        if name in names:
            return name
    return None


def model_config_path(folder: Path) -> Path:
    """A model folder's stored config: model_config.json, or an older model's
    preprocessing.json when only that exists."""
    folder = Path(folder)
    present = {n for n in (MODEL_CONFIG_NAME, LEGACY_CONFIG_NAME) if (folder / n).is_file()}
    return folder / (stored_config_name(present) or MODEL_CONFIG_NAME)
