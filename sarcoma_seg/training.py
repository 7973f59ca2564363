"""Training: fit the U-Net (or an ensemble of them) with augmentation, a learning-rate schedule
and per-epoch checkpoints, keep the chosen epoch's weights, and write the model folder, the
history and the metrics while tracking it all in MLflow. The train stage is its thin main()."""

import csv
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import tensorflow as tf

from sarcoma_seg import checkpoint, distribute, pipeline_input, runlog, tracking
from sarcoma_seg.checkpoint import Checkpoint
from sarcoma_seg.dataset import SliceSet, load_slice_set
from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.model import (
    MONITORS,
    average_members,
    build_unet,
    check_train_params,
    compile_unet,
    load_checked_weights,
    mean_history,
    rebuild_unet,
    save_unet,
    seed_everything,
    validation_dice,
)
from sarcoma_seg.model_card import CARD_NAME, training_card, write_card
from sarcoma_seg.model_folder import (
    MODEL_CONFIG_NAME,
    MODEL_FILE,
    read_data_config,
    write_model_config,
)
from sarcoma_seg.onnx_model import ONNX_FILE, export_onnx
from sarcoma_seg.params import check_image_size
from sarcoma_seg.plots import history_figure
from sarcoma_seg.serving import log_pyfunc
from sarcoma_seg.settings import ModelSection, Paths, Settings, Train
from sarcoma_seg.staging import staged_dir
from sarcoma_seg.transforms import Preprocessing, build_augmentation

SYSTEM_METRICS_SECONDS = 5  # CPU, memory (and GPU where present) every 5 s: minutes-long runs


def resumable(ckpt: Checkpoint, model: tf.keras.Model, epochs: int) -> dict[str, Any] | None:
    """The checkpoint's state if this training can resume it: an epoch within train.epochs and
    weights of this model's shapes; anything else is discarded with a warning (a checkpoint
    claiming epoch 1,000,000,000 must not publish a one-epoch model as a finished one)."""
    state = ckpt.load()
    if state is None:
        return None
    epoch, member = state["epoch"], state["member"]
    if not (isinstance(epoch, int) and 1 <= epoch <= epochs and isinstance(member, int)):
        ckpt.discard(f"epoch {str(epoch)[:20]} is not one of train.epochs={epochs}")
        return None
    shapes = [tuple(w.shape) for w in model.get_weights()]
    if [tuple(w.shape) for w in state["weights"]] != shapes:
        ckpt.discard("its weights do not fit this model")
        return None
    return state


def fit_member(
    train_set: SliceSet,
    val_set: SliceSet,
    tp: Train,
    *,
    threshold: float,
    pre: Preprocessing,
    work: Path,
    seed: int,
    log_prefix: str = "",
    ckpt: Checkpoint | None = None,
    member: int = 0,
    outbox: runlog.Outbox | None = None,
) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """Fit one U-Net from `seed` with augmentation, LR schedule and (if a monitor picks) early
    stopping, checkpointing every epoch into ckpt (and resuming from it); return it with its
    history; `threshold` (the model's inference threshold) scores val_dice as evaluate does."""
    seed_everything(seed)
    distribute.set_precision(tp.mixed_precision)
    model = build_unet(tp.backbone, tp.encoder_weights, pre.input_channels, tp.bn_momentum)
    model = distribute.float32_output(model)
    augment = build_augmentation(tp.augment, pre.image_size, seed, pre.pet_window is not None)
    state = resumable(ckpt, model, tp.epochs) if ckpt else None
    if state is not None and state["member"] != member:
        state = None  # the checkpoint is an earlier member's last epoch: this one starts afresh
    first = state["epoch"] if state else 0  # every batch is a function of (seed, epoch, position)
    batches = pipeline_input.train_batches(
        train_set, tp.batch_size, augment, seed, tp.epochs, tp.tumour_fraction, first
    )
    compile_unet(model, tp, batches.steps)
    # best weights beside the checkpoint, so a resumed training still has them
    weights = (ckpt.folder if ckpt else work) / f"best-{member}.weights.h5"
    monitor = tp.monitor
    validate = len(val_set.images) > 0  # split.val: 0 trains on every non-test patient
    callbacks = []
    if validate:  # fills the logs' val_dice
        callbacks.append(validation_dice(val_set.images, val_set.masks, float(threshold)))
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
                monitor=monitor, mode=mode, patience=tp.early_stopping_patience
            ),
        ]
    if tp.lr_schedule == "plateau":
        callbacks.append(
            tf.keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                mode=MONITORS[monitor],
                factor=tp.lr_factor,
                patience=tp.lr_patience,
            )
        )
    saver = checkpoint.epoch_checkpoint(ckpt, callbacks[:], member, state) if ckpt else None
    # the checkpoint before the logger: a kill between them loses no epoch (backfill resends it)
    callbacks += [saver] if saver else []
    callbacks.append(runlog.epoch_logger(outbox, log_prefix))
    done = state is not None and (state["stopped"] or state["epoch"] >= tp.epochs)
    if state is not None and outbox is not None:
        runlog.backfill(outbox, state["history"], log_prefix)  # epochs killed before logging
    if done:  # every epoch ran before the stage stopped (e.g. at the logging): no fit at all
        model.set_weights(state["weights"])
        history = state["history"]
    else:
        if state is not None:
            print(f"resuming {log_prefix or 'training'} after epoch {state['epoch']}")
        fit = model.fit(
            batches.dataset,
            steps_per_epoch=batches.steps,
            validation_data=pipeline_input.eval_batches(val_set, tp.batch_size)
            if validate
            else None,
            epochs=tp.epochs,
            initial_epoch=first,
            callbacks=callbacks,
            shuffle=False,  # the input shuffles itself with the seed
            verbose=2,
        )
        history = saver.history if saver else fit.history
    if monitor != "last":
        model.load_weights(str(weights))
        if not ckpt:
            weights.unlink()
    return model, {k: [float(v) for v in vals] for k, vals in history.items()}


def train(
    train_set: SliceSet,
    val_set: SliceSet,
    tp: Train,
    seed: int,
    threshold: float,
    pre: Preprocessing,
    out: Path,
    ckpt: Checkpoint | None = None,
    outbox: runlog.Outbox | None = None,
) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """Fit train.ensemble members (seeds base.seed, base.seed + 1, ...) and return the one model
    that averages their probabilities, with the members' mean history (one member: itself);
    members that finished before a kill are taken from the checkpoint."""
    members = tp.ensemble
    prefix = "member_{}/" if members > 1 else ""  # one model logs the plain keys as it trains
    fits = []
    for i in range(members):
        saved = ckpt.load_member(i) if ckpt and members > 1 else None
        if saved is None:
            fits.append(
                fit_member(
                    train_set,
                    val_set,
                    tp,
                    threshold=threshold,
                    pre=pre,
                    work=out,
                    seed=seed + i,
                    log_prefix=prefix.format(i),
                    ckpt=ckpt,
                    member=i,
                    outbox=outbox,
                )
            )
            if ckpt and members > 1:
                ckpt.save_member(i, fits[-1][0].get_weights(), fits[-1][1])
            continue
        seed_everything(seed + i)
        model = build_unet(tp.backbone, None, pre.input_channels, tp.bn_momentum)
        model.set_weights(saved[0])
        fits.append((model, saved[1]))
    history = mean_history([h for _, h in fits])
    if members > 1:  # the plain keys, as one model would log them
        for epoch in range(len(history["loss"])):
            runlog.log_epoch(outbox, {k: v[epoch] for k, v in history.items()}, epoch)
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


def start_run(ckpt: Checkpoint, settings: Settings, resumed: int | None) -> Any:
    """Continue the checkpoint's MLflow run if it has one the store still knows, else start one;
    a resumed run is tagged with the epoch it resumes after."""
    name, tags = tracking.run_identity(settings.data.source, settings.train.backbone)
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    run_id = ckpt.run_id()
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            run_id = None  # another store (MLFLOW_TRACKING_URI changed): a new run
    run = mlflow.start_run(
        run_id=run_id, run_name=None if run_id else name, tags=tags, log_system_metrics=True
    )
    ckpt.save_run_id(run.info.run_id)
    if resumed is not None:
        mlflow.set_tag("resumed_from_epoch", resumed)
    return run


def check_settings(settings: Settings) -> None:
    """What the schema cannot check of training, before anything is read or written."""
    check_train_params(settings.train)
    size = check_image_size(settings.base.image_size)
    build_augmentation(settings.train.augment, size, 0, pet=True)  # validate every block


def write_model(
    folder: Path,
    model: tf.keras.Model,
    pre: Preprocessing,
    settings: Settings,
    run: Any,
    card: dict[str, Any],
) -> ModelSection:
    """The model folder's files: weights, the same network as ONNX, model_config.json
    (preprocessing, inference and the architecture, so that evaluate, the MLflow model and
    predict agree), the model card (card: training_card's other arguments) and the run id."""
    section = save_unet(model, folder / MODEL_FILE, settings.train.backbone)
    # ONNX beside the weights: predict and evaluate run it without TensorFlow (issue 28); made
    # from the saved file rebuilt as inference rebuilds it, never from the training model (under
    # a cluster strategy its graph holds collective ops that no ONNX runtime runs)
    plain = load_checked_weights(folder / MODEL_FILE, rebuild_unet(section))
    section = replace(section, onnx_sha256=export_onnx(plain, folder / ONNX_FILE))
    write_model_config(folder / MODEL_CONFIG_NAME, pre, settings.inference, section)
    card = training_card(section=section, pre=pre, inference=settings.inference, **card)
    write_card(folder / CARD_NAME, card)
    tracking.write_run_info(folder / "mlflow_run.json", run)
    return section


def card_facts(
    settings: Settings, train_set: SliceSet, val_set: SliceSet, summary: dict[str, Any]
) -> dict[str, Any]:
    """What the model card records of a training besides the model folder's own files."""
    manifest = json.loads((settings.paths.raw / "manifest.json").read_text())
    params = settings.as_params()
    return {
        "name": settings.train.registered_model,
        "commit": tracking.git_commit(tracking.repo_root()),
        "manifest": manifest,
        "train_patients": sorted(set(train_set.patients.tolist())),
        "val_patients": sorted(set(val_set.patients.tolist())),
        "params": {k: params[k] for k in ("base", "data", "preprocess", "train", "inference")},
        "training": summary,
    }


def write_results(
    history: dict[str, list[float]], monitor: str, paths: Paths
) -> dict[str, float | int]:
    """History CSV, its figures and metrics/train.json (the chosen epoch's validation scores);
    returns that summary."""
    write_history(history, paths.plots / "history.csv")
    for key in ("loss", "iou_score"):
        history_figure(history, key, paths.figures / f"{key}.png")
    best = chosen_epoch(history, monitor)
    summary = {k: history[k][best] for k in history if k.startswith("val_")}
    summary |= {"best_epoch": best + 1, "epochs_run": len(history["loss"])}
    paths.metrics.mkdir(parents=True, exist_ok=True)
    (paths.metrics / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def log_results(summary: dict[str, float | int], section: ModelSection, settings: Settings) -> None:
    """After the DVC outputs are complete: figures, history, best metrics and the pyfunc model
    (registered under train.registered_model) go to the active MLflow run."""
    paths = settings.paths
    mlflow.set_tag("model.weights_sha256", section.weights_sha256)
    for key in ("loss", "iou_score"):
        mlflow.log_artifact(str(paths.figures / f"{key}.png"), artifact_path="plots")
    mlflow.log_metrics({f"best_{k}": v for k, v in summary.items()})
    mlflow.log_artifact(str(paths.plots / "history.csv"), artifact_path="plots")
    log_pyfunc(paths.model, settings.train.registered_model)


def train_in(
    strategy: Any,
    settings: Settings,
    sets: tuple[SliceSet, SliceSet],
    pre: Preprocessing,
    folder: Path,
    ckpt: Checkpoint,
    outbox: runlog.Outbox,
) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """train() of the (train, validation) sets inside the strategy's scope, at the model's own
    inference threshold (val_dice scores as evaluate does)."""
    with strategy.scope():
        return train(
            *sets,
            settings.train,
            settings.base.seed,
            settings.inference.threshold,
            pre,
            folder,
            ckpt,
            outbox,
        )


def train_as_worker(
    settings: Settings, strategy: Any, pre: Preprocessing, train_set: SliceSet, val_set: SliceSet
) -> None:
    """A non-chief worker of a cluster: trains in lockstep with the chief (restoring from its
    checkpoint) and logs nothing: no MLflow run, no store. It saves the weights into a temporary
    folder all the same, because reading the synchronised variables (batch-norm statistics) is
    a collective operation the chief's save waits for."""
    tp = settings.train
    key = checkpoint.checkpoint_key(settings, settings.paths.preprocessed)
    ckpt = checkpoint.open_checkpoint(tracking.repo_root(), key, writer=False)
    with tempfile.TemporaryDirectory(prefix="sarcoma-seg-worker-") as scratch:
        sets = (train_set, val_set)
        model, history = train_in(strategy, settings, sets, pre, Path(scratch), ckpt, runlog.SILENT)
        save_unet(model, Path(scratch) / MODEL_FILE, tp.backbone)  # the chief's collectives
    print(f"best epoch {chosen_epoch(history, tp.monitor) + 1} (worker: nothing written)")


def run_training(settings: Settings, strategy: Any) -> None:
    """Validate, train inside one MLflow run (resuming a killed training from its checkpoint),
    write the model, history and metrics, then finish the logging."""
    paths, tp = settings.paths, settings.train
    check_settings(settings)
    pre = read_data_config(paths.preprocessed)
    train_set = load_slice_set(paths.preprocessed / "train.npz")
    val_set = load_slice_set(paths.preprocessed / "val.npz")
    check_validation(val_set, tp.monitor)
    if not distribute.writes_checkpoint(tp.distribute):
        return train_as_worker(settings, strategy, pre, train_set, val_set)
    runlog.configure_http_retries()
    uri = tracking.tracking_uri()
    runlog.check_reachable(uri)  # before anything is trained or written
    root = distribute.state_root(tp.distribute, paths.model, tracking.repo_root())
    ckpt = checkpoint.open_checkpoint(  # the chief's, on every worker (they resume together)
        tracking.repo_root(),
        checkpoint.checkpoint_key(settings, paths.preprocessed),
        distribute.writes_checkpoint(tp.distribute),
    )
    budget = tp.checkpoint_budget_mb * 2**20
    for folder, size in checkpoint.prune(tracking.repo_root(), ckpt.folder, budget):
        print(f"removed the stale checkpoint {folder} ({size / 2**20:.0f} MB)", file=sys.stderr)
    for folder in (paths.plots, paths.figures):
        folder.mkdir(parents=True, exist_ok=True)
    tracking.use_experiment(tp.mlflow_experiment)
    runlog.mark_orphans(root, uri, keep=ckpt.run_id())
    state = ckpt.load()
    run = start_run(ckpt, settings, None if state is None else state["epoch"])
    claim = runlog.claim_run(root, run.info.run_id, uri)
    outbox = runlog.Outbox(root, run.info.run_id)
    try:
        tracking.log_params(settings.as_params())
        tracking.log_manifest(paths.raw / "manifest.json")
        # the model folder is swapped in whole, with its config: never a half-written model
        with staged_dir(paths.model) as staging:
            sets = (train_set, val_set)
            model, history = train_in(strategy, settings, sets, pre, staging, ckpt, outbox)
            summary = write_results(history, tp.monitor, paths)
            facts = card_facts(settings, train_set, val_set, summary)
            section = write_model(staging, model, pre, settings, run, facts)
        # the DVC outputs are complete; what follows only logs, so a rerun only finishes that
        runlog.flush_or_fail(outbox, uri)
        log_results(summary, section, settings)
        mlflow.end_run("FINISHED")
    except BaseException as exc:
        runlog.end_run_quietly(runlog.end_status(exc))
        raise
    runlog.release_run(root, run.info.run_id, claim)
    ckpt.remove()
    print(f"best epoch {summary['best_epoch']}: {summary}")
