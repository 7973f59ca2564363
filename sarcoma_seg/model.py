"""The segmentation-models U-Net, its losses and metrics, and deterministic setup."""

import contextlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tensorflow as tf

from sarcoma_seg.digest import file_sha256
from sarcoma_seg.errors import SarcomaSegError, choice, one_line
from sarcoma_seg.settings import ModelSection, Train

# segmentation-models prints a banner on stdout at import: silenced, so that predict's stdout
# holds only its JSON and stderr only what went wrong
with open(os.devnull, "w") as _quiet, contextlib.redirect_stdout(_quiet):
    import segmentation_models as sm

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


def check_train_params(train: Train) -> None:
    """What the schema cannot check of the train section: the backbone exists, and the monitor
    fits the schedule and the ensemble (before anything is written)."""
    choice("train.backbone", train.backbone, backbones())
    if train.lr_schedule == "plateau" and train.monitor == "last":
        raise SarcomaSegError(
            "train.lr_schedule=plateau needs a validation monitor, but train.monitor=last; "
            "use cosine or constant"
        )
    if "/" in train.registered_model:
        raise SarcomaSegError(
            f"train.registered_model={train.registered_model!r} is not allowed; "
            "give a name without '/'"
        )
    if train.ensemble > 1 and train.monitor != "last":
        raise SarcomaSegError(
            f"train.ensemble={train.ensemble} averages members trained for the same epochs, but "
            f"train.monitor={train.monitor} stops each early; use monitor: last"
        )


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


def compile_unet(model: tf.keras.Model, train: Train, steps_per_epoch: int = 1) -> None:
    """Adam (with an exponential moving average of the weights if train.ema_momentum is set),
    the configured loss, and the original study's IoU and F-score metrics."""
    loss = LOSSES[train.loss](float(train.focal_weight))
    ema = train.ema_momentum
    rate: Any = float(train.learning_rate)
    if train.lr_schedule == "cosine":
        steps = int(train.epochs) * steps_per_epoch
        rate = tf.keras.optimizers.schedules.CosineDecay(rate, steps, alpha=COSINE_FLOOR)
    optimizer = tf.keras.optimizers.Adam(
        rate,
        use_ema=ema is not None,
        # with EMA off Keras ignores the momentum; 0.99 is only Keras' own default passed along
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


NO_PATIENT = 1 << 16  # io.hdf5.check_h5_links' patient_part: no weight name names a patient


def save_unet(model: tf.keras.Model, path: Path, backbone: str) -> ModelSection:
    """Write the weights only (HDF5) and return the model section of the stored config that
    load_unet rebuilds the architecture from: backbone, channels, members and the file's hash."""
    members = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    model.save_weights(str(path), save_format="h5")
    return ModelSection(
        backbone=backbone,
        channels=int(model.input_shape[-1]),
        members=max(1, len(members)),
        weights_sha256=file_sha256(path),
    )


def expected_weights(model: tf.keras.Model) -> dict[str, tuple[tuple[int, ...], str]]:
    """{dataset path: (shape, dtype)} that Keras' HDF5 save_weights writes for this model."""
    # tf-keras saves each layer's trainable then non-trainable weights under its layer's group
    return {
        f"{layer.name}/{w.name}": (tuple(int(d) for d in w.shape), w.dtype.name)
        for layer in model.layers
        for w in layer.trainable_weights + layer.non_trainable_weights
    }


def stored_weights(h5: h5py.File) -> dict[str, tuple[tuple[int, ...], str]]:
    """{dataset path: (shape, dtype)} of every dataset in a weights file, headers only."""
    found: dict[str, tuple[tuple[int, ...], str]] = {}

    def visit(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            found[name] = (tuple(item.shape), item.dtype.name)

    h5.visititems(visit)
    return found


def stored_names(group: h5py.Group, key: str) -> list[str]:
    """A tf-keras name-list attribute (split into key0, key1, ... when long), as strings."""
    chunks = [key] if key in group.attrs else []
    while f"{key}{len(chunks)}" in group.attrs:
        chunks.append(f"{key}{len(chunks)}")
    return [
        n.decode() if isinstance(n, bytes) else str(n)
        for chunk in chunks
        for n in np.asarray(group.attrs[chunk]).ravel()
    ]


def has_weights(group: object) -> bool:
    """A layer group that lists weights (Keras skips the others when loading by order)."""
    return isinstance(group, h5py.Group) and len(stored_names(group, "weight_names")) > 0


def weights_problem(path: Path, h5: h5py.File, model: tf.keras.Model) -> str | None:
    """Why a weights file does not fit the rebuilt model (datasets, shapes, dtypes, the layer
    order Keras loads by), or None; only headers and name lists are read."""
    expected, found = expected_weights(model), stored_weights(h5)
    for name in sorted(expected.keys() - found.keys())[:1]:
        return f"{path}: weights {name} missing; the file does not fit its model section"
    for name in sorted(found.keys() - expected.keys())[:1]:
        return f"{path}: unexpected dataset {name}; the file does not fit its model section"
    for name in sorted(n for n in expected if expected[n] != found[n])[:1]:
        (want, want_type), (got, got_type) = expected[name], found[name]
        return f"{path}: weights {name} are {got} {got_type}, the model needs {want} {want_type}"
    # Keras loads by order, layer by layer: the listed order must be the model's
    weighted = [layer for layer in model.layers if layer.weights]
    listed = [n for n in stored_names(h5, "layer_names") if n in h5 and has_weights(h5[n])]
    if listed != [layer.name for layer in weighted]:
        return f"{path}: layer_names lists the layers out of the model's order"
    for layer in weighted:
        names = [w.name for w in layer.trainable_weights + layer.non_trainable_weights]
        if stored_names(h5[layer.name], "weight_names") != names:
            return f"{path}: {layer.name} lists its weights out of the model's order"
    return None


def check_weights_file(path: Path, model: tf.keras.Model) -> None:
    """Open the weights file with h5py only: no links out of it, every dataset as the model
    needs; a damaged file is one line."""
    from sarcoma_seg.io.hdf5 import check_h5_links

    try:
        with h5py.File(path, "r") as h5:
            check_h5_links(path, h5, patient_part=NO_PATIENT)
            problem = weights_problem(path, h5, model)
    except OSError as exc:
        reason = one_line(exc)
        raise SarcomaSegError(f"{path}: not a readable HDF5 weights file ({reason})") from exc
    if problem:
        raise SarcomaSegError(problem)


def rebuild_unet(section: ModelSection) -> tf.keras.Model:
    """The architecture of a model section, from our own code (no stored code runs)."""
    members = [build_unet(section.backbone, None, section.channels) for _ in range(section.members)]
    return average_members(members, section.channels)


def load_checked_weights(path: Path, model: tf.keras.Model) -> tf.keras.Model:
    """The rebuilt model with the weights of a file whose hash was checked (model_folder
    .load_unet): links, datasets, shapes and order checked with h5py before Keras reads it."""
    check_weights_file(path, model)
    try:
        model.load_weights(str(path))
    except (OSError, ValueError) as exc:  # what h5py or Keras raise on data they cannot read
        raise SarcomaSegError(f"{path}: cannot load the weights ({one_line(exc)})") from exc
    return model
