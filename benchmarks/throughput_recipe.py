"""Training throughput of the defaults against the original study's recipe on this CPU, and the
held-out Dice each buys per CPU-hour:

    python benchmarks/throughput_recipe.py [--steps 3]

defaults: resnet18 U-Net, 96 px, batch 8, 4 channels (3 CT windows + PET).
study: efficientnetb3 U-Net, 320 px, batch 8, 3 channels (CT only), as the original study trained.
Each is timed over --steps training steps on a synthetic batch after one warm-up step (tracing
excluded). The defaults' Dice and training time come from docs/results.md (IBSI 5-fold
cross-validation, 41-51 min for 5 trainings + evaluation); the study recipe cannot be trained
here in the time it would take, so its Dice is not measured, only its cost."""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sarcoma_seg  # noqa: E402,F401  (environment for TensorFlow and segmentation-models)
from sarcoma_seg.model import build_unet, compile_unet, seed_everything  # noqa: E402
from sarcoma_seg.settings import load_settings  # noqa: E402

RECIPES = {  # name: (backbone, image size, batch, channels)
    "defaults": ("resnet18", 96, 8, 4),
    "study": ("efficientnetb3", 320, 8, 3),
}
DEFAULT_DICE = 0.786  # docs/results.md: IBSI 5-fold mean 3D Dice, defaults, seed 42
DEFAULT_MINUTES_PER_FOLD = 46 / 5  # docs/results.md: 41-51 min for the 5 folds
CORES = 2  # this machine: wall time x 2 cores = CPU time


def slices_per_second(backbone: str, size: int, batch: int, channels: int, steps: int) -> float:
    """Training slices/s of one U-Net on a synthetic batch, after a warm-up step."""
    tp = load_settings(ROOT / "params.yaml").train
    seed_everything(0)
    model = build_unet(backbone, None, channels, tp.bn_momentum)
    compile_unet(model, tp, steps)
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, channels), dtype=np.float32)
    y = (rng.random((batch, size, size, 1)) > 0.95).astype(np.float32)
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    """Print slices/s of each recipe, the ratio, and Dice per CPU-hour for the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rates = {name: slices_per_second(*recipe, args.steps) for name, recipe in RECIPES.items()}
    for name, (backbone, size, batch, channels) in RECIPES.items():
        print(
            f"{name:9s} {backbone:15s} {size} px, batch {batch}, {channels} ch: "
            f"{rates[name]:6.2f} slices/s"
        )
    ratio = rates["defaults"] / rates["study"]
    cpu_hours = DEFAULT_MINUTES_PER_FOLD / 60 * CORES
    print(f"the defaults train {ratio:.1f}x more slices/s than the study's recipe")
    print(
        f"defaults: held-out 3D Dice {DEFAULT_DICE} for ~{cpu_hours:.2f} CPU-hours per training "
        f"(one fold) = {DEFAULT_DICE / cpu_hours:.2f} Dice per CPU-hour"
    )
    print(
        f"study recipe: the same epochs would take ~{cpu_hours * ratio:.1f} CPU-hours per "
        "training; its held-out Dice cannot be trained here in time (not measured)"
    )


if __name__ == "__main__":
    main()
