"""Patient-level k-fold cross-validation benchmark: runs the pipeline's stages once per fold and
records every held-out patient's 3D scores, tumour uptake and the model's confidence.

    python benchmarks/cross_validation.py --sources nifti:../shared/data/ibsi-sts \\
        dicom:../shared/data/ibsi-sts-dicom --folds 5 --val 4 --tune-inference \\
        [--set train.epochs=12] [--only 0 --only 1] [--record NAME]

Every fold trains on its own patients only; every patient is tested in exactly one fold. The
record is an output: `cv/NAME/` in the checkout (git-ignored) holds one JSON per finished fold,
the merged table and summary, and the scratch project the folds run in (a snapshot of the code
taken at the first run, its MLflow store, checkpoints and each fold's model). Rerunning the same
command resumes at the next unfinished fold (a killed training resumes at its epoch); `--only`
runs of one configuration merge into one table. The project's MLflow store gets one parent run
per record and one child run per fold (experiment `sarcoma-seg-cv`)."""

import argparse
import csv
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:  # the library imports TensorFlow's environment: only inside the functions
    from sarcoma_seg.settings import Inference

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "cv"  # git-ignored: per-patient results of real scans and models stay local
EXPERIMENT = "sarcoma-seg-cv"
STAGES = ("split", "preprocess", "train")  # each fold is scored here, not by the evaluate stage
# threshold x z_sigma grid scored on each fold's weights, with the params' other settings
THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
Z_SIGMAS = (0.0, 1.0, 2.0, 3.0)
FAILED, GOOD = 0.5, 0.7  # Dice below FAILED should be flagged for review, above GOOD should not
FALSE_ALARMS = 0.2  # share of good validation segmentations the review cutoff may flag (issue 27)
MIN_GOOD = 5  # good validation patients needed to place the cutoff
COLUMNS = (
    "patient",
    "fold",
    "dice_3d",
    "tuned",
    "hd95_mm",
    "volume_true_cm3",
    "volume_pred_cm3",
    "suv_median",
    "suv_p90",
    "hu_median",
    "confidence",
    "needs_review",
)


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


def fold_probabilities(model_dir: Path, work: Path, params: dict, sets: tuple[str, ...]) -> tuple:
    """A fold's model run once per flip setting over the patients of `sets` (split names): the
    preprocessing, the model's inference section and {patient: (volume, role, {flip: probs})}."""
    import sarcoma_seg  # noqa: F401  (environment for TensorFlow and segmentation-models)
    from sarcoma_seg.inference import volume_probabilities
    from sarcoma_seg.io.store import load_volumes
    from sarcoma_seg.model_folder import open_model_folder

    opened = open_model_folder(model_dir)
    pre, inference, run = opened.stored.pre, opened.stored.inference, opened.predictor
    split = json.loads((work / params["paths"]["split"]).read_text())
    roles = {patient: name for name in sets for patient in split[name]}
    found = {}
    for v in load_volumes(work / params["paths"]["raw"], list(roles)):
        images = pre.volume(v.ct, v.pet)
        probs = {f: volume_probabilities(None, images, f, predictor=run) for f in (False, True)}
        found[v.patient_id] = (v, roles[v.patient_id], probs)
    return pre, inference, found


def variant_dice(pre, found: dict, variant: "Inference") -> dict[str, float]:
    """Held-out 3D Dice per patient of the stored probabilities under one inference setting."""
    from sarcoma_seg.inference import probabilities_to_mask
    from sarcoma_seg.metrics import dice  # Dice only: the surface distances are the slow part

    scores = {}
    for patient, (v, _, probs) in found.items():
        mask = probabilities_to_mask(probs[variant.tta_flip], pre, v.ct.shape[1:], variant)
        scores[patient] = float(dice(mask, v.mask))
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


def score_fold(model_dir: Path, work: Path, params: dict, fold: int, tune: bool) -> dict:
    """One fold's record: every validation and test patient's row under the stored inference
    (scores, uptake, confidence), the nested choice made on the validation patients and its test
    Dice, and every grid setting's test Dice (for comparison only)."""
    from sarcoma_seg.inference import reviewed_segmentation
    from sarcoma_seg.scoring import patient_row

    sets = ("val", "test") if params["split"]["val"] else ("test",)
    pre, inference, found = fold_probabilities(model_dir, work, params, sets)
    rows = []
    for v, role, probs in found.values():
        seg = reviewed_segmentation(probs[inference.tta_flip], pre, v.ct.shape[1:], inference)
        row = patient_row(v, seg.mask, seg.confidence, None)
        rows.append({**row, "fold": fold, "role": role})
    record: dict[str, Any] = {"fold": fold, "rows": rows, "chosen": None, "grid": {}}
    if tune:
        val = {p: f for p, f in found.items() if f[1] == "val"}
        test = {p: f for p, f in found.items() if f[1] == "test"}
        variants = {"stored": inference, **inference_grid(inference)}
        val_mean = {
            n: statistics.mean(variant_dice(pre, val, v).values()) for n, v in variants.items()
        }
        # ties keep the earlier entry: the stored (params) setting first
        chosen = max(val_mean, key=lambda n: (val_mean[n], -list(variants).index(n)))
        record["grid"] = {n: variant_dice(pre, test, v) for n, v in variants.items()}
        record["chosen"] = {
            "name": chosen,
            "val_mean": val_mean[chosen],
            "stored": val_mean["stored"],
        }
        for row in rows:
            row["tuned"] = record["grid"][chosen].get(row["patient"])
    return record


def review_rule(rows: list[dict]) -> dict[str, Any]:
    """The confidence cutoff, chosen on validation rows only: the FALSE_ALARMS quantile of the
    confidence of the validation patients the model segmented well (Dice > GOOD), so that about
    that share of good segmentations is flagged; a lower confidence than that is unusual for a
    success. (Validation patients rarely fail, so failures cannot be what the cutoff is fit to.)"""
    good = sorted(r["confidence"] for r in rows if r["dice_3d"] > GOOD)
    if len(good) < MIN_GOOD:
        return {"review_below": None, "why": f"fewer than {MIN_GOOD} good validation patients"}
    cutoff = float(np.quantile(good, FALSE_ALARMS))
    return {"review_below": round(cutoff, 3), "val_good": len(good), "quantile": FALSE_ALARMS}


def review_check(rows: list[dict], cutoff: float | None) -> dict[str, Any]:
    """How a cutoff does on rows: the share of failures flagged and of good ones flagged."""
    if cutoff is None:
        return {}
    failed = [r for r in rows if r["dice_3d"] < FAILED]
    good = [r for r in rows if r["dice_3d"] > GOOD]
    flagged = lambda group: sum(r["confidence"] < cutoff for r in group)  # noqa: E731
    return {
        "failed_flagged": f"{flagged(failed)} of {len(failed)}",
        "good_flagged": f"{flagged(good)} of {len(good)}",
    }


def dice_summary(values: list[float]) -> dict[str, Any]:
    """Mean / median / min / count below FAILED of a list of Dice."""
    return {
        "patients": len(values),
        "mean": round(statistics.mean(values), 4),
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "below_0.5": sum(d < FAILED for d in values),
    }


def summarise(records: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """The merged test table of the finished folds and its summary: Dice (params and nested),
    by uptake group, and the review rule chosen on the validation rows, checked on the test."""
    from sarcoma_seg.scoring import uptake_groups

    test = [r for rec in records for r in rec["rows"] if r["role"] == "test"]
    val = [r for rec in records for r in rec["rows"] if r["role"] == "val"]
    rule = review_rule(val)
    for row in test:
        cut = rule["review_below"]
        row["needs_review"] = None if cut is None else row["confidence"] < cut
    summary: dict[str, Any] = {"folds": sorted(rec["fold"] for rec in records)}
    summary["params"] = dice_summary([r["dice_3d"] for r in test])
    summary["params_by_uptake"] = uptake_groups(test)
    if all("tuned" in r for r in test):
        summary["nested"] = dice_summary([r["tuned"] for r in test])
        summary["nested_by_uptake"] = uptake_groups(test, "tuned")
        summary["chosen"] = {rec["fold"]: rec["chosen"]["name"] for rec in records}
    summary["review"] = rule | review_check(test, rule["review_below"])
    return sorted(test, key=lambda r: r["patient"]), summary


def source_entry(text: str) -> dict[str, str]:
    """One data.sources entry from SOURCE:PATH, the path made absolute for the scratch copy."""
    source, sep, path = text.partition(":")
    if not sep or not path:
        sys.exit(f"--sources {text!r}: expected SOURCE:PATH, e.g. nifti:../shared/data/ibsi-sts")
    return {"source": source, "path": str(Path(path).resolve())}


def record_name(args: argparse.Namespace) -> str:
    """--record, else a name from the data and the --set values."""
    if args.record:
        return args.record
    data = "-".join(Path(s.partition(":")[2]).name for s in args.sources or []) or args.source
    sets = "_".join(re.sub(r"[^A-Za-z0-9.=]+", "-", s) for s in args.set) or "defaults"
    return f"{data}_{sets}"


def configuration(args: argparse.Namespace) -> dict[str, Any]:
    """What defines a record: a resumed or merged run must have the same."""
    keys = ("source", "path", "sources", "folds", "val", "set", "tune_inference")
    return {key: getattr(args, key) for key in keys}


def open_record(folder: Path, args: argparse.Namespace) -> Path:
    """The record's scratch project: made with a snapshot of the code on the first run, reused
    after (so a resumed run measures the same code); refuses another configuration."""
    settings = folder / "settings.json"
    if settings.exists():
        stored = json.loads(settings.read_text())["configuration"]
        if stored != configuration(args):
            sys.exit(f"error: record {folder} holds another configuration ({stored}); --record NEW")
        return folder / "work"
    work = folder / "work"
    work.mkdir(parents=True)
    for name in ("stages", "sarcoma_seg"):
        shutil.copytree(ROOT / name, work / name)
    shutil.copy2(ROOT / "params.yaml", work / "params.yaml")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    settings.write_text(json.dumps({"configuration": configuration(args), "commit": commit}))
    return work


def fold_params(work: Path, args: argparse.Namespace) -> dict:
    """The scratch project's params: the workspace's, with the data, folds and --set values."""
    params = yaml.safe_load((work / "params.yaml").read_text())
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
    return params


def mlflow_parent(folder: Path, args: argparse.Namespace) -> str:
    """The record's parent run in the project's MLflow store: found by its tag, else made."""
    import mlflow

    from sarcoma_seg import tracking

    tracking.use_experiment(EXPERIMENT)
    name = folder.name
    found = mlflow.search_runs(filter_string=f"tags.cv_record = '{name}'", output_format="list")
    if found:
        return found[0].info.run_id
    with mlflow.start_run(run_name=f"cv {name}", tags={"cv_record": name}) as run:
        mlflow.log_params({"folds": args.folds, "val": args.val, "sources": str(args.sources)})
        mlflow.log_params({f"set.{s.partition('=')[0]}": s.partition("=")[2] for s in args.set})
    return run.info.run_id


def log_fold(parent: str, record: dict, minutes: float) -> None:
    """One child run per fold: its test patients' Dice as metrics, its record as an artifact."""
    import mlflow

    test = [r for r in record["rows"] if r["role"] == "test"]
    with mlflow.start_run(
        run_name=f"fold {record['fold']}",
        nested=True,
        parent_run_id=parent,
        tags={"fold": str(record["fold"])},
    ):
        mlflow.log_metrics(
            {"dice_3d_mean": statistics.mean(r["dice_3d"] for r in test), "minutes": minutes}
        )
        mlflow.log_metrics({f"dice_3d.{r['patient']}": r["dice_3d"] for r in test})
        if record["chosen"]:
            mlflow.log_param("chosen_inference", record["chosen"]["name"])
        mlflow.log_dict(record, f"fold-{record['fold']}.json")


def log_summary(parent: str, folder: Path, summary: dict) -> None:
    """The parent run's metrics and the merged table, replaced as folds finish."""
    import mlflow

    flat = {f"params_{k}": v for k, v in summary["params"].items()}
    flat |= {f"nested_{k}": v for k, v in summary.get("nested", {}).items()}
    for name, group in summary["params_by_uptake"].items():
        if group["mean"] is not None:
            flat[f"params_{name}_mean"] = group["mean"]
    with mlflow.start_run(run_id=parent):
        mlflow.log_metrics({k.replace(".", "_"): float(v) for k, v in flat.items()})
        mlflow.log_artifact(str(folder / "table.csv"))
        mlflow.log_artifact(str(folder / "summary.json"))


def write_table(rows: list[dict], path: Path) -> None:
    """The merged per-patient test table (COLUMNS) as CSV."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: fmt(row.get(k)) for k in COLUMNS})


def fmt(value: Any) -> Any:
    """A table cell: floats to 3 decimals (NaN as nan), None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return value


def print_report(rows: list[dict], summary: dict) -> None:
    """The per-patient table, Dice by uptake, the review rule."""
    print(" ".join(f"{c:>15}" for c in COLUMNS))
    for row in rows:
        print(" ".join(f"{fmt(row.get(c))!s:>15}" for c in COLUMNS))
    print(json.dumps(summary, indent=1))


def main() -> None:
    """Parse arguments, run or resume every fold, write and print the merged record."""
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
        "--tune-inference",
        action="store_true",
        help="nested: pick threshold x z_sigma (and postprocess, flip) on each fold's validation "
        "patients (needs --val > 0) and score its test patients with that choice",
    )
    parser.add_argument("--record", help="record folder name under cv/ (default: from settings)")
    parser.add_argument("--no-mlflow", action="store_true", help="keep the record out of MLflow")
    args = parser.parse_args()
    started = time.perf_counter()
    folder = RECORDS / record_name(args)
    work = open_record(folder, args)
    # stages run with the snapshot first on sys.path, so editing the workspace while a long
    # benchmark runs does not change what it measures
    sys.path.insert(0, str(work))
    os.environ["MLFLOW_TRACKING_URI"] = os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{ROOT / 'mlflow.db'}"
    )
    params = fold_params(work, args)
    parent = None if args.no_mlflow else mlflow_parent(folder, args)
    downloaded = (work / params["paths"]["raw"] / "volumes.h5").exists()
    for fold in args.only or range(args.folds):
        done = folder / f"fold-{fold}.json"
        if done.exists():
            print(f"fold {fold}: recorded in {done}", file=sys.stderr)
            continue
        params["split"]["fold"] = fold
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if not downloaded:
            run_stage("download", work)
            downloaded = True
        model_dir = work / "folds" / str(fold)
        seconds = 0.0
        if (model_dir / "model.h5").exists():  # trained before a kill: score it only
            seconds += run_stage("split", work)
        else:
            seconds += sum(run_stage(name, work) for name in STAGES)
            shutil.copytree(work / params["paths"]["model"], model_dir, dirs_exist_ok=True)
        record = score_fold(model_dir, work, params, fold, args.tune_inference)
        record["minutes"] = seconds / 60
        partial = done.with_suffix(".part")
        partial.write_text(json.dumps(record, indent=1, default=float))
        partial.replace(done)
        if parent:
            log_fold(parent, record, seconds / 60)
        print(f"fold {fold} done in {seconds / 60:.1f} min", file=sys.stderr)
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("fold-*.json"))]
    rows, summary = summarise(records)
    write_table(rows, folder / "table.csv")
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if parent:
        log_summary(parent, folder, summary)
    print_report(rows, summary)
    print(f"wall {(time.perf_counter() - started) / 60:.1f} min; record: {folder}")


if __name__ == "__main__":
    main()
