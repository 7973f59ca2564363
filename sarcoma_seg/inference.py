"""Segment whole CT volumes with a trained U-Net: the one inference path that evaluate, the MLflow
pyfunc and predict share, so they give identical masks."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sarcoma_seg.lesions import largest_component
from sarcoma_seg.settings import Inference
from sarcoma_seg.transforms import Preprocessing

INFERENCE_PIXELS = 16 * 96 * 96  # pixels per model call (see inference_batch_size)
# commitment(): the "suspected" region is where the probability reaches this share of the
# threshold; a firm prediction has sharp edges, so its committed and suspected regions match
REVIEW_FLOOR = 0.25
Predictor = Callable[[np.ndarray], np.ndarray]  # a float32 batch -> the model's output


# inference.postprocess -> what it does to a mask (config.POSTPROCESS_NAMES lists the same names)
POSTPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda mask: mask,
    "largest_component": largest_component,
}


def inference_batch_size(image_size: int) -> int:
    """Slices per model call at this image size: 16 at 96 px, fewer for larger images."""
    # 175 slices of 96 px on 2 CPU cores (2026-12-07): 2.2 s in calls of 8, 16 or 24 slices,
    # 2.8 s in 32s (one machine earlier: 1.65 s in 32s, 2.14 s in 8s); 16 pads 175 to 176, not
    # 192; the pixel budget keeps a GPU's activation memory bounded at larger sizes (512 px: 1)
    return max(1, INFERENCE_PIXELS // image_size**2)


def predict_batch(
    model: Any, batch: np.ndarray, size: int, predictor: Predictor | None = None
) -> np.ndarray:
    """(n <= size, rows, cols, channels) -> (n, rows, cols) probabilities from one compiled call,
    the batch padded to `size` slices so that every call has one shape (traced once); predictor:
    traced_predictor's function for that shape instead of Keras' predict_on_batch."""
    n = len(batch)
    if n < size:
        batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
    # predict_on_batch runs Keras' compiled predict function: eager calls go op by op (2.6x slower)
    run = predictor or model.predict_on_batch
    return np.asarray(run(batch.astype(np.float32, copy=False)))[:n, ..., 0]


def traced_predictor(model: Any, batch_shape: tuple[int, int, int, int]) -> Predictor:
    """The model's forward pass as one graph, traced now for float32 batches of batch_shape:
    the ops predict_on_batch runs (the same probabilities, bit for bit: tests/test_inference.py),
    but traced before the first batch exists, so predict traces while it reads the scan."""
    import tensorflow as tf

    forward = tf.function(lambda images: model(images, training=False))
    graph = forward.get_concrete_function(tf.TensorSpec(batch_shape, tf.float32))

    def run(batch: np.ndarray) -> np.ndarray:
        """Probabilities of one batch of exactly batch_shape."""
        return graph(tf.constant(batch)).numpy()

    return run


def volume_probabilities(
    model: Any,
    images: np.ndarray,
    tta_flip: bool,
    batch_size: int | None = None,
    progress: Callable[[int], Any] | None = None,
    predictor: Predictor | None = None,
) -> np.ndarray:
    """Model-ready slices (N, size, size, channels) -> tumour probabilities (N, size, size), batch
    by batch (the same batches every caller, so every caller gets the same numbers); batch_size
    None: inference_batch_size of the images; predictor: see predict_batch."""
    size = batch_size or inference_batch_size(images.shape[1])
    out = []
    for start in range(0, len(images), size):
        batch = images[start : start + size]
        probs = predict_batch(model, batch, size, predictor)
        if tta_flip:  # average with the left-right mirror, mirrored back
            flipped = predict_batch(model, batch[:, :, ::-1], size, predictor)
            probs = (probs + flipped[:, :, ::-1]) / 2
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
    from scipy import ndimage  # here: SciPy's import is a third of `predict --help`

    return ndimage.gaussian_filter1d(probs, sigma, axis=0, mode="nearest")


def segment_volume(
    model: Any,
    pre: Preprocessing,
    ct: np.ndarray,
    inference: Inference,
    pet: np.ndarray | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], Any] | None = None,
    predictor: Predictor | None = None,
) -> np.ndarray:
    """(slices, rows, cols) HU (and PET on that grid, if the model reads it) -> uint8 tumour
    mask on the same grid; progress(n) is called after every n slices; predictor: see
    predict_batch."""
    images = pre.volume(ct, pet)
    shape = ct.shape[1:]
    return segment_images(
        model, pre, images, shape, inference, batch_size, progress, predictor
    ).mask


def segment_images(
    model: Any,
    pre: Preprocessing,
    images: np.ndarray,
    shape: tuple[int, int],
    inference: Inference,
    batch_size: int | None = None,
    progress: Callable[[int], Any] | None = None,
    predictor: Predictor | None = None,
) -> "Segmentation":
    """segment_volume from its model-ready slices pre.volume(ct, pet) (predict prepares them
    while the model loads) onto the (rows, cols) grid of the CT, with the model's confidence."""
    tta = inference.tta_flip
    probs = volume_probabilities(model, images, tta, batch_size, progress, predictor)
    return reviewed_segmentation(probs, pre, shape, inference)


@dataclass(frozen=True)
class Segmentation:
    """A mask, how firmly the model committed to it (0-1) and whether a person should look."""

    mask: np.ndarray
    confidence: float
    needs_review: bool | None  # None: the model carries no review rule (inference.review_below)


def commitment(probs: np.ndarray, threshold: float) -> float:
    """Model-grid probabilities (after slice smoothing) -> confidence in [0, 1]: the voxels at or
    above the threshold over those at or above REVIEW_FLOOR of it, the region the model
    half-suspects; 0 when nothing reaches the threshold (a sarcoma scan without a tumour)."""
    committed = int(np.count_nonzero(probs >= threshold))
    suspected = int(np.count_nonzero(probs >= threshold * REVIEW_FLOOR))
    return committed / suspected if committed else 0.0


def needs_review(confidence: float, inference: Inference) -> bool | None:
    """The model's review rule: confidence below inference.review_below (None: no rule)."""
    if inference.review_below is None:
        return None
    return confidence < inference.review_below


def reviewed_segmentation(
    probs: np.ndarray, pre: Preprocessing, shape: tuple[int, int], inference: Inference
) -> Segmentation:
    """Model-grid probabilities -> the mask on the (rows, cols) slice grid with its confidence."""
    smoothed = smooth_across_slices(probs, inference.z_sigma)  # once, for both
    confidence = round(commitment(smoothed, inference.threshold), 6)
    mask = smoothed_to_mask(smoothed, pre, shape, inference)
    return Segmentation(mask, confidence, needs_review(confidence, inference))


def segment_reviewed(
    model: Any,
    pre: Preprocessing,
    ct: np.ndarray,
    inference: Inference,
    pet: np.ndarray | None = None,
    predictor: Predictor | None = None,
) -> Segmentation:
    """segment_volume with the model's confidence and review flag; predictor: the network as a
    batch -> probabilities function (model_folder.OpenedModel.predictor), model then unused."""
    images = pre.volume(ct, pet)
    return segment_images(model, pre, images, ct.shape[1:], inference, predictor=predictor)


def probabilities_to_mask(
    probs: np.ndarray, pre: Preprocessing, shape: tuple[int, int], inference: Inference
) -> np.ndarray:
    """Model-grid probabilities (slices, size, size) -> uint8 mask on the (rows, cols) slice grid:
    smoothed across slices, restored, thresholded and postprocessed as `inference` says."""
    return smoothed_to_mask(smooth_across_slices(probs, inference.z_sigma), pre, shape, inference)


def smoothed_to_mask(
    probs: np.ndarray, pre: Preprocessing, shape: tuple[int, int], inference: Inference
) -> np.ndarray:
    """probabilities_to_mask of probabilities already smoothed across slices."""
    threshold = inference.threshold
    mask = np.stack([pre.restore(p, shape) >= threshold for p in probs]).astype(np.uint8)
    return POSTPROCESS[inference.postprocess](mask)
