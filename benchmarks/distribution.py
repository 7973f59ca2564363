"""Training slices/s at the defaults (96 px, global batch 8, resnet18, 4 channels, the tf.data
input with augmentation) on one device, MirroredStrategy over 2 logical CPU devices, and
MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1:

    python benchmarks/distribution.py [--slices 64] [--epochs 3]

On one CPU these measure correctness and overhead, not speed-up: the replicas share the same
cores. Each mode runs in its own interpreter (logical devices and the cluster are fixed when
TensorFlow starts); the figure is the global slices/s over the epochs after the first."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sarcoma_seg.stack import free_port  # noqa: E402


def child(mode: str, slices: int, epochs: int) -> None:
    """Train in this process under `mode` and print {"slices_per_s": ...} as JSON."""
    from dataclasses import replace

    from sarcoma_seg import distribute

    if mode == "mirrored":
        distribute.split_cpu(2)
    import numpy as np
    import tensorflow as tf

    from benchmarks.input_pipeline import EpochTimer, synthetic_set
    from sarcoma_seg.model import build_unet, compile_unet, seed_everything
    from sarcoma_seg.pipeline_input import train_batches
    from sarcoma_seg.settings import load_settings
    from sarcoma_seg.transforms import build_augmentation

    strategy = {
        "none": tf.distribute.get_strategy,
        "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
        "multi_worker": tf.distribute.MultiWorkerMirroredStrategy,
    }[mode]()
    tp = load_settings(ROOT / "params.yaml").train
    data = synthetic_set(slices, 96, 4)
    augment = build_augmentation(tp.augment, 96, 0, pet=True)
    with strategy.scope():
        seed_everything(0)
        model = build_unet(tp.backbone, None, 4, tp.bn_momentum)
        batches = train_batches(data, tp.batch_size, augment, 0, epochs)
        compile_unet(model, replace(tp, epochs=epochs), batches.steps)
        timer = EpochTimer()
        model.fit(
            batches.dataset,
            steps_per_epoch=batches.steps,
            epochs=epochs,
            callbacks=[timer.callback],
            verbose=0,
        )
    rate = timer.rate(int(np.ceil(slices / tp.batch_size)) * tp.batch_size)
    print(json.dumps({"slices_per_s": rate, "replicas": strategy.num_replicas_in_sync}))


def launch(mode: str, args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen:
    """One child process."""
    cmd = [sys.executable, __file__, "--child", mode]
    cmd += ["--slices", str(args.slices), "--epochs", str(args.epochs)]
    env = os.environ | env | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    """The JSON line a child printed."""
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    """Run the three modes one after the other and print their slices/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.slices, args.epochs)
    rates = {}
    for mode in ("none", "mirrored"):
        start = time.perf_counter()
        rates[mode] = result(launch(mode, args, {})) | {"wall": time.perf_counter() - start}
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    start = time.perf_counter()
    workers = [
        launch(
            "multi_worker",
            args,
            {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        )
        for i in range(2)
    ]
    rates["multi_worker"] = [result(w) for w in workers][0] | {"wall": time.perf_counter() - start}
    names = {
        "none": "one device",
        "mirrored": "mirrored, 2 logical CPUs",
        "multi_worker": "multi_worker, 2 processes",
    }
    print("96 px, global batch 8, resnet18, 4 channels, tf.data input with augmentation")
    for mode, got in rates.items():
        print(
            f"{names[mode]:28s} {got['slices_per_s']:6.1f} slices/s "
            f"({got['replicas']} replicas; {got['wall']:.0f} s wall with start-up)"
        )


if __name__ == "__main__":
    main()
