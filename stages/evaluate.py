"""DVC stage `evaluate`: segment the test patients' CT volumes on their native grid and score
them: the original slice-level IoU / F-score, per-patient 3D Dice with true voxel spacing, the
tumour's uptake and the model's confidence, and one figure per patient in the MLflow run."""

import json

import mlflow

from sarcoma_seg import tracking
from sarcoma_seg.errors import run_cli
from sarcoma_seg.inference import segment_reviewed
from sarcoma_seg.io.store import load_volumes
from sarcoma_seg.model_folder import open_model_folder
from sarcoma_seg.plots import patient_figure, prediction_figure
from sarcoma_seg.scoring import figure_slices, score, uptake_groups, write_table
from sarcoma_seg.settings import load_settings


def main() -> None:
    """Predict every test patient, write metrics, table and figure, log them to the run."""
    settings = load_settings()
    paths = settings.paths
    opened = open_model_folder(paths.model, settings.evaluate.engine)
    pre, inference = opened.stored.pre, opened.stored.inference
    test_ids = json.loads(paths.split.read_text())["test"]
    volumes = load_volumes(paths.raw, test_ids)
    run = opened.predictor
    found = [segment_reviewed(None, pre, v.ct, inference, v.pet, run) for v in volumes]
    preds = [f.mask for f in found]
    rows, summary = score(
        volumes, preds, [f.confidence for f in found], [f.needs_review for f in found]
    )
    paths.figures.mkdir(parents=True, exist_ok=True)
    paths.metrics.mkdir(parents=True, exist_ok=True)
    groups = uptake_groups(rows)
    record = {"test": summary, "uptake_groups": groups}
    (paths.metrics / "evaluate.json").write_text(json.dumps(record, indent=2) + "\n")
    write_table(rows, paths.metrics / "per_patient.csv")
    picks = figure_slices(volumes, settings.evaluate.figure_slices)
    prediction_figure(
        [pre.display(volumes[p].ct[s]) for p, s in picks],
        [volumes[p].mask[s] for p, s in picks],
        [preds[p][s] for p, s in picks],
        [f"{volumes[p].patient_id} slice {s}" for p, s in picks],
        paths.figures / "predictions.png",
    )
    patients = paths.figures / "patients"
    patients.mkdir(exist_ok=True)
    for v, row, pred in zip(volumes, rows, preds):
        title = f"{v.patient_id}: Dice {row['dice_3d']:.3f}, confidence {row['confidence']:.2f}"
        pet = v.pet if pre.pet_window is not None else None
        patient_figure(
            pre.display(v.ct), pet, v.mask, pred, v.spacing, title, patients / f"{v.patient_id}.png"
        )
    tracking.use_experiment(settings.train.mlflow_experiment)
    with mlflow.start_run(run_id=tracking.read_run_id(paths.model / "mlflow_run.json")):
        mlflow.log_metrics({f"test_{k}": v for k, v in summary.items()})
        mlflow.set_tag("evaluate.engine", opened.engine)
        mlflow.log_artifact(str(paths.metrics / "per_patient.csv"), artifact_path="evaluation")
        mlflow.log_artifact(str(paths.figures / "predictions.png"), artifact_path="evaluation")
        for v in volumes:  # one figure per test patient: why a tumour was missed
            figure = patients / f"{v.patient_id}.png"
            mlflow.log_artifact(str(figure), artifact_path="evaluation/patients")
    print(json.dumps(summary))


if __name__ == "__main__":
    run_cli(main)
