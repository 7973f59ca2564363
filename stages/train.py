"""DVC stage `train`: fit the U-Net, keep the best-on-validation weights, track it all in MLflow."""

import csv
import json
from pathlib import Path
from typing import Any

import mlflow
import tensorflow as tf

from sarcoma_seg import tracking
from sarcoma_seg.dataset import SliceSet, batch_sequence, load_slice_set
from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.inference import CONFIG_NAME, check_inference, load_config
from sarcoma_seg.model import (
    MODEL_FILE,
    MONITORS,
    average_members,
    build_unet,
    check_train_params,
    compile_unet,
    mean_history,
    save_unet,
    seed_everything,
    validation_dice,
)
from sarcoma_seg.params import check_image_size, load_params
from sarcoma_seg.plots import history_figure
from sarcoma_seg.serving import log_pyfunc
from sarcoma_seg.staging import staged_dir
from sarcoma_seg.transforms import Preprocessing, build_augmentation

SYSTEM_METRICS_SECONDS = 5  # CPU, memory (and GPU where present) every 5 s: minutes-long runs


def fit_member(
    train_set: SliceSet,
    val_set: SliceSet,
    params: dict[str, Any],
    pre: Preprocessing,
    out: Path,
    seed: int,
    log_prefix: str = "",
) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """Fit one U-Net from `seed` with augmentation, LR schedule and (if a monitor picks) early
    stopping; return it with its history."""
    tp = params["train"]
    seed_everything(seed)
    model = build_unet(tp["backbone"], tp["encoder_weights"], pre.input_channels, tp["bn_momentum"])
    augment = build_augmentation(tp["augment"], pre.image_size, seed, pre.pet_window is not None)
    batches = batch_sequence(train_set, tp["batch_size"], augment, seed, tp["tumour_fraction"])
    compile_unet(model, tp, len(batches))
    weights = out / "best.weights.h5"
    monitor = tp.get("monitor", "val_loss")
    validate = len(val_set.images) > 0  # split.val: 0 trains on every non-test patient
    callbacks = []
    if validate:  # fills the logs' val_dice
        threshold = float(params["inference"]["threshold"])  # checked in main; as evaluate scores
        callbacks.append(validation_dice(val_set.images, val_set.masks, threshold))
    if monitor != "last":  # "last": the final weights, no selection on validation at all
        mode = MONITORS[monitor]
        callbacks += [
            tf.keras.callbacks.ModelCheckpoint(
                str(weights),
                monitor=monitor,
                mode=mode,
                save_best_only=True,
                save_weights_only=True,
            ),
            tf.keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=tp["early_stopping_patience"]
            ),
        ]
    if tp.get("lr_schedule", "plateau") == "plateau":
        callbacks.append(
            tf.keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                mode=MONITORS[monitor],
                factor=tp["lr_factor"],
                patience=tp["lr_patience"],
            )
        )
    callbacks.append(tracking.epoch_logger(log_prefix))
    fit = model.fit(
        batches,
        validation_data=batch_sequence(val_set, tp["batch_size"]) if validate else None,
        epochs=tp["epochs"],
        callbacks=callbacks,
        shuffle=False,  # the sequence shuffles itself with the seed
        verbose=2,
    )
    if monitor != "last":
        model.load_weights(str(weights))
        weights.unlink()
    return model, {k: [float(v) for v in vals] for k, vals in fit.history.items()}


def train(
    train_set: SliceSet, val_set: SliceSet, params: dict[str, Any], pre: Preprocessing, out: Path
) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """Fit train.ensemble members (seeds base.seed, base.seed + 1, ...) and return the one model
    that averages their probabilities, with the members' mean history (one member: itself)."""
    members, seed = int(params["train"].get("ensemble", 1)), params["base"]["seed"]
    prefix = "member_{}/" if members > 1 else ""  # one model logs the plain keys as it trains
    fits = [
        fit_member(train_set, val_set, params, pre, out, seed + i, prefix.format(i))
        for i in range(members)
    ]
    history = mean_history([h for _, h in fits])
    if members > 1:
        tracking.log_history(history)  # the plain keys, as one model would log them
    return average_members([m for m, _ in fits], pre.input_channels), history


def chosen_epoch(history: dict[str, list[float]], monitor: str) -> int:
    """Index of the epoch whose weights were kept: the monitor's best, or the last."""
    epochs = range(len(history["loss"]))
    if monitor == "last":
        return epochs[-1]
    pick = max if MONITORS[monitor] == "max" else min
    return pick(epochs, key=history[monitor].__getitem__)


def check_validation(val_set: SliceSet, monitor: str) -> None:
    """A monitor that picks weights on validation needs validation patients."""
    if not len(val_set.images) and monitor != "last":
        raise SarcomaSegError(
            f"train.monitor={monitor} picks weights on validation, but split.val is 0 "
            "(no validation patients); use train.monitor: last"
        )


def write_history(history: dict[str, list[float]], path: Path) -> None:
    """Per-epoch history as CSV, the DVC plots source; without validation its columns stay
    empty, so the plots' fields exist either way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [
        "loss",
        "val_loss",
        "val_dice",
        "iou_score",
        "val_iou_score",
        "f1-score",
        "val_f1-score",
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *keys])
        for i in range(len(history["loss"])):
            writer.writerow(
                [i + 1, *(round(history[k][i], 6) if k in history else "" for k in keys)]
            )


def main() -> None:
    """Validate params, train inside one MLflow run, write the model, history and metrics."""
    params = load_params()
    paths, tp = params["paths"], params["train"]
    check_train_params(tp)
    check_image_size(params["base"]["image_size"])
    inference = check_inference(params["inference"])  # the model carries it: predict == evaluate
    build_augmentation(tp["augment"], params["base"]["image_size"], 0, pet=True)  # validate all
    pre, _ = load_config(Path(paths["preprocessed"]) / CONFIG_NAME)
    train_set = load_slice_set(Path(paths["preprocessed"]) / "train.npz")
    val_set = load_slice_set(Path(paths["preprocessed"]) / "val.npz")
    check_validation(val_set, tp.get("monitor", "val_loss"))
    plots, figures = Path(paths["plots"]), Path(paths["figures"])
    for folder in (plots, figures):
        folder.mkdir(parents=True, exist_ok=True)
    tracking.use_experiment(tp["mlflow_experiment"])
    name, tags = tracking.run_identity(params)
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    # the model folder is swapped in whole at the end: a failed run keeps the last good model
    with (
        staged_dir(Path(paths["model"])) as out,
        mlflow.start_run(run_name=name, tags=tags, log_system_metrics=True) as run,
    ):
        tracking.log_params(params)
        tracking.log_manifest(Path(paths["raw"]) / "manifest.json")
        model, history = train(train_set, val_set, params, pre, out)
        section = save_unet(model, out / MODEL_FILE, tp["backbone"])
        mlflow.set_tag("model.weights_sha256", section["weights_sha256"])
        write_history(history, plots / "history.csv")
        for key in ("loss", "iou_score"):
            history_figure(history, key, figures / f"{key}.png")
            mlflow.log_artifact(str(figures / f"{key}.png"), artifact_path="plots")
        best = chosen_epoch(history, tp.get("monitor", "val_loss"))
        summary = {k: history[k][best] for k in history if k.startswith("val_")}
        summary |= {"best_epoch": best + 1, "epochs_run": len(history["loss"])}
        Path(paths["metrics"]).mkdir(parents=True, exist_ok=True)
        (Path(paths["metrics"]) / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics({f"best_{k}": v for k, v in summary.items()})
        mlflow.log_artifact(str(plots / "history.csv"), artifact_path="plots")
        log_pyfunc(out / MODEL_FILE, pre, inference, out, tp["registered_model"], section)
        tracking.write_run_info(out / "mlflow_run.json", run)
    print(f"best epoch {best + 1}: {summary}")


if __name__ == "__main__":
    run_cli(main)
