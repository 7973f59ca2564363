"""The schema of params.yaml and of a model's stored config: every key with its type and range,
checked whole (unknown keys refused with the nearest valid one) before any stage reads a value.

Each section is a dict of key -> Spec, so a section can later become one frozen dataclass. The
schema holds no defaults: params.yaml is the only place they live. Adding a key is one line in
its section below. Names of choices that code registries own elsewhere (data sources, losses,
augmentations, ...) are repeated here so that checking params imports no TensorFlow or readers;
tests/test_params_schema.py fails if a registry and its list here drift apart.
"""

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from sarcoma_seg.errors import SarcomaSegError, choice

# base.image_size: the U-Net downsamples five times, so a side is a multiple of 32; 1024 is twice
# the 512-pixel CT matrix: larger sides only upsample the scan and multiply memory by the square
IMAGE_SIDE_STEP = 32
MAX_IMAGE_SIZE = 1024
# data.spacing, mm: below 0.1 mm a 50 cm field of view becomes 5000 x 5000 pixels per slice and a
# volume billions of voxels; above 20 mm a 5 cm tumour spans fewer than three voxels
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
# CT windows, HU: the 12-bit CT range (-1024 to 3071) with a margin; beyond it is a typo
HU_LIMITS = (-2000.0, 4000.0)
PNG8_LIMITS = (0.0, 255.0)  # 8-bit exported slices
SUV_LIMITS = (0.0, 100.0)  # FDG tumour SUVmax stays well below 100
MAX_PATIENTS = 10_000  # split counts: far above any sarcoma cohort; more is an extra zero
MAX_FOLDS = 20  # each fold is a whole training; leave-one-out beyond 20 patients is out of scope
MAX_CONTEXT_SLICES = 8  # 2.5D: 8 neighbours each side span 8 cm at 5 mm, beyond a tumour
MAX_CHANNELS = 2 * MAX_CONTEXT_SLICES + 1
MAX_SYNTHETIC_PATIENTS = 1000  # phantoms are for offline tests and demos, not cohorts
MAX_SYNTHETIC_SIDE = 512  # a phantom no larger than a real CT matrix (512 x 512, <= 512 slices)
MIN_SYNTHETIC_SIDE = 8  # phantom.MIN_SHAPE's smallest axis; phantom checks each axis's minimum
MAX_EPOCHS = 1000  # a CT set gives tens of steps per epoch; 1000 epochs is a typo, not a plan
MAX_ENSEMBLE = 10  # every member is a whole training and multiplies inference time
MAX_MODEL_CHANNELS = MAX_CHANNELS + 1  # a stored model: the CT channels plus PET
MAX_BATCH_SIZE = 512  # 64x the 8 used here: larger batches only exhaust memory on these models
MAX_FIGURE_SLICES = 32  # rows of the evaluation figure; more makes an unreadable image
MAX_SOURCES = 20  # data.sources entries merged into one run
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding (and so Keras' set_random_seed) takes 32 bits

# registries owned elsewhere, by name (tests check them against the code)
SOURCE_NAMES = ("synthetic", "kaggle", "hdf5", "nifti", "slices", "dicom")  # sources.SOURCES
LOSS_NAMES = ("dice_focal", "dice", "focal", "jaccard")  # model.LOSSES
MONITOR_NAMES = ("val_dice", "val_loss", "last")  # model.MONITORS and "last"
STRATEGY_NAMES = ("none", "mirrored", "multi_worker")  # distribute.STRATEGIES
LR_SCHEDULE_NAMES = ("plateau", "cosine", "constant")  # model.LR_SCHEDULES
ENCODER_WEIGHTS = (None, "imagenet")  # model.ENCODER_WEIGHTS
POSTPROCESS_NAMES = ("none", "largest_component")  # inference.POSTPROCESS
UNITS = ("HU", "png8")  # transforms.WINDOW_PARAMS


@dataclass(frozen=True)
class Spec:
    """One key: its kind (a KINDS name), bounds, allowed values and whether null is allowed;
    lists carry their item spec and length, sections and records their fields."""

    kind: str
    low: float | None = None
    high: float | None = None
    allowed: tuple[Any, ...] = ()
    nullable: bool = False
    optional: bool = False  # may be absent: only keys that older models' stored configs lack
    step: int = 1  # int: a multiple of step (image sides)
    open_low: bool = False  # number: low itself is excluded
    open_high: bool = False  # number: high itself is excluded
    length: tuple[int, int] = (0, 0)  # lists: (fewest, most) items
    item: "Spec | None" = None  # lists: each item's spec
    fields: Mapping[str, "Spec"] | None = None  # section and records: their keys


def integer(low: int, high: int, *, nullable: bool = False, step: int = 1) -> Spec:
    """An int (never a bool) in [low, high]."""
    return Spec("int", low, high, nullable=nullable, step=step)


def number(
    low: float, high: float, *, open_low: bool = False, open_high: bool = False, **kw: Any
) -> Spec:
    """An int or float (never a bool) between low and high, each end open or closed."""
    return Spec("number", low, high, open_low=open_low, open_high=open_high, **kw)


def probability() -> Spec:
    """A probability in [0, 1]."""
    return number(0, 1)


def fraction(*, nullable: bool = False) -> Spec:
    """A share strictly between 0 and 1."""
    return number(0, 1, open_low=True, open_high=True, nullable=nullable)


def flag() -> Spec:
    """true or false."""
    return Spec("bool")


def text(*, nullable: bool = False) -> Spec:
    """A non-empty string."""
    return Spec("text", nullable=nullable)


def one_of(*allowed: Any) -> Spec:
    """One of the allowed values (None among them allows null)."""
    return Spec("choice", allowed=allowed)


def window(low: float, high: float, *, nullable: bool = False) -> Spec:
    """[low, high] with low < high, both within [low, high] of the spec."""
    return Spec("window", low, high, nullable=nullable)


def span(item: Spec) -> Spec:
    """[low, high] with low <= high, each item as its spec (augmentation ranges)."""
    return Spec("span", item=item, length=(2, 2))


def vector(item: Spec, count: int, *, nullable: bool = False) -> Spec:
    """Exactly count items, each as its spec."""
    return Spec("vector", item=item, length=(count, count), nullable=nullable)


def listing(item: Spec, fewest: int, most: int, *, nullable: bool = False) -> Spec:
    """A list of fewest to most items, each as its spec."""
    return Spec("vector", item=item, length=(fewest, most), nullable=nullable)


def section(fields: Mapping[str, Spec], *, nullable: bool = False) -> Spec:
    """A nested mapping with exactly these keys."""
    return Spec("section", fields=fields, nullable=nullable)


def optional(spec: Spec) -> Spec:
    """The spec, allowed to be absent."""
    return replace(spec, optional=True)


def augmentation(**fields: Spec) -> Spec:
    """One train.augment block: enabled, p, and its own settings."""
    return section({"enabled": flag(), "p": probability(), **fields})


PATHS = {
    name: Spec("relpath")
    for name in ("raw", "split", "preprocessed", "model", "metrics", "plots", "figures")
}
BASE = {
    "seed": integer(0, MAX_SEED),
    "image_size": integer(IMAGE_SIDE_STEP, MAX_IMAGE_SIZE, step=IMAGE_SIDE_STEP),
}
SPACING = vector(number(MIN_SPACING_MM, MAX_SPACING_MM), 3, nullable=True)
SOURCE_ENTRY = {"source": one_of(*SOURCE_NAMES), "path": text(nullable=True)}
DATA = {
    "source": one_of(*SOURCE_NAMES),
    "path": text(nullable=True),
    "spacing": SPACING,
    "kaggle_dataset": text(),
    "roi": Spec("regex"),
    "sources": Spec("records", fields=SOURCE_ENTRY, length=(1, MAX_SOURCES), nullable=True),
    "synthetic": section(
        {
            "n_patients": integer(1, MAX_SYNTHETIC_PATIENTS),
            "shape": vector(integer(MIN_SYNTHETIC_SIDE, MAX_SYNTHETIC_SIDE), 3),
        }
    ),
}
SPLIT = {
    "train": integer(1, MAX_PATIENTS, nullable=True),
    "val": integer(0, MAX_PATIENTS),
    "test": integer(1, MAX_PATIENTS),
    "folds": integer(2, MAX_FOLDS, nullable=True),
    "fold": integer(0, MAX_FOLDS - 1),  # below split.folds: split.kfold_patients checks that
}
PREPROCESS = {
    "hu_window": window(*HU_LIMITS),
    "png8_window": window(*PNG8_LIMITS),
    "channels": integer(1, MAX_CHANNELS),
    "context_slices": integer(0, MAX_CONTEXT_SLICES),
    "hu_windows": listing(window(*HU_LIMITS), 1, MAX_CHANNELS, nullable=True),
    "pet_window": window(*SUV_LIMITS, nullable=True),
}
AUGMENT = {
    "horizontal_flip": augmentation(),
    "affine": augmentation(
        scale=span(number(0.1, 10)), translate_percent=number(0, 0.5), rotate=number(0, 180)
    ),
    "perspective": augmentation(scale=span(number(0, 0.5))),
    "brightness_contrast": augmentation(brightness_limit=number(0, 1), contrast_limit=number(0, 1)),
    "gamma": augmentation(gamma_limit=span(number(1, 1000))),  # percent, as albumentations'
    "blur_sharpen": augmentation(blur_limit=span(integer(3, 99))),  # kernel sides, pixels
    "gauss_noise": augmentation(std_range=span(number(0, 1))),
    "random_crop": augmentation(min_fraction=number(0, 1, open_low=True)),
    "pet_uptake": augmentation(scale=span(number(0, 10)), drop=probability()),
    "pet_blur": augmentation(sigma=span(number(0, 50, open_low=True))),  # model pixels
}
TRAIN = {
    "backbone": text(),  # segmentation-models' names: model.check_train_params checks them
    "encoder_weights": one_of(*ENCODER_WEIGHTS),
    "epochs": integer(1, MAX_EPOCHS),
    "ensemble": integer(1, MAX_ENSEMBLE),
    "batch_size": integer(1, MAX_BATCH_SIZE),
    "tumour_fraction": fraction(nullable=True),
    "bn_momentum": fraction(),
    "learning_rate": number(0, 1, open_low=True),
    "ema_momentum": fraction(nullable=True),
    "monitor": one_of(*MONITOR_NAMES),
    "lr_schedule": one_of(*LR_SCHEDULE_NAMES),
    "lr_factor": fraction(),
    "lr_patience": integer(0, MAX_EPOCHS),
    "early_stopping_patience": integer(0, MAX_EPOCHS),
    "loss": one_of(*LOSS_NAMES),
    "focal_weight": number(0, 100),
    "mlflow_experiment": text(),
    "registered_model": text(),  # model.check_train_params refuses '/' in it
    "distribute": one_of(*STRATEGY_NAMES),
    "mixed_precision": flag(),
    "checkpoint_budget_mb": number(0, 1e6),  # checkpoint.prune: stale ones beyond it removed
    "augment": section(AUGMENT),
}
INFERENCE = {
    "threshold": fraction(),
    "postprocess": one_of(*POSTPROCESS_NAMES),
    "tta_flip": flag(),
    "z_sigma": number(0, 10),  # slices; 0: off
    "review_below": number(0, 1, nullable=True),  # confidence below which a scan needs review
}
EVALUATE = {
    "figure_slices": integer(1, MAX_FIGURE_SLICES),
    "engine": one_of(None, "onnx", "tensorflow"),  # model_folder.ENGINES; null: onnx if present
}
PARAMS = {
    "paths": PATHS,
    "base": BASE,
    "data": DATA,
    "split": SPLIT,
    "preprocess": PREPROCESS,
    "train": TRAIN,
    "inference": INFERENCE,
    "evaluate": EVALUATE,
}

# a model's stored config (model_folder): the Preprocessing fields and how the model infers;
# keys that older models' files lack are optional, and the code fills them as before
STORED_INFERENCE = {
    key: spec if key == "threshold" else optional(spec) for key, spec in INFERENCE.items()
}
MODEL_CONFIG = {
    "hu_window": window(HU_LIMITS[0], max(HU_LIMITS[1], PNG8_LIMITS[1])),
    "image_size": BASE["image_size"],
    "channels": PREPROCESS["channels"],
    "context": optional(PREPROCESS["context_slices"]),
    "pet_window": optional(PREPROCESS["pet_window"]),
    "units": optional(one_of(*UNITS)),
    "hu_windows": optional(PREPROCESS["hu_windows"]),
    "inference": optional(section(STORED_INFERENCE, nullable=True)),
    # what load_unet rebuilds the architecture from (model.save_unet writes it); older models
    # lack it and are refused there, by name
    "model": optional(
        section(
            {
                "backbone": text(),
                "channels": integer(1, MAX_MODEL_CHANNELS),
                "members": integer(1, MAX_ENSEMBLE),
                "weights_sha256": text(),
                "onnx_sha256": optional(text(nullable=True)),
            }
        )
    ),
}


def is_int(value: object) -> bool:
    """An int that is not a bool (YAML's true is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def refuse(name: str, value: object, requirement: str, nullable: bool = False) -> SarcomaSegError:
    """The one-line error for a value that breaks its requirement."""
    also = "null or " if nullable else ""
    return SarcomaSegError(f"{name}={value!r} is not allowed; it must be {also}{requirement}")


def interval(spec: Spec) -> str:
    """[low, high] with round brackets at open ends."""
    left, right = "(" if spec.open_low else "[", ")" if spec.open_high else "]"
    return f"{left}{spec.low:g}, {spec.high:g}{right}"


def describe(spec: Spec) -> str:
    """What a value of this spec must be, in words (used for list items)."""
    if spec.kind == "int" and spec.step > 1:
        return f"a multiple of {spec.step} from {spec.low} to {spec.high}"
    if spec.kind == "int":
        return f"an integer from {spec.low} to {spec.high}"
    if spec.kind == "number":
        return f"a number in {interval(spec)}"
    if spec.kind == "window":
        return f"[low, high] with low < high within [{spec.low:g}, {spec.high:g}]"
    if spec.kind == "section":
        return "a mapping with keys " + ", ".join(spec.fields)
    return spec.kind


def check_int(name: str, value: object, low: int, high: int | None = None, step: int = 1) -> int:
    """An int in [low, high] (a multiple of step), else raise naming the param."""
    if step > 1:
        if not is_int(value) or value < low or value > (high or value) or value % step:
            raise refuse(name, value, f"a multiple of {step} from {low} to {high}")
        return value
    if not is_int(value) or value < low:
        raise refuse(name, value, f"an integer >= {low}")
    if high is not None and value > high:
        raise refuse(name, value, f"an integer <= {high}")
    return value


def in_range(spec: Spec, value: object) -> bool:
    """A number within the spec's interval."""
    if not is_number(value):
        return False
    above = value > spec.low if spec.open_low else value >= spec.low
    below = value < spec.high if spec.open_high else value <= spec.high
    return above and below


def yaml_text_hint(value: object) -> str:
    """A hint when YAML read a number as text: PyYAML needs a dot in 1.0e-3, not 1e-3."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
        return f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-3)"
    return ""


def check_window(
    name: str, value: Any, low: float | None = None, high: float | None = None
) -> tuple[float, float]:
    """A [low, high] window with low < high (within the given limits), as floats."""
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(is_number(v) for v in value)
        and value[0] < value[1]
        and (low is None or value[0] >= low)
        and (high is None or value[1] <= high)
    )
    if not ok:
        limits = "" if low is None else f" within [{low:g}, {high:g}]"
        raise SarcomaSegError(
            f"{name}={value!r} is not allowed; give [low, high] with low < high{limits}"
        )
    return float(value[0]), float(value[1])


def check_image_size(size: object) -> int:
    """base.image_size: a multiple of 32 (the U-Net downsamples five times) up to the bound."""
    return check_int("base.image_size", size, IMAGE_SIDE_STEP, MAX_IMAGE_SIZE, IMAGE_SIDE_STEP)


def check_spacing(spacing: object) -> tuple[float, float, float] | None:
    """data.spacing: null keeps native spacing, else [slice, row, col] mm within the bounds."""
    check_value("data.spacing", SPACING, spacing)
    return None if spacing is None else tuple(float(s) for s in spacing)


def _check_items(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: a list of the spec's length whose items each pass the item spec; sections and
    windows name the item, plain items the whole list."""
    fewest, most = spec.length
    count = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    requirement = f"a list of {count} items, each {describe(spec.item)}"
    if not isinstance(value, list | tuple) or not fewest <= len(value) <= most:
        raise refuse(name, value, requirement, spec.nullable)
    for i, item in enumerate(value):
        try:
            check_value(f"{name}[{i}]", spec.item, item, where)
        except SarcomaSegError:
            if spec.item.kind in ("section", "window"):
                raise
            raise refuse(name, value, requirement, spec.nullable) from None


def _check_number(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: a number within the interval."""
    if not in_range(spec, value):
        raise refuse(name, value, describe(spec) + yaml_text_hint(value), spec.nullable)


def _check_int(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: an integer within the bounds."""
    try:
        check_int(name, value, int(spec.low), int(spec.high), spec.step)
    except SarcomaSegError as exc:
        message = str(exc).replace("it must be ", "it must be null or ") if spec.nullable else exc
        raise SarcomaSegError(f"{message}{yaml_text_hint(value)}") from None


def _check_bool(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: true or false."""
    if not isinstance(value, bool):
        raise refuse(name, value, "true or false")


def _check_text(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise refuse(name, value, "a non-empty string", spec.nullable)


def _check_relpath(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: a path inside the project (DVC tracks outputs only inside the repository)."""
    if not isinstance(value, str) or not value.strip():
        raise refuse(name, value, "a non-empty relative path")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", value):
        raise refuse(name, value, "a relative path inside the project, without '..'")


def _check_regex(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: a regular expression that compiles."""
    if not isinstance(value, str) or not value:
        raise refuse(name, value, "a non-empty regular expression")
    try:
        re.compile(value)
    except re.error as exc:
        raise refuse(name, value, f"a valid regular expression ({exc})") from None


def _check_choice(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: one of the allowed values (errors.choice words it)."""
    choice(name, value, spec.allowed)


def _check_window(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: [low, high] within the spec's limits."""
    check_window(name, value, spec.low, spec.high)


def _check_span(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: [low, high] with low <= high, each item as its spec."""
    ok = isinstance(value, list | tuple) and len(value) == 2
    try:
        for i, item in enumerate(value if ok else []):
            check_value(f"{name}[{i}]", spec.item, item, where)
    except SarcomaSegError:
        ok = False
    if not ok or value[0] > value[1]:
        raise refuse(name, value, f"[low, high] with low <= high, each {describe(spec.item)}")


def _check_section(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: a nested mapping."""
    check_mapping(name, spec.fields, value, where)


def _check_records(name: str, spec: Spec, value: object, where: str | None) -> None:
    """KINDS entry: a list of mappings with the spec's fields."""
    _check_items(name, replace(spec, item=section(spec.fields)), value, where)


KINDS = {
    "int": _check_int,
    "number": _check_number,
    "bool": _check_bool,
    "text": _check_text,
    "relpath": _check_relpath,
    "regex": _check_regex,
    "choice": _check_choice,
    "window": _check_window,
    "span": _check_span,
    "vector": _check_items,
    "section": _check_section,
    "records": _check_records,
}


def check_value(name: str, spec: Spec, value: object, where: str | None = None) -> None:
    """Check one value against its spec; null passes only where the spec allows it."""
    if value is None and spec.nullable:
        return
    if spec.kind not in KINDS:  # a bug in a schema, not bad input
        raise KeyError(f"{name}: unknown spec kind {spec.kind!r}; use one of {list(KINDS)}")
    KINDS[spec.kind](name, spec, value, where)


def join(prefix: str, key: object) -> str:
    """A dotted name: prefix.key, or key at the top."""
    return f"{prefix}.{key}" if prefix else str(key)


def check_mapping(
    prefix: str, fields: Mapping[str, Spec], values: object, where: str | None = None
) -> None:
    """Check a mapping against its fields: unknown keys first (with the nearest valid key), then
    missing ones, then every value. `where` (a file name) starts each key-level message."""
    label = f"{where}: " if where else ""
    if not isinstance(values, dict):
        got = "null" if values is None else type(values).__name__
        where_in = f"{prefix}: " if prefix else ""
        raise SarcomaSegError(f"{label}{where_in}expected a mapping of keys, got {got}")
    for key in values:
        if key not in fields:
            raise SarcomaSegError(
                f"{label}{join(prefix, key)}: unknown key; {hint(prefix, key, fields)}"
            )
    for key, spec in fields.items():
        if key not in values and not spec.optional:
            what = "section" if spec.kind == "section" and not prefix else "key"
            raise SarcomaSegError(f"{label}{join(prefix, key)}: missing {what}")
    for key, spec in fields.items():
        if key in values:
            check_value(join(prefix, key), spec, values[key], where)


def hint(prefix: str, key: object, fields: Mapping[str, Spec]) -> str:
    """'did you mean <nearest>?' or, with nothing near, the valid keys."""
    near = difflib.get_close_matches(str(key), list(fields), n=1)
    if near:
        return f"did you mean {join(prefix, near[0])}?"
    return "valid keys: " + ", ".join(fields)


def check_params(params: object, where: str) -> None:
    """Check a whole params file against PARAMS; the first problem is one SarcomaSegError."""
    check_mapping("", {name: section(fields) for name, fields in PARAMS.items()}, params, where)


def check_model_config(config: object) -> None:
    """Check a model's stored config (model_folder.read_model_config) against MODEL_CONFIG."""
    check_mapping("", MODEL_CONFIG, config)


def schema_keys(fields: Mapping[str, Spec], prefix: str = "") -> list[str]:
    """Every leaf key of a schema as a dotted name, as flatten() names params."""
    keys: list[str] = []
    for key, spec in fields.items():
        name = join(prefix, key)
        keys += schema_keys(spec.fields, name) if spec.kind == "section" else [name]
    return keys
