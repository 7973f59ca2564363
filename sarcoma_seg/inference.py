"""Segment whole CT volumes with a trained U-Net: the one inference path that evaluate, the MLflow
pyfunc and predict share, so they give identical masks."""

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from sarcoma_seg.config import STORED_INFERENCE, check_mapping, check_model_config
from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.lesions import largest_component
from sarcoma_seg.transforms import Preprocessing

CONFIG_NAME = "preprocessing.json"
INFERENCE_PIXELS = 32 * 96 * 96  # pixels per model call (see inference_batch_size)


# inference.postprocess -> what it does to a mask (config.POSTPROCESS_NAMES lists the same names)
POSTPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda mask: mask,
    "largest_component": largest_component,
}


def check_inference(inference: dict[str, Any]) -> dict[str, Any]:
    """Validate the inference section against its schema (threshold, postprocessing, flip test-time
    augmentation, slice smoothing); absent keys but the threshold are off, as for older models."""
    check_mapping("inference", STORED_INFERENCE, inference)
    return {
        "threshold": float(inference["threshold"]),
        "postprocess": inference.get("postprocess", "none"),
        "tta_flip": inference.get("tta_flip", False),
        "z_sigma": float(inference.get("z_sigma", 0)),
    }


def save_config(
    path: Path,
    pre: Preprocessing,
    inference: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> None:
    """Write the preprocessing (and, once there is a model, how it infers and the model section
    that model.load_unet rebuilds it from) beside the data."""
    config = {**asdict(pre), "inference": inference}
    if model is not None:
        config["model"] = model
    Path(path).write_text(json.dumps(config, indent=2) + "\n")


def read_config(path: Path) -> dict[str, Any]:
    """The raw dict save_config wrote, every key checked against config.MODEL_CONFIG first."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SarcomaSegError(f"{path}: cannot read the preprocessing ({reason})") from exc
    try:
        check_model_config(config)
    except SarcomaSegError as exc:
        raise SarcomaSegError(f"{path}: {exc}") from None
    return config


def load_config(path: Path) -> tuple[Preprocessing, dict[str, Any] | None]:
    """Read what save_config wrote: the preprocessing and the inference section."""
    config = read_config(path)
    config.pop("model", None)  # model.load_unet reads it
    inference = config.pop("inference", None)
    for key in ("hu_window", "pet_window"):
        if config.get(key) is not None:
            config[key] = tuple(config[key])
    if config.get("hu_windows") is not None:
        config["hu_windows"] = tuple(tuple(w) for w in config["hu_windows"])
    return Preprocessing(**config), inference


def inference_batch_size(image_size: int) -> int:
    """Slices per model call at this image size: 32 at 96 px, fewer for larger images."""
    # a compiled call on 32 slices of 96 px uses both CPU cores (175 slices: 1.65 s, 2.14 s in 8s);
    # the pixel budget keeps a GPU's activation memory bounded at larger sizes (512 px: 1 slice)
    return max(1, INFERENCE_PIXELS // image_size**2)


def predict_batch(model: Any, batch: np.ndarray, size: int) -> np.ndarray:
    """(n <= size, rows, cols, channels) -> (n, rows, cols) probabilities from one compiled call,
    the batch padded to `size` slices so that every call has one shape (traced once)."""
    n = len(batch)
    if n < size:
        batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
    # predict_on_batch runs Keras' compiled predict function: eager calls go op by op (2.6x slower)
    return np.asarray(model.predict_on_batch(batch.astype(np.float32, copy=False)))[:n, ..., 0]


def volume_probabilities(
    model: Any,
    images: np.ndarray,
    tta_flip: bool,
    batch_size: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """Model-ready slices (N, size, size, channels) -> tumour probabilities (N, size, size), batch
    by batch (the same batches every caller, so every caller gets the same numbers); batch_size
    None: inference_batch_size of the images."""
    size = batch_size or inference_batch_size(images.shape[1])
    out = []
    for start in range(0, len(images), size):
        batch = images[start : start + size]
        probs = predict_batch(model, batch, size)
        if tta_flip:  # average with the left-right mirror, mirrored back
            probs = (probs + predict_batch(model, batch[:, :, ::-1], size)[:, :, ::-1]) / 2
        out.append(probs)
        if progress is not None:
            progress(len(probs))
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.float32)


def smooth_across_slices(probs: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth (slices, rows, cols) probabilities along the slice axis (sigma in slices):
    a 2D model sees each slice alone, so a tumour flickers between neighbours; 0 leaves them."""
    if not sigma or len(probs) < 2:
        return probs
    # nearest: the end slices are not faded by imagined empty slices beyond the scan
    return ndimage.gaussian_filter1d(probs, sigma, axis=0, mode="nearest")


def segment_volume(
    model: Any,
    pre: Preprocessing,
    ct: np.ndarray,
    inference: dict[str, Any],
    pet: np.ndarray | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """(slices, rows, cols) HU (and PET on that grid, if the model reads it) -> uint8 tumour
    mask on the same grid; progress(n) is called after every n slices."""
    images = pre.volume(ct, pet)
    probs = volume_probabilities(model, images, inference["tta_flip"], batch_size, progress)
    return probabilities_to_mask(probs, pre, ct.shape[1:], inference)


def probabilities_to_mask(
    probs: np.ndarray, pre: Preprocessing, shape: tuple[int, int], inference: dict[str, Any]
) -> np.ndarray:
    """Model-grid probabilities (slices, size, size) -> uint8 mask on the (rows, cols) slice grid:
    smoothed across slices, restored, thresholded and postprocessed as `inference` says."""
    probs = smooth_across_slices(probs, inference.get("z_sigma", 0.0))
    threshold = inference["threshold"]
    mask = np.stack([pre.restore(p, shape) >= threshold for p in probs]).astype(np.uint8)
    return POSTPROCESS[inference["postprocess"]](mask)
