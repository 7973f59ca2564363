"""A small tf-keras 3D U-Net on a coarse grid (~8 mm voxels): it sees a whole scan at once, so a
mass that the PET does not light up can still be found by its 3D shape on CT (issue 27's "3D
context" lever). segmentation-models-3D needs Keras 3, hence this one written for tf-keras."""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from sarcoma_seg.transforms import Preprocessing, through_window
from sarcoma_seg.volumes import Volume

LEVELS = 4  # poolings = LEVELS - 1: every side of the network's input is a multiple of 8
FILTERS = (16, 32, 64, 128)  # ~1.4 M weights: 24-33 training scans cannot feed a wider net
SHIFT = 2  # voxels of random translation at least (the canvas rounds up to a multiple of 8)
TUMOUR_PRIOR = 0.05  # a cropped scan is ~5% tumour at this grid: the head starts there


@dataclass(frozen=True)
class CoarseTraining:
    """How the coarse network is trained (the benchmark's settings; no params section yet)."""

    spacing_mm: float = 8.0  # the 8-10 mm: the whole 5 cm-margin crop in ~32^3 voxels
    epochs: int = 150
    batch_size: int = 4
    learning_rate: float = 1e-3
    pet_drop: float = 0.25  # as the 2D model's PET dropout (half of p 0.5): the CT must carry it
    seed: int = 42


def coarse_shape(shape: tuple[int, ...], spacing: tuple[float, ...], mm: float) -> tuple:
    """A native (slices, rows, cols) shape at `spacing` mm -> its shape at `mm` mm voxels."""
    return tuple(max(1, round(n * s / mm)) for n, s in zip(shape, spacing))


def resized(array: np.ndarray, shape: tuple[int, ...], smooth: bool) -> np.ndarray:
    """Linear resampling of a 3D array to `shape` (anti-aliased when shrinking)."""
    from skimage.transform import resize

    out = resize(array.astype(np.float32), shape, order=1, anti_aliasing=smooth)
    return out.astype(np.float32)


def coarse_inputs(volume: Volume, pre: Preprocessing, mm: float) -> np.ndarray:
    """A patient's CT (and PET) through the model's windows on the coarse grid: (D, H, W, C)."""
    shape = coarse_shape(volume.ct.shape, volume.spacing, mm)
    channels = [resized(through_window(volume.ct, pre.hu_window), shape, True)]
    if pre.pet_window is not None:
        channels.append(resized(through_window(volume.pet, pre.pet_window), shape, True))
    return np.stack(channels, axis=-1)


def coarse_target(volume: Volume, mm: float) -> np.ndarray:
    """The tumour mask as the share of each coarse voxel that is tumour: (D, H, W) in [0, 1]."""
    shape = coarse_shape(volume.ct.shape, volume.spacing, mm)
    return np.clip(resized(volume.mask, shape, True), 0.0, 1.0)


def padded_side(n: int) -> int:
    """The next multiple of 2 ** (LEVELS - 1) at or above n."""
    step = 2 ** (LEVELS - 1)
    return -(-n // step) * step


def _block(x: tf.Tensor, filters: int) -> tf.Tensor:
    """Two 3x3x3 convolutions, each with batch normalisation and ReLU."""
    for _ in range(2):
        x = tf.keras.layers.Conv3D(filters, 3, padding="same", use_bias=False)(x)
        x = tf.keras.layers.BatchNormalization(momentum=0.9)(x)
        x = tf.keras.layers.Activation("relu")(x)
    return x


def build_unet3d(channels: int) -> tf.keras.Model:
    """A 3D U-Net with a sigmoid head; any input whose sides are multiples of 8."""
    inputs = tf.keras.Input((None, None, None, channels))
    x, skips = inputs, []
    for filters in FILTERS[:-1]:
        x = _block(x, filters)
        skips.append(x)
        x = tf.keras.layers.MaxPooling3D(2)(x)
    x = _block(x, FILTERS[-1])
    for filters, skip in zip(reversed(FILTERS[:-1]), reversed(skips)):
        x = tf.keras.layers.UpSampling3D(2)(x)
        x = _block(tf.keras.layers.Concatenate()([x, skip]), filters)
    bias = tf.keras.initializers.Constant(np.log(TUMOUR_PRIOR / (1 - TUMOUR_PRIOR)))
    out = tf.keras.layers.Conv3D(1, 1, activation="sigmoid", bias_initializer=bias)(x)
    return tf.keras.Model(inputs, out, name="coarse_unet3d")


def dice_bce(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Soft Dice over the batch plus binary cross-entropy."""
    inter = tf.reduce_sum(y_true * y_pred)
    dice = (2 * inter + 1.0) / (tf.reduce_sum(y_true) + tf.reduce_sum(y_pred) + 1.0)
    bce = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y_true, y_pred))
    return 1.0 - dice + bce


def _augmented(
    image: np.ndarray,
    target: np.ndarray,
    canvas: tuple[int, ...],
    rng: np.random.Generator,
    pet_drop: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One scan placed at a random offset in the canvas, mirrored at random along each axis,
    its PET (the last channel, if any) zeroed with probability pet_drop."""
    x = np.zeros((*canvas, image.shape[-1]), np.float32)
    y = np.zeros((*canvas, 1), np.float32)
    offset = [rng.integers(0, c - s + 1) for c, s in zip(canvas, image.shape[:3])]
    where = tuple(slice(o, o + s) for o, s in zip(offset, image.shape[:3]))
    x[where], y[where] = image, target[..., None]
    for axis in range(3):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    if image.shape[-1] > 1 and rng.random() < pet_drop:
        x[..., -1] = 0.0
    return x, y


def batch_canvas(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The grid a batch of scans is placed on: each side the batch's largest plus SHIFT, up to
    the network's multiple of 8 (per batch, so small scans do not pay for the largest one)."""
    return tuple(padded_side(max(s[a] for s in shapes) + SHIFT) for a in range(3))


def fit_coarse(
    images: list[np.ndarray], targets: list[np.ndarray], cfg: CoarseTraining
) -> tf.keras.Model:
    """Train the coarse 3D U-Net on (D, H, W, C) scans and their (D, H, W) tumour shares."""
    from sarcoma_seg.model import seed_everything

    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_unet3d(images[0].shape[-1])
    steps = max(1, len(images) // cfg.batch_size)
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        cfg.learning_rate, cfg.epochs * steps, alpha=0.01
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(schedule), loss=dice_bce)

    def batches():  # endless: a new random order and augmentation every epoch
        while True:
            order = rng.permutation(len(images))
            for start in range(0, steps * cfg.batch_size, cfg.batch_size):
                chosen = order[start : start + cfg.batch_size]
                canvas = batch_canvas([images[i].shape for i in chosen])
                pairs = [
                    _augmented(images[i], targets[i], canvas, rng, cfg.pet_drop) for i in chosen
                ]
                yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    model.fit(batches(), steps_per_epoch=steps, epochs=cfg.epochs, verbose=0)
    return model


def predict_coarse(model: tf.keras.Model, image: np.ndarray) -> np.ndarray:
    """(D, H, W, C) coarse scan -> (D, H, W) tumour probabilities (padded to the network's
    multiple of 8 and cropped back)."""
    shape = image.shape[:3]
    padded = np.zeros((*(padded_side(n) for n in shape), image.shape[-1]), np.float32)
    padded[: shape[0], : shape[1], : shape[2]] = image
    probs = model(padded[None], training=False).numpy()[0, ..., 0]
    return probs[: shape[0], : shape[1], : shape[2]]


def on_model_grid(probs: np.ndarray, slices: int, size: int) -> np.ndarray:
    """Coarse probabilities -> (slices, size, size), the 2D model's grid for the same scan
    (every axial slice, resized to a square), so the two can be averaged."""
    return np.clip(resized(probs, (slices, size, size), False), 0.0, 1.0)
