"""The segmentation-models U-Net, its losses and metrics, and deterministic setup."""

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models as sm
import tensorflow as tf

from sarcoma_seg.errors import SarcomaSegError, choice
from sarcoma_seg.params import check_positive_int

ENCODER_WEIGHTS = (None, "imagenet")
TUMOUR_PRIOR = 0.01  # tumour is ~1% of pixels: start the head there, not at 0.5 (Lin et al. 2017)


def _dice_focal(focal_weight: float) -> Any:
    """Dice + focal, the original study's loss; losses compose with + and scale with *."""
    return sm.losses.DiceLoss() + focal_weight * sm.losses.BinaryFocalLoss()


LOSSES = {
    "dice_focal": _dice_focal,
    "dice": lambda _w: sm.losses.DiceLoss(),
    "focal": lambda _w: sm.losses.BinaryFocalLoss(),
    "jaccard": lambda _w: sm.losses.JaccardLoss(),
}


# what picks the checkpoint, and its direction; train.monitor "last" keeps the final weights
MONITORS = {"val_dice": "max", "val_loss": "min"}
# plateau: halve the LR when the monitor stalls; cosine: decay to 1% over all epochs (nnU-Net
# style, for a fixed budget that keeps the last weights); constant: neither
LR_SCHEDULES = ("plateau", "cosine", "constant")
COSINE_FLOOR = 0.01  # the cosine schedule ends at 1% of train.learning_rate, not at 0


def validation_dice(images: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> Any:
    """A callback that adds val_dice to each epoch's logs: Dice pooled over every validation
    pixel at the model's inference threshold. Unlike the per-batch val_loss, batches of empty
    slices cannot swamp it, so it tracks the held-out Dice that evaluate reports."""
    from sarcoma_seg.inference import volume_probabilities
    from sarcoma_seg.metrics import dice

    truth = masks > 0

    class ValidationDice(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            probs = volume_probabilities(self.model, images, False)
            if logs is not None:
                logs["val_dice"] = float(dice(probs >= threshold, truth))

    return ValidationDice()


def backbones() -> list[str]:
    """Every encoder segmentation-models can build."""
    return list(sm.get_available_backbone_names())


def check_train_params(train: dict[str, Any]) -> None:
    """Validate the train section before anything is written."""
    choice("train.backbone", train.get("backbone"), backbones())
    choice("train.encoder_weights", train.get("encoder_weights"), ENCODER_WEIGHTS)
    choice("train.loss", train.get("loss", "dice_focal"), LOSSES)
    choice("train.monitor", train.get("monitor", "val_loss"), [*MONITORS, "last"])
    schedule = choice("train.lr_schedule", train.get("lr_schedule", "plateau"), LR_SCHEDULES)
    if schedule == "plateau" and train.get("monitor", "val_loss") == "last":
        raise SarcomaSegError(
            "train.lr_schedule=plateau needs a validation monitor, but train.monitor=last; "
            "use cosine or constant"
        )
    name = train.get("registered_model")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise SarcomaSegError(
            f"train.registered_model={name!r} is not allowed; give a name without '/'"
        )
    check_positive_int("train.epochs", train.get("epochs"))
    members = check_positive_int("train.ensemble", train.get("ensemble", 1))
    if members > 1 and train.get("monitor", "val_loss") != "last":
        raise SarcomaSegError(
            f"train.ensemble={members} averages members trained for the same epochs, but "
            f"train.monitor={train.get('monitor', 'val_loss')} stops each early; use monitor: last"
        )
    check_positive_int("train.batch_size", train.get("batch_size"))
    fraction = train.get("tumour_fraction")
    if fraction is not None and (not isinstance(fraction, int | float) or not 0 < fraction < 1):
        raise SarcomaSegError(
            f"train.tumour_fraction={fraction!r} is not allowed; use null or 0 < f < 1"
        )
    ema = train.get("ema_momentum")
    if ema is not None and (not isinstance(ema, int | float) or not 0 < ema < 1):
        raise SarcomaSegError(f"train.ema_momentum={ema!r} is not allowed; use null or 0 < m < 1")
    lr = train.get("learning_rate")
    if not isinstance(lr, int | float) or lr <= 0:
        raise SarcomaSegError(f"train.learning_rate={lr!r} is not allowed; it must be > 0")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and ask TensorFlow for deterministic kernels."""
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_unet(
    backbone: str, encoder_weights: str | None, channels: int, bn_momentum: float = 0.9
) -> tf.keras.Model:
    """A binary U-Net with a sigmoid head; input size is free (any multiple of 32)."""
    model = sm.Unet(
        backbone,
        encoder_weights=encoder_weights,
        classes=1,
        activation="sigmoid",
        input_shape=(None, None, channels),
    )
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    head = model.get_layer("final_conv")
    head.bias.assign(np.full(head.bias.shape, np.log(TUMOUR_PRIOR / (1 - TUMOUR_PRIOR))))
    return model


def compile_unet(model: tf.keras.Model, train: dict[str, Any], steps_per_epoch: int = 1) -> None:
    """Adam (with an exponential moving average of the weights if train.ema_momentum is set),
    the configured loss, and the original study's IoU and F-score metrics."""
    loss = LOSSES[train.get("loss", "dice_focal")](float(train.get("focal_weight", 1.0)))
    ema = train.get("ema_momentum")
    rate: Any = float(train["learning_rate"])
    if train.get("lr_schedule", "plateau") == "cosine":
        steps = int(train["epochs"]) * steps_per_epoch
        rate = tf.keras.optimizers.schedules.CosineDecay(rate, steps, alpha=COSINE_FLOOR)
    optimizer = tf.keras.optimizers.Adam(
        rate,
        use_ema=ema is not None,
        ema_momentum=float(ema or 0.99),
        # the averaged weights replace the raw ones at every epoch's end, so validation, the
        # checkpoint and the next epoch all see them
        ema_overwrite_frequency=steps_per_epoch if ema is not None else None,
    )
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[sm.metrics.IOUScore(threshold=0.5), sm.metrics.FScore(threshold=0.5)],
    )


def average_members(members: list[tf.keras.Model], channels: int) -> tf.keras.Model:
    """One model whose output is the mean of the members' tumour probabilities, saved, served
    and predicted with like a single U-Net; one member is returned as it is."""
    if len(members) == 1:
        return members[0]
    image = tf.keras.Input((None, None, channels), name="image")
    # each member renamed (sm names every U-Net alike), so the HDF5 file keeps them apart
    renamed = [
        tf.keras.Model(m.inputs, m.outputs, name=f"member_{i}") for i, m in enumerate(members)
    ]
    mean = tf.keras.layers.Average(name="member_mean")([m(image) for m in renamed])
    return tf.keras.Model(image, mean, name="ensemble")


def mean_history(histories: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per-epoch mean of the members' histories (members train for the same epochs)."""
    return {k: np.mean([h[k] for h in histories], axis=0).tolist() for k in histories[0]}


MODEL_FILE = "model.h5"  # HDF5: tf-keras reads a .keras zip ~60x slower (38 s vs 0.6 s here)


def save_unet(model: tf.keras.Model, path: Path) -> None:
    """Save the whole model (architecture + weights) as one HDF5 file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy")
        model.save(path, save_format="h5", include_optimizer=False)


def load_unet(path: Path) -> tf.keras.Model:
    """Load a saved U-Net for inference; compile=False because sm losses do not deserialize."""
    if not Path(path).exists():
        raise SarcomaSegError(f"{path}: model file not found; run the train stage first")
    return tf.keras.models.load_model(path, compile=False)
