"""What the model grid alone costs: the 3D Dice a perfect model would score at each image size.

    python benchmarks/grid_ceiling.py [--data ../shared/data] [--sizes 64 96 128 192]

Each patient's true mask goes through the preprocessing a training mask takes (onto the
image_size x image_size model grid) and back through the restore and threshold a prediction
takes (onto the CT grid), and is scored against itself: a model can do no better at that size.
Prints, per data set and size, the mean / min 3D Dice over patients at threshold 0.5 and at the
params' inference.threshold. No training; reads the shared data only.
"""

import argparse
import statistics
from pathlib import Path

import numpy as np

from sarcoma_seg.io.nifti import read_nifti
from sarcoma_seg.io.png import read_slices
from sarcoma_seg.metrics import volume_scores
from sarcoma_seg.settings import load_settings
from sarcoma_seg.transforms import Preprocessing
from sarcoma_seg.volumes import Volume

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
READERS = {"ibsi-sts": read_nifti, "sts-slices": read_slices}


def parse_args() -> argparse.Namespace:
    """--data (the shared data folder) and --sizes (model grid sides to score)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 192])
    return parser.parse_args()


def round_trip(volume: Volume, size: int, threshold: float) -> np.ndarray:
    """The true mask onto the model grid and back, as a perfect model's prediction would come."""
    pre = Preprocessing((-160.0, 240.0), size, 3)
    grid = pre.volume_mask(volume.mask).astype(np.float32)
    shape = volume.mask.shape[1:]
    return np.stack([pre.restore(s, shape) >= threshold for s in grid]).astype(np.uint8)


def ceiling(volumes: list[Volume], size: int, threshold: float) -> list[float]:
    """Per-patient 3D Dice of the round trip against the truth (tumour-bearing patients)."""
    return [
        volume_scores(round_trip(v, size, threshold), v.mask, v.spacing)["dice_3d"]
        for v in volumes
        if v.mask.any()
    ]


def main() -> None:
    """Score every data set found under --data at every size."""
    args = parse_args()
    inference = load_settings(ROOT / "params.yaml").inference
    thresholds = sorted({0.5, float(inference.threshold)}, reverse=True)
    found = [name for name in READERS if (args.data / name).is_dir()]
    if not found:
        raise SystemExit(
            f"shared data not found under {args.data}: no {' or '.join(READERS)}; pass --data"
        )
    for name in found:
        volumes = READERS[name](args.data / name)
        for size in args.sizes:
            for threshold in thresholds:
                scores = ceiling(volumes, size, threshold)
                print(
                    f"{name:11s} image_size {size:4d}  threshold {threshold:.2f}  "
                    f"patients {len(scores):3d}  mean 3D Dice {statistics.mean(scores):.4f}  "
                    f"min {min(scores):.4f}"
                )


if __name__ == "__main__":
    main()
