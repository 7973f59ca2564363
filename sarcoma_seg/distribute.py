"""How training uses the hardware: the tf.distribute strategy (train.distribute), which process
of a multi-worker cluster is the chief, and mixed precision (train.mixed_precision).

train.batch_size is the GLOBAL batch: each of R replicas computes batch_size / R slices of every
step, so the same params give the same optimisation whatever the devices (and the same
learning rate). To use more replicas fully, raise train.batch_size with them and scale
train.learning_rate by the same factor (the linear rule; docs/distributed.md)."""

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from sarcoma_seg.errors import SarcomaSegError, choice
from sarcoma_seg.settings import Settings

STRATEGIES = ("none", "mirrored", "multi_worker")
CPU_REPLICAS_ENV = "SARCOMA_SEG_CPU_REPLICAS"  # split the CPU into N logical devices (tests)
# what a non-chief worker writes goes to a temporary folder that DVC and git never see
WORKER_PATHS = ("model", "metrics", "plots", "figures")


def tf_config() -> dict[str, Any]:
    """The cluster description TensorFlow reads from TF_CONFIG ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SarcomaSegError(f"TF_CONFIG: not valid JSON ({exc.msg})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise SarcomaSegError('TF_CONFIG: needs {"cluster": {...}, "task": {...}}')
    return config


def is_chief(config: dict[str, Any]) -> bool:
    """The chief: task "chief", or worker 0 of a cluster without one; a lone process is chief."""
    task = config.get("task") or {}
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in config.get("cluster", {})


def split_cpu(replicas: int) -> None:
    """Show the CPU as `replicas` logical devices (MirroredStrategy without GPUs); must run
    before TensorFlow starts its runtime."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
    )


def make_strategy(name: str) -> Any:
    """The tf.distribute strategy train.distribute names: none (the default, one device),
    mirrored (every visible GPU, else every logical CPU) or multi_worker (from TF_CONFIG)."""
    choice("train.distribute", name, STRATEGIES)
    if name == "multi_worker" and not tf_config():
        raise SarcomaSegError(
            "train.distribute=multi_worker needs TF_CONFIG (the cluster's workers and this "
            "process's task) in the environment of every worker"
        )
    import tensorflow as tf

    replicas = os.environ.get(CPU_REPLICAS_ENV)
    if replicas and name != "none":
        split_cpu(int(replicas))
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_settings(settings: Settings) -> Settings:
    """The settings this process trains with: unchanged on the chief; on the other workers of a
    cluster, outputs move to a temporary folder (they train in lockstep but write nothing that
    DVC or git sees; training.train_as_worker logs nothing to MLflow either)."""
    if settings.train.distribute != "multi_worker" or is_chief(tf_config()):
        return settings
    scratch = Path(tempfile.mkdtemp(prefix="sarcoma-seg-worker-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    moved = {key: scratch / key for key in WORKER_PATHS}
    return replace(settings, paths=replace(settings.paths, **moved))


def state_root(distribute: str, model: Path, root: Path) -> Path:
    """Where training keeps its run locks and metrics outbox: the repository root, or on a
    non-chief worker its scratch folder, the parent of its paths.model (it logs nothing that
    anyone reads)."""
    if distribute != "multi_worker" or is_chief(tf_config()):
        return root
    return Path(model).parent


def writes_checkpoint(distribute: str) -> bool:
    """Whether this process writes the training checkpoint: every process but a non-chief
    worker. Every worker of a cluster restores from <repository root>/.checkpoints, the chief's
    (so all resume at the same epoch with the same weights); that folder must therefore be on
    storage every worker sees (docs/distributed.md)."""
    return distribute != "multi_worker" or is_chief(tf_config())


def set_precision(mixed: bool, force: bool = False) -> bool:
    """mixed_float16 when train.mixed_precision is on and a GPU is there (force: on the CPU too,
    for tests); float32 otherwise, where float16 is only slower. True if mixed."""
    import tensorflow as tf

    use = bool(mixed) and (force or bool(tf.config.list_physical_devices("GPU")))
    if mixed and not use:
        print("train.mixed_precision: no GPU here, training in float32")
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if use else "float32")
    return use


def float32_output(model: Any) -> Any:
    """Under mixed precision, the sigmoid on float32 logits, so the probabilities (and the loss)
    keep full precision; compile then wraps the optimizer in a LossScaleOptimizer."""
    import tensorflow as tf

    if model.output.dtype == tf.float32:
        return model
    logits = model.get_layer("final_conv").output
    probs = tf.keras.layers.Activation("sigmoid", dtype="float32", name="sigmoid_float32")(logits)
    return tf.keras.Model(model.inputs, probs, name=model.name)
