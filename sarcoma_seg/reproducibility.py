"""The metrics of a rerun against the committed ones, within what is promised across machines.

Same machine, same params and seed: bit-identical metrics. Another x86 CPU computes the same
pipeline with other oneDNN kernels (instruction set, thread count), so its weights and metrics
differ slightly; the tolerances below bound that difference (figures: docs/results.md).

usage: python -m sarcoma_seg.reproducibility [--against REF]
Compares metrics/*.json of the workspace with those committed at REF (default HEAD); prints one
line per metric beyond its tolerance and exits 1, or one line saying all are within it."""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sarcoma_seg.settings import load_settings

METRIC_FILES = ("evaluate.json", "train.json")
# Absolute tolerance by metric family. Across machines the phantom test Dice moved by 0.017,
# precision by 0.031, the volume error by 0.10 and HD95 by 0.35 mm (2 test patients, so one
# patient's change is half the mean's); a bound about twice that, and counts must be equal.
TOLERANCES: dict[str, float] = {
    "dice_3d": 0.05,
    "iou_3d": 0.05,
    "slice_iou": 0.05,
    "slice_fscore": 0.05,
    "sensitivity": 0.05,
    "precision": 0.075,
    "volume_rel_error": 0.25,
    "hd95_mm": 10.0,
    "msd_mm": 5.0,
    "val_": 0.05,  # validation metrics of train.json, where split.val > 0
}
EXACT = ("patients", "slices", "best_epoch", "epochs_run")


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metric JSON as dotted keys."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def tolerance(key: str) -> float | None:
    """The metric's absolute tolerance, 0 for counts, None for one not compared (spreads)."""
    name = key.split(":")[-1].rsplit(".", 1)[-1]
    if name in EXACT:
        return 0.0
    if name.endswith("_std"):
        return None  # the spread of 2 test patients: noise, not a promise
    return next((tol for family, tol in TOLERANCES.items() if name.startswith(family)), None)


def compare(committed: dict[str, float], current: dict[str, float]) -> list[str]:
    """One line per metric that is missing or beyond its tolerance."""
    problems = []
    for key, expected in sorted(committed.items()):
        tol = tolerance(key)
        if tol is None:
            continue
        if key not in current:
            problems.append(f"{key}: committed {expected:g}, missing from the rerun")
        elif abs(current[key] - expected) > tol:
            problems.append(
                f"{key}: committed {expected:g}, rerun {current[key]:g}, "
                f"difference {abs(current[key] - expected):.4g} > tolerance {tol:g}"
            )
    return problems


def committed_metrics(ref: str, folder: str) -> dict[str, float]:
    """The metric files as committed at ref, flattened with the file name as prefix."""
    flat: dict[str, float] = {}
    for name in METRIC_FILES:
        shown = subprocess.run(
            ["git", "show", f"{ref}:{folder}/{name}"], capture_output=True, text=True
        )
        if shown.returncode == 0:
            flat |= flatten(json.loads(shown.stdout), f"{name}:")
    return flat


def workspace_metrics(folder: str) -> dict[str, float]:
    """The metric files of the workspace, flattened like committed_metrics."""
    flat: dict[str, float] = {}
    for name in METRIC_FILES:
        path = Path(folder) / name
        if path.is_file():
            flat |= flatten(json.loads(path.read_text()), f"{name}:")
    return flat


def main(argv: list[str] | None = None) -> None:
    """Compare the workspace's metrics with REF's; exit 1 beyond the tolerance."""
    parser = argparse.ArgumentParser(description="rerun metrics against the committed ones")
    parser.add_argument("--against", default="HEAD", help="the commit holding the expected metrics")
    args = parser.parse_args(argv)
    folder = str(load_settings().paths.metrics)
    committed = committed_metrics(args.against, folder)
    if not committed:
        print(f"error: no metrics committed at {args.against}:{folder}", file=sys.stderr)
        raise SystemExit(1)
    problems = compare(committed, workspace_metrics(folder))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    print(f"metrics within the cross-machine tolerance of {args.against}")


if __name__ == "__main__":
    main()
