"""DVC stage `evaluate`: segment the test patients' CT volumes on their native grid and score
them: the original slice-level IoU / F-score and per-patient 3D Dice with true voxel spacing."""

import csv
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from sarcoma_seg import tracking
from sarcoma_seg.errors import run_cli
from sarcoma_seg.inference import (
    model_config_path,
    read_model_config,
    require_inference,
    segment_volume,
)
from sarcoma_seg.metrics import dice, iou, volume_scores
from sarcoma_seg.model import load_unet
from sarcoma_seg.plots import prediction_figure
from sarcoma_seg.settings import load_settings
from sarcoma_seg.volumes import Volume, load_volumes


def score(volumes: list[Volume], preds: list[np.ndarray]) -> tuple[list[dict], dict[str, Any]]:
    """Per-patient 3D rows, and the summary: mean / median / std of each plus slice scores."""
    rows = [
        {"patient": v.patient_id, **volume_scores(p, v.mask, v.spacing)}
        for v, p in zip(volumes, preds)
    ]
    slice_iou = np.concatenate([iou(p, v.mask, (1, 2)) for v, p in zip(volumes, preds)])
    slice_f = np.concatenate([dice(p, v.mask, (1, 2)) for v, p in zip(volumes, preds)])
    summary: dict[str, Any] = {"patients": len(rows), "slices": len(slice_iou)}
    summary |= {"slice_iou": slice_iou.mean(), "slice_fscore": slice_f.mean()}
    for key in [k for k in rows[0] if k not in ("patient", "volume_true_cm3", "volume_pred_cm3")]:
        values = np.array([r[key] for r in rows])
        summary |= {f"{key}_mean": values.mean(), f"{key}_median": np.median(values)}
        summary[f"{key}_std"] = values.std()
    return rows, {k: v if isinstance(v, int) else round(float(v), 6) for k, v in summary.items()}


def figure_slices(volumes: list[Volume], count: int) -> list[tuple[int, int]]:
    """(patient, slice) pairs: each patient's largest tumour slice, then the next, up to count."""
    ranked = [np.argsort(-v.mask.sum(axis=(1, 2)).astype(np.int64), kind="stable") for v in volumes]
    depth = max(map(len, ranked))
    picks = [(p, int(r[i])) for i in range(depth) for p, r in enumerate(ranked) if i < len(r)]
    return picks[:count]


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """The per-patient table as CSV."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        )


def main() -> None:
    """Predict every test patient, write metrics, table and figure, log them to the run."""
    settings = load_settings()
    paths = settings.paths
    where = model_config_path(paths.model)
    config = read_model_config(where)
    pre, inference = config.preprocessing, require_inference(where, config)
    model = load_unet(paths.model)
    test_ids = json.loads(paths.split.read_text())["test"]
    volumes = load_volumes(paths.raw, test_ids)
    preds = [segment_volume(model, pre, v.ct, inference, v.pet) for v in volumes]
    rows, summary = score(volumes, preds)
    paths.figures.mkdir(parents=True, exist_ok=True)
    paths.metrics.mkdir(parents=True, exist_ok=True)
    (paths.metrics / "evaluate.json").write_text(json.dumps({"test": summary}, indent=2) + "\n")
    write_table(rows, paths.metrics / "per_patient.csv")
    picks = figure_slices(volumes, settings.evaluate.figure_slices)
    prediction_figure(
        [pre.display(volumes[p].ct[s]) for p, s in picks],
        [volumes[p].mask[s] for p, s in picks],
        [preds[p][s] for p, s in picks],
        [f"{volumes[p].patient_id} slice {s}" for p, s in picks],
        paths.figures / "predictions.png",
    )
    tracking.use_experiment(settings.train.mlflow_experiment)
    with mlflow.start_run(run_id=tracking.read_run_id(paths.model / "mlflow_run.json")):
        mlflow.log_metrics({f"test_{k}": v for k, v in summary.items()})
        mlflow.log_artifact(str(paths.metrics / "per_patient.csv"), artifact_path="evaluation")
        mlflow.log_artifact(str(paths.figures / "predictions.png"), artifact_path="evaluation")
    print(json.dumps(summary))


if __name__ == "__main__":
    run_cli(main)
