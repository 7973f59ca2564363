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
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:  # the library imports TensorFlow's environment: only inside the functions
    from sarcoma_seg.settings import Inference

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


def fold_probabilities(workdir: Path, params: dict, sets: tuple[str, ...]) -> tuple:
    """This fold's model run once per flip setting over the patients of `sets` (split names):
    the preprocessing, the model's inference section and {patient: (volume, {flip: probs})}."""
    import sarcoma_seg  # noqa: F401  (environment for TensorFlow and segmentation-models)
    from sarcoma_seg.inference import (
        model_config_path,
        read_model_config,
        require_inference,
        volume_probabilities,
    )
    from sarcoma_seg.model import load_unet
    from sarcoma_seg.volumes import load_volumes

    model_dir = workdir / params["paths"]["model"]
    stored = read_model_config(model_config_path(model_dir))
    pre, inference = stored.preprocessing, require_inference(model_config_path(model_dir), stored)
    model = load_unet(model_dir)
    split = json.loads((workdir / params["paths"]["split"]).read_text())
    ids = [patient for name in sets for patient in split[name]]
    found = {}
    for v in load_volumes(workdir / params["paths"]["raw"], ids):
        images = pre.volume(v.ct, v.pet)
        found[v.patient_id] = (
            v,
            {f: volume_probabilities(model, images, f) for f in (False, True)},
        )
    return pre, inference, found


def variant_dice(pre, found: dict, variant: "Inference") -> dict[str, float]:
    """Held-out 3D Dice per patient of the stored probabilities under one inference setting."""
    from sarcoma_seg.inference import probabilities_to_mask
    from sarcoma_seg.metrics import volume_scores

    scores = {}
    for patient, (v, probs) in found.items():
        mask = probabilities_to_mask(probs[variant.tta_flip], pre, v.ct.shape[1:], variant)
        scores[patient] = volume_scores(mask, v.mask, v.spacing)["dice_3d"]
    return scores


def inference_grid(inference: "Inference") -> dict[str, "Inference"]:
    """Every postprocess x flip-TTA setting and the threshold x z_sigma grid, the rest as stored."""
    variants = {
        f"{post}{'+flip' if flip else ''}": replace(inference, postprocess=post, tta_flip=flip)
        for post, flip in itertools.product(("none", "largest_component"), (False, True))
    }
    for threshold, sigma in itertools.product(THRESHOLDS, Z_SIGMAS):
        variants[f"threshold {threshold} z_sigma {sigma}"] = replace(
            inference, threshold=threshold, z_sigma=sigma
        )
    return variants


def tuned_on_validation(workdir: Path, params: dict) -> tuple[str, dict[str, float], dict]:
    """Nested choice of the inference setting: the grid scored on this fold's validation patients
    (never trained on, never tested), the best mean Dice applied to its test patients. Returns the
    chosen setting, its test Dice per patient and every setting's test Dice (for the record)."""
    pre, inference, found = fold_probabilities(workdir, params, ("val", "test"))
    split = json.loads((workdir / params["paths"]["split"]).read_text())
    val = {p: found[p] for p in split["val"]}
    test = {p: found[p] for p in split["test"]}
    variants = {"stored": inference, **inference_grid(inference)}
    # ties keep the earlier entry: the stored (params) setting first
    val_mean = {
        name: statistics.mean(variant_dice(pre, val, v).values()) for name, v in variants.items()
    }
    chosen = max(val_mean, key=lambda name: (val_mean[name], -list(variants).index(name)))
    everything = {name: variant_dice(pre, test, v) for name, v in variants.items()}
    print(
        f"  chosen on validation: {chosen} (val mean {val_mean[chosen]:.3f}, "
        f"stored {val_mean['stored']:.3f})",
        file=sys.stderr,
    )
    return chosen, everything[chosen], everything


def inference_ablation(workdir: Path, params: dict) -> dict[str, dict[str, float]]:
    """Held-out 3D Dice of this fold's model under every postprocess x flip-TTA setting, other
    thresholds and slice smoothings: inference-time levers measured on the very same weights."""
    pre, inference, found = fold_probabilities(workdir, params, ("test",))
    return {name: variant_dice(pre, found, v) for name, v in inference_grid(inference).items()}


def source_entry(text: str) -> dict[str, str]:
    """One data.sources entry from SOURCE:PATH, the path made absolute for the scratch copy."""
    source, sep, path = text.partition(":")
    if not sep or not path:
        sys.exit(f"--sources {text!r}: expected SOURCE:PATH, e.g. nifti:../shared/data/ibsi-sts")
    return {"source": source, "path": str(Path(path).resolve())}


def main() -> None:
    """Parse arguments, run every fold, print the table and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--path", default=None, help="data.path for local sources")
    parser.add_argument(
        "--sources",
        nargs="+",
        metavar="SOURCE:PATH",
        help="data.sources instead of --source/--path, e.g. nifti:../shared/data/ibsi-sts "
        "dicom:../shared/data/ibsi-sts-dicom",
    )
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
    parser.add_argument(
        "--tune-inference",
        action="store_true",
        help="nested: pick threshold x z_sigma (and postprocess, flip) on each fold's validation "
        "patients (needs --val > 0) and score its test patients with that choice",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="sarcoma-cv-"))
    # a snapshot of the code: stages run with the scratch copy first on sys.path, so editing the
    # workspace while a long benchmark runs does not change what it measures
    for name in ("stages", "sarcoma_seg", "params.yaml"):
        (shutil.copytree if name != "params.yaml" else shutil.copy2)(ROOT / name, work / name)
    sys.path.insert(0, str(work))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=args.source, path=args.path and str(Path(args.path).resolve()))
    if args.sources:
        params["data"]["sources"] = [source_entry(text) for text in args.sources]
    params["split"]["folds"] = args.folds
    if args.val is not None:
        params["split"]["val"] = args.val
    for assignment in args.set:
        override(params, assignment)
    if args.tune_inference and not params["split"]["val"]:
        sys.exit("--tune-inference needs validation patients: give --val N (N > 0)")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds = run_stage("download", work)
    rows, ablation, chosen, tested_all = [], {}, {}, {}
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
        if args.tune_inference:
            chosen[fold], tuned, everything = tuned_on_validation(work, params)
            for row in rows:
                if row["fold"] == fold:
                    row["tuned"] = tuned[row["patient"]]
            for name, per_patient in everything.items():
                tested_all.setdefault(name, {}).update(per_patient)
        # the record so far, readable while a long run goes on
        (work / "cross_validation.json").write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "rows": rows,
                    "chosen": chosen,
                    "stage_min": seconds / 60,
                    "wall_min": (time.perf_counter() - started) / 60,
                },
                indent=1,
            )
        )
        if args.ablate_inference:
            for name, per_patient in inference_ablation(work, params).items():
                ablation.setdefault(name, {}).update(per_patient)
    keys = ["dice_3d", "hd95_mm", "msd_mm", "volume_true_cm3", "volume_pred_cm3"]
    keys += ["tuned"] if args.tune_inference else []
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
    for fold, name in chosen.items():
        print(f"fold {fold}: inference chosen on its validation patients: {name}")
    if tested_all:
        best = max(tested_all, key=lambda n: statistics.mean(tested_all[n].values()))
        print(
            f"for comparison only, the setting best on the test patients themselves (optimistic, "
            f"selection on the scored folds): {best}, mean 3D Dice "
            f"{statistics.mean(tested_all[best].values()):.3f}"
        )
    folds = len(args.only or range(args.folds))
    for label, key in [("params' inference", "dice_3d")] + [("nested", "tuned")] * bool(chosen):
        dice = [float(r[key]) for r in rows]
        print(
            f"{label}: patients {len(rows)}  folds {folds}  "
            f"mean 3D Dice {statistics.mean(dice):.3f}  median {statistics.median(dice):.3f}  "
            f"min {min(dice):.3f}  "
            f"below 0.5: {sum(d < 0.5 for d in dice)}"
        )
    print(
        f"total {seconds / 60:.1f} min of stages, {(time.perf_counter() - started) / 60:.1f} min "
        f"wall  (scratch copy: {work})"
    )


if __name__ == "__main__":
    main()
