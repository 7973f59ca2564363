"""params.yaml as typed, frozen settings: one dataclass per section, built once from the params
that sarcoma_seg/config.py has checked whole. Functions take the section (or the fields) they
read; params.yaml is the only place a default lives, so no field here has one.

Values keep the types YAML gave them (an int stays an int where a float is allowed), only lists
become tuples, so `as_params` gives back exactly the checked params: what MLflow logs and what
the checkpoint key hashes.
"""

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from sarcoma_seg.params import PARAMS_FILE, load_params

Window = tuple[float, float]


@dataclass(frozen=True)
class Paths:
    """paths: every data path of the pipeline (dvc.yaml reads the same ones)."""

    raw: Path
    split: Path
    preprocessed: Path
    model: Path
    metrics: Path
    plots: Path
    figures: Path


@dataclass(frozen=True)
class Base:
    """base: the seed and the model's input side."""

    seed: int
    image_size: int


@dataclass(frozen=True)
class SourceEntry:
    """One entry of data.sources."""

    source: str
    path: str | None


@dataclass(frozen=True)
class Synthetic:
    """data.synthetic: the offline phantoms."""

    n_patients: int
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Data:
    """data: where the raw data comes from."""

    source: str
    path: str | None
    spacing: tuple[float, float, float] | None
    kaggle_dataset: str
    roi: str
    sources: tuple[SourceEntry, ...] | None
    synthetic: Synthetic


@dataclass(frozen=True)
class Split:
    """split: patient counts, or k-fold cross-validation."""

    train: int | None
    val: int
    test: int
    folds: int | None
    fold: int


@dataclass(frozen=True)
class Preprocess:
    """preprocess: the intensity windows and the channels the model sees."""

    hu_window: Window
    png8_window: Window
    channels: int
    context_slices: int
    hu_windows: tuple[Window, ...] | None
    pet_window: Window | None


@dataclass(frozen=True)
class Train:
    """train: the model, its optimisation and the augmentation. `augment` stays the checked
    mapping {name: {enabled, p, settings...}} that transforms.build_augmentation reads."""

    backbone: str
    encoder_weights: str | None
    epochs: int
    ensemble: int
    batch_size: int
    tumour_fraction: float | None
    bn_momentum: float
    learning_rate: float
    ema_momentum: float | None
    monitor: str
    lr_schedule: str
    lr_factor: float
    lr_patience: int
    early_stopping_patience: int
    loss: str
    focal_weight: float
    mlflow_experiment: str
    registered_model: str
    distribute: str
    mixed_precision: bool
    checkpoint_budget_mb: float
    augment: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Inference:
    """inference: how a model turns probabilities into a mask (the model carries it)."""

    threshold: float
    postprocess: str
    tta_flip: bool
    z_sigma: float
    review_below: float | None  # None: the model carries no review rule (older models)


@dataclass(frozen=True)
class ModelSection:
    """A model folder's architecture (what model.rebuild_unet builds) and its files' hashes."""

    backbone: str
    channels: int
    members: int
    weights_sha256: str
    onnx_sha256: str | None = None  # model.onnx's hash; None: a model trained before the export


@dataclass(frozen=True)
class Evaluate:
    """evaluate: the evaluation figure."""

    figure_slices: int
    engine: str | None  # None: ONNX Runtime where the model folder holds model.onnx


@dataclass(frozen=True)
class Settings:
    """The whole params.yaml, one field per section."""

    paths: Paths
    base: Base
    data: Data
    split: Split
    preprocess: Preprocess
    train: Train
    inference: Inference
    evaluate: Evaluate

    def as_params(self) -> dict[str, Any]:
        """The plain params dict these settings were built from (lists, str paths)."""
        return plain(self)


def tupled(value: Any) -> Any:
    """Lists (nested too) as tuples, so a frozen dataclass holds no mutable list."""
    if isinstance(value, list):
        return tuple(tupled(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """A settings value back in params.yaml's form: dicts, lists, str paths."""
    if is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def section_of(cls: type, values: dict[str, Any]) -> Any:
    """A flat section dataclass from its checked mapping, lists as tuples."""
    return cls(**{f.name: tupled(values[f.name]) for f in fields(cls)})


def data_from(values: dict[str, Any]) -> Data:
    """The data section, its nested records as dataclasses."""
    entries = values["sources"]
    return Data(
        source=values["source"],
        path=values["path"],
        spacing=tupled(values["spacing"]),
        kaggle_dataset=values["kaggle_dataset"],
        roi=values["roi"],
        sources=None if entries is None else tuple(section_of(SourceEntry, e) for e in entries),
        synthetic=section_of(Synthetic, values["synthetic"]),
    )


def train_from(values: dict[str, Any]) -> Train:
    """The train section; augment is copied so that the settings share nothing mutable."""
    scalar = {f.name: values[f.name] for f in fields(Train) if f.name != "augment"}
    augment = {name: dict(block) for name, block in values["augment"].items()}
    return Train(**scalar, augment=augment)


def settings_from(checked: dict[str, Any]) -> Settings:
    """Settings from params that config.check_params has passed (every key present). Building
    every section is not using it: tests/test_deps.py counts a stage's `settings.<section>`
    reads, so this argument is not called params."""
    return Settings(
        paths=Paths(**{f.name: Path(checked["paths"][f.name]) for f in fields(Paths)}),
        base=section_of(Base, checked["base"]),
        data=data_from(checked["data"]),
        split=section_of(Split, checked["split"]),
        preprocess=section_of(Preprocess, checked["preprocess"]),
        train=train_from(checked["train"]),
        inference=section_of(Inference, checked["inference"]),
        evaluate=section_of(Evaluate, checked["evaluate"]),
    )


def load_settings(path: str | Path = PARAMS_FILE) -> Settings:
    """params.yaml checked whole against the schema, then built into Settings once."""
    return settings_from(load_params(path))
