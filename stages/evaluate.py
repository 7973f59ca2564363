"""DVC stage `evaluate`: slice-level IoU / F-score and per-patient 3D Dice on the test patients."""

import csv
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from sarcoma_seg import tracking
from sarcoma_seg.dataset import SliceSet, load_slice_set
from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.metrics import slice_scores, volume_scores
from sarcoma_seg.model import load_unet, predict_probabilities
from sarcoma_seg.params import load_params
from sarcoma_seg.plots import prediction_figure


def per_patient(data: SliceSet, preds: np.ndarray) -> list[dict[str, Any]]:
    """3D scores of every test patient from its stacked slices."""
    rows = []
    for pid, idx in data.patient_indices().items():
        voxel_mm3 = float(np.prod(data.spacing[pid]))
        rows.append({"patient": pid, **volume_scores(preds[idx], data.masks[idx], voxel_mm3)})
    return rows


def summarise(rows: list[dict[str, Any]], slices: dict[str, float]) -> dict[str, Any]:
    """Mean / median / std of the 3D Dice and IoU plus the slice-level scores."""
    summary: dict[str, Any] = {"patients": len(rows), **slices}
    for key in ("dice_3d", "iou_3d"):
        values = np.array([r[key] for r in rows])
        summary |= {f"{key}_mean": values.mean(), f"{key}_median": np.median(values)}
        summary[f"{key}_std"] = values.std()
    return {k: v if isinstance(v, int) else round(float(v), 6) for k, v in summary.items()}


def figure_rows(data: SliceSet, count: int) -> np.ndarray:
    """The slice with the largest tumour of each patient, then the next largest, up to count."""
    area = data.masks.reshape(len(data.masks), -1).sum(axis=1)
    ranked = [idx[np.argsort(-area[idx], kind="stable")] for idx in data.patient_indices().values()]
    picks = [r[i] for i in range(max(map(len, ranked))) for r in ranked if i < len(r)]
    return np.array(picks[:count])


def main() -> None:
    """Predict the test slices, score them, write metrics, table and figure, log to MLflow."""
    params = load_params()
    paths, ev = params["paths"], params["evaluate"]
    threshold = ev["threshold"]
    if not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise SarcomaSegError(f"evaluate.threshold={threshold!r} is not allowed; use 0 < t < 1")
    model = load_unet(Path(paths["model"]) / "model.keras")
    test = load_slice_set(Path(paths["preprocessed"]) / "test.npz")
    preds = (predict_probabilities(model, test.images) >= threshold).astype(np.uint8)
    rows = per_patient(test, preds)
    summary = summarise(rows, slice_scores(preds, test.masks))
    figures, metrics = Path(paths["figures"]), Path(paths["metrics"])
    figures.mkdir(parents=True, exist_ok=True)
    metrics.mkdir(parents=True, exist_ok=True)
    (metrics / "evaluate.json").write_text(json.dumps({"test": summary}, indent=2) + "\n")
    with (metrics / "per_patient.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        )
    picks = figure_rows(test, ev["figure_slices"])
    titles = [f"{test.patients[i]} slice {test.slices[i]}" for i in picks]
    prediction_figure(
        test.images[picks], test.masks[picks], preds[picks], titles, figures / "predictions.png"
    )
    tracking.use_experiment(params["train"]["mlflow_experiment"])
    run_id = tracking.read_run_id(Path(paths["model"]) / "mlflow_run.json")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in summary.items()})
        mlflow.log_artifact(str(metrics / "per_patient.csv"), artifact_path="evaluation")
        mlflow.log_artifact(str(figures / "predictions.png"), artifact_path="evaluation")
    print(json.dumps(summary))


if __name__ == "__main__":
    run_cli(main)
