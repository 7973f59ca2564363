"""3D-context lever of issue 27, nested: per fold of a cross-validation record, a coarse tf-keras
3D U-Net (sarcoma_seg/coarse3d.py) trained on that fold's training patients only; its
probabilities, on the 2D model's grid, averaged with the fold's 2D model's at a weight w.

    python benchmarks/coarse_context.py --record NAME [--mm 8] [--epochs 150] [--only K]

NAME is a record of benchmarks/cross_validation.py run with --val N --tune-inference (its
folds' models, validation and test patients are reused). The weight w and the threshold are
chosen on the fold's validation patients, then applied to its test patients ("nested"); the
2D model alone is chosen the same way over the thresholds (w = 0), so the two figures differ
by the 3D stage only. Writes cv/NAME/coarse3d-<mm>mm/fold-K.json and summary.json; a rerun
skips finished folds."""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cross_validation import RECORDS, dice_summary, fold_params

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # share of the 3D stage in the averaged probability
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def variant_name(weight: float, threshold: float) -> str:
    """The key of one (weight, threshold) setting in a fold's record."""
    return f"w{weight:g}_t{threshold:g}"


def chosen(rows: list[dict], names: list[str]) -> str:
    """The setting among `names` with the best mean validation Dice (ties: the earlier)."""
    val = [r for r in rows if r["role"] == "val"]
    means = {n: statistics.mean(r["dice"][n] for r in val) for n in names}
    return max(names, key=lambda n: (means[n], -names.index(n)))


def run_fold(folder: Path, fold: int, cfg: Any, volumes: dict) -> dict:
    """One fold: train the coarse stage, score every (weight, threshold) on val and test."""
    from sarcoma_seg.coarse3d import (
        coarse_inputs,
        coarse_target,
        fit_coarse,
        on_model_grid,
        predict_coarse,
    )
    from sarcoma_seg.inference import smooth_across_slices, smoothed_to_mask, volume_probabilities
    from sarcoma_seg.metrics import dice as dice_3d
    from sarcoma_seg.model_folder import open_model_folder

    base = json.loads((folder / f"fold-{fold}.json").read_text())
    known = {r["patient"]: r for r in base["rows"]}
    train = sorted(set(volumes) - set(known))
    opened = open_model_folder(folder / "work" / "folds" / str(fold))
    pre, inference = opened.stored.pre, opened.stored.inference
    started = time.perf_counter()
    model = fit_coarse(
        [coarse_inputs(volumes[p], pre, cfg.spacing_mm) for p in train],
        [coarse_target(volumes[p], cfg.spacing_mm) for p in train],
        cfg,
    )
    train_minutes = (time.perf_counter() - started) / 60
    rows = []
    for patient, base_row in sorted(known.items()):
        v = volumes[patient]
        flat = volume_probabilities(
            None, pre.volume(v.ct, v.pet), False, predictor=opened.predictor
        )
        deep = predict_coarse(model, coarse_inputs(v, pre, cfg.spacing_mm))
        deep = on_model_grid(deep, len(v.ct), pre.image_size)
        # the slice smoothing is linear: smoothing each once equals smoothing every average
        flat, deep = (smooth_across_slices(p, inference.z_sigma) for p in (flat, deep))
        dice = {}
        for w in WEIGHTS:
            probs = (1 - w) * flat + w * deep
            for t in THRESHOLDS:
                setting = replace(inference, threshold=t)
                mask = smoothed_to_mask(probs, pre, v.ct.shape[1:], setting)
                dice[variant_name(w, t)] = float(dice_3d(mask, v.mask))
        keep = ("patient", "role", "suv_median", "suv_p90", "hu_median", "volume_true_cm3")
        rows.append({k: base_row[k] for k in keep} | {"dice": dice})
    flat_names = [variant_name(0.0, t) for t in THRESHOLDS]
    all_names = [variant_name(w, t) for w in WEIGHTS for t in THRESHOLDS]
    return {
        "fold": fold,
        "train_patients": len(train),
        "coarse_train_minutes": round(train_minutes, 2),
        "stored_threshold": inference.threshold,
        "chosen_2d": chosen(rows, flat_names),
        "chosen_fused": chosen(rows, all_names),
        "rows": rows,
    }


def summary_of(records: list[dict]) -> dict[str, Any]:
    """Test Dice of the 2D model alone, the 3D stage alone, a fixed half-half average (each at
    the stored threshold) and the nested choices, overall and by uptake group."""
    from sarcoma_seg.scoring import uptake_groups

    columns: dict[str, list[dict]] = {}
    by_patient: dict[str, dict[str, float]] = {}
    for rec in records:
        t = rec["stored_threshold"]
        fixed = {
            "2d_params": variant_name(0.0, t),
            "3d_alone_params": variant_name(1.0, t),
            "half_half_params": variant_name(0.5, t),
            "2d_nested": rec["chosen_2d"],
            "fused_nested": rec["chosen_fused"],
        }
        for column, name in fixed.items():
            for row in rec["rows"]:
                if row["role"] == "test":
                    columns.setdefault(column, []).append(row | {"value": row["dice"][name]})
                    by_patient.setdefault(column, {})[row["patient"]] = row["dice"][name]
    out: dict[str, Any] = {"folds": [rec["fold"] for rec in records]}
    keep = ("patient", "suv_median", "hu_median", "volume_true_cm3")
    out["table"] = [
        {k: r[k] for k in keep}
        | {"fold": rec["fold"]}
        | {column: round(found[r["patient"]], 4) for column, found in by_patient.items()}
        for rec in records
        for r in rec["rows"]
        if r["role"] == "test"
    ]
    for column, rows in columns.items():
        out[column] = dice_summary([r["value"] for r in rows])
        out[column]["by_uptake"] = uptake_groups(rows, "value")
    out["chosen"] = {rec["fold"]: [rec["chosen_2d"], rec["chosen_fused"]] for rec in records}
    out["coarse_train_minutes"] = [rec["coarse_train_minutes"] for rec in records]
    return out


def main() -> None:
    """Run or resume the folds of one record and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", required=True, help="a cross_validation.py record under cv/")
    parser.add_argument("--mm", type=float, default=8.0, help="coarse voxel size in mm")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--only", type=int, action="append", help="just these folds")
    args = parser.parse_args()
    folder = RECORDS / args.record
    if not (folder / "settings.json").exists():
        sys.exit(f"error: {folder} is not a cross-validation record")
    config = json.loads((folder / "settings.json").read_text())["configuration"]
    if not config.get("tune_inference") or not config.get("val"):
        sys.exit(
            f"error: record {args.record} has no validation patients (--val, --tune-inference)"
        )
    work = folder / "work"
    sys.path.insert(0, str(work))  # the record's code snapshot, as its folds ran
    from sarcoma_seg.coarse3d import CoarseTraining
    from sarcoma_seg.io.store import load_volumes, raw_patient_ids

    params = fold_params(work, argparse.Namespace(**config))
    cfg = CoarseTraining(spacing_mm=args.mm, epochs=args.epochs, seed=params["base"]["seed"])
    out = folder / f"coarse3d-{args.mm:g}mm"
    out.mkdir(exist_ok=True)
    raw = work / params["paths"]["raw"]
    volumes = {v.patient_id: v for v in load_volumes(raw, raw_patient_ids(raw))}
    folds = args.only or sorted(int(p.stem.split("-")[1]) for p in folder.glob("fold-*.json"))
    for fold in folds:
        done = out / f"fold-{fold}.json"
        if done.exists():
            continue
        record = run_fold(folder, fold, cfg, volumes)
        done.write_text(json.dumps(record, indent=1, default=float))
        print(
            f"fold {fold}: coarse stage trained in {record['coarse_train_minutes']} min",
            file=sys.stderr,
        )
    records = [json.loads(p.read_text()) for p in sorted(out.glob("fold-*.json"))]
    summary = summary_of(records)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
