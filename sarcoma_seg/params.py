"""Reading params.yaml, checked whole against the schema in sarcoma_seg/config.py, and validating
the values every stage shares."""

from pathlib import Path
from typing import Any

import yaml

from sarcoma_seg import config
from sarcoma_seg.errors import SarcomaSegError

PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Load the whole params.yaml as a dict, every key checked against the schema."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SarcomaSegError(f"{path}: cannot read params: {exc}") from exc
    if not isinstance(params, dict):
        raise SarcomaSegError(
            f"{path}: expected a mapping of sections, got {type(params).__name__}"
        )
    config.check_params(params, str(path))
    return params


def check_image_size(size: object) -> int:
    """base.image_size must be a multiple of 32 (the U-Net downsamples five times), bounded."""
    return config.check_image_size(size)


def check_int_at_least(name: str, value: object, minimum: int) -> int:
    """Return value if it is an int >= minimum, else raise naming the param."""
    return config.check_int(name, value, minimum)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys, as MLflow and dvc show them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
