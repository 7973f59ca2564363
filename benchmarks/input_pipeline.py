"""Training throughput (slices/s) of the whole input pipeline against the model alone, at the
default params (96 px, batch 8, resnet18, 4 channels, the default augmentation):

    python benchmarks/input_pipeline.py [--slices 64] [--epochs 3] [--size 96] [--batch 8]

model alone: the same pre-made batch fed again and again (no reading, no augmentation).
before: the Keras Sequence (albumentations on the training thread, as train used until now).
after: the tf.data pipeline (sarcoma_seg.pipeline_input: parallel, deterministic, prefetched).
Each figure is the mean over the epochs after the first (tracing and warm-up excluded), the best
of --rounds interleaved rounds; the machine's CPU is shared, so compare ratios, not absolutes."""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sarcoma_seg  # noqa: E402,F401  (environment for TensorFlow and segmentation-models)
from sarcoma_seg.dataset import SliceSet, batch_sequence  # noqa: E402
from sarcoma_seg.model import build_unet, compile_unet, seed_everything  # noqa: E402
from sarcoma_seg.pipeline_input import train_batches  # noqa: E402
from sarcoma_seg.settings import load_settings  # noqa: E402
from sarcoma_seg.transforms import build_augmentation  # noqa: E402


def synthetic_set(slices: int, size: int, channels: int) -> SliceSet:
    """Random slices in [0, 1] with a square tumour in every third one."""
    rng = np.random.default_rng(0)
    images = rng.random((slices, size, size, channels), dtype=np.float32)
    masks = np.zeros((slices, size, size), np.uint8)
    masks[::3, size // 4 : size // 2, size // 4 : size // 2] = 1
    return SliceSet(images, masks, np.array(["p"] * slices), np.arange(slices), {})


class EpochTimer:
    """Wall time of every epoch of a fit."""

    def __init__(self) -> None:
        import tensorflow as tf

        times: list[float] = []

        class Timer(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                times.append(time.perf_counter() - self.start)

        self.times, self.callback = times, Timer()

    def rate(self, slices: int) -> float:
        """Slices per second over the epochs after the first."""
        return slices * (len(self.times) - 1) / sum(self.times[1:])


def measure(model, data, steps: int, epochs: int, slices: int) -> float:
    """Train `epochs` epochs of `steps` steps on data; slices/s after the first epoch."""
    timer = EpochTimer()
    model.fit(data, steps_per_epoch=steps, epochs=epochs, callbacks=[timer.callback], verbose=0)
    return timer.rate(slices)


def main() -> None:
    """Print slices/s of the model alone, the Sequence and the tf.data pipeline."""
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=4)  # 3 CT channels + PET
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tp = load_settings(ROOT / "params.yaml").train
    data = synthetic_set(args.slices, args.size, args.channels)
    steps = int(np.ceil(args.slices / args.batch))
    slices = steps * args.batch
    seed_everything(0)
    model = build_unet(tp.backbone, None, args.channels, tp.bn_momentum)
    compile_unet(model, replace(tp, epochs=args.epochs), steps)
    augment = build_augmentation(tp.augment, args.size, 0, pet=args.channels == 4)

    x, y = data.images[: args.batch], data.masks[: args.batch, ..., None].astype(np.float32)
    inputs = {
        "model alone (pre-made batches)": lambda: tf.data.Dataset.from_tensors((x, y)).repeat(),
        "before: keras Sequence": lambda: batch_sequence(data, args.batch, augment, 0),
        "after: tf.data pipeline": lambda: (
            train_batches(data, args.batch, augment, 0, args.epochs).dataset
        ),
    }
    rates: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved, best of each: the shared CPU's load drifts
        for name, make in inputs.items():
            rate = measure(model, make(), steps, args.epochs, slices)
            rates[name] = max(rates.get(name, 0.0), rate)
    start, fed = time.perf_counter(), 0
    for images, _ in train_batches(data, args.batch, augment, 0, args.epochs).dataset:
        fed += int(images.shape[0])
    pipeline_alone = fed / (time.perf_counter() - start)
    base = rates["model alone (pre-made batches)"]
    print(f"{args.size} px, batch {args.batch}, {tp.backbone}, {args.channels} channels")
    for name, rate in rates.items():
        print(f"{name:32s} {rate:7.1f} slices/s  {rate / base:.2f}x model alone")
    print(f"{'tf.data pipeline alone (no model)':32s} {pipeline_alone:7.1f} slices/s")


if __name__ == "__main__":
    main()
