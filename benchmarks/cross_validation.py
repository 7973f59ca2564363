"""Patient-level k-fold cross-validation benchmark: runs the pipeline's stages once per fold and
prints the per-patient table of held-out 3D scores and the mean Dice across all folds.

    python benchmarks/cross_validation.py --source nifti --path ../shared/data/ibsi-sts \\
        --folds 5 --set train.epochs=12

Every fold trains on its own patients only; every patient is tested in exactly one fold. Runs
in a scratch copy of the project (MLflow store included), so the workspace is left untouched."""

import argparse
import csv
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("split", "preprocess", "train", "evaluate")
# threshold x z_sigma grid scored on each fold's weights, with the params' other settings
THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
Z_SIGMAS = (0.0, 1.0, 2.0, 3.0)


def override(params: dict, assignment: str) -> None:
    """Apply one dotted key=value (value parsed as YAML), as `dvc exp run -S` does."""
    key, _, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    node = params
    for name in parents:
        node = node[name]
    node[leaf] = yaml.safe_load(value)


def run_stage(name: str, workdir: Path) -> float:
    """Run one stage as DVC would; return its duration in seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", f"stages.{name}"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"stage {name} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def inference_ablation(workdir: Path, params: dict) -> dict[str, dict[str, float]]:
    """Held-out 3D Dice of this fold's model under every postprocess x flip-TTA setting, other
    thresholds and slice smoothings: inference-time levers measured on the very same weights."""
    import sarcoma_seg  # noqa: F401  (environment for TensorFlow and segmentation-models)
    from sarcoma_seg.inference import (
        model_config_path,
        probabilities_to_mask,
        read_model_config,
        require_inference,
        volume_probabilities,
    )
    from sarcoma_seg.metrics import volume_scores
    from sarcoma_seg.model import load_unet
    from sarcoma_seg.volumes import load_volumes

    model_dir = workdir / params["paths"]["model"]
    stored = read_model_config(model_config_path(model_dir))
    pre, inference = stored.preprocessing, require_inference(model_config_path(model_dir), stored)
    model = load_unet(model_dir)
    test_ids = json.loads((workdir / params["paths"]["split"]).read_text())["test"]
    volumes = load_volumes(workdir / params["paths"]["raw"], test_ids)
    variants = {
        f"{post}{'+flip' if flip else ''}": replace(inference, postprocess=post, tta_flip=flip)
        for post, flip in itertools.product(("none", "largest_component"), (False, True))
    }
    for threshold, sigma in itertools.product(THRESHOLDS, Z_SIGMAS):
        variants[f"threshold {threshold} z_sigma {sigma}"] = replace(
            inference, threshold=threshold, z_sigma=sigma
        )
    scores: dict[str, dict[str, float]] = {}
    for v in volumes:  # the model runs once per flip setting; the variants reuse its output
        images = pre.volume(v.ct, v.pet)
        probs = {flip: volume_probabilities(model, images, flip) for flip in (False, True)}
        for name, variant in variants.items():
            mask = probabilities_to_mask(probs[variant.tta_flip], pre, v.ct.shape[1:], variant)
            scores.setdefault(name, {})[v.patient_id] = volume_scores(mask, v.mask, v.spacing)[
                "dice_3d"
            ]
    return scores


def main() -> None:
    """Parse arguments, run every fold, print the table and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--path", default=None, help="data.path for local sources")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--val", type=int, default=None, help="validation patients per fold (default: split.val)"
    )
    parser.add_argument("--set", action="append", default=[], help="extra key=value params")
    parser.add_argument(
        "--only", type=int, action="append", help="run just these folds (screening a lever)"
    )
    parser.add_argument(
        "--ablate-inference",
        action="store_true",
        help="also score postprocess x flip-TTA, other thresholds and z_sigma on each fold",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sarcoma-cv-"))
    # a snapshot of the code: stages run with the scratch copy first on sys.path, so editing the
    # workspace while a long benchmark runs does not change what it measures
    for name in ("stages", "sarcoma_seg", "params.yaml"):
        (shutil.copytree if name != "params.yaml" else shutil.copy2)(ROOT / name, work / name)
    sys.path.insert(0, str(work))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=args.source, path=args.path and str(Path(args.path).resolve()))
    params["split"]["folds"] = args.folds
    if args.val is not None:
        params["split"]["val"] = args.val
    for assignment in args.set:
        override(params, assignment)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds = run_stage("download", work)
    rows, ablation = [], {}
    for fold in args.only or range(args.folds):
        params["split"]["fold"] = fold
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        seconds += sum(run_stage(name, work) for name in STAGES)
        with (work / params["paths"]["metrics"] / "per_patient.csv").open() as f:
            rows += [{"fold": fold, **row} for row in csv.DictReader(f)]
        print(f"fold {fold} done, {seconds / 60:.1f} min so far", file=sys.stderr)
        # each fold's weights stay in the scratch copy, to be scored again under other settings
        shutil.copytree(
            work / params["paths"]["model"], work / "folds" / str(fold), dirs_exist_ok=True
        )
        if args.ablate_inference:
            for name, per_patient in inference_ablation(work, params).items():
                ablation.setdefault(name, {}).update(per_patient)
    keys = ["dice_3d", "hd95_mm", "msd_mm", "volume_true_cm3", "volume_pred_cm3"]
    print(f"{'patient':10} fold " + " ".join(f"{k:>15}" for k in keys))
    for row in sorted(rows, key=lambda r: r["patient"]):
        print(
            f"{row['patient']:10} {row['fold']:4} "
            + " ".join(f"{float(row[k]):15.3f}" for k in keys)
        )
    for name, per_patient in ablation.items():
        values = list(per_patient.values())
        print(
            f"inference {name:24} mean 3D Dice {statistics.mean(values):.3f}  "
            f"median {statistics.median(values):.3f}  (same weights)"
        )
    dice = [float(r["dice_3d"]) for r in rows]
    print(
        f"patients {len(rows)}  folds {len(args.only or range(args.folds))}  "
        f"mean 3D Dice {statistics.mean(dice):.3f}  "
        f"median {statistics.median(dice):.3f}  min {min(dice):.3f}  "
        f"total {seconds / 60:.1f} min  (scratch copy: {work})"
    )


if __name__ == "__main__":
    main()
