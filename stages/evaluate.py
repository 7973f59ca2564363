"""DVC stage `evaluate`: segment the test patients' CT volumes on their native grid and score
them: the original slice-level IoU / F-score, per-patient 3D Dice with true voxel spacing, the
tumour's uptake and the model's confidence, and one figure per patient in the MLflow run."""

import json
from pathlib import Path

import mlflow

from sarcoma_seg import model_card, runlog, tracking
from sarcoma_seg.errors import run_cli
from sarcoma_seg.inference import segment_reviewed
from sarcoma_seg.io.store import load_volumes
from sarcoma_seg.model_card import CARD_NAME, card_markdown, evaluated_card
from sarcoma_seg.model_folder import open_model_folder
from sarcoma_seg.plots import patient_figure, prediction_figure
from sarcoma_seg.scoring import figure_slices, score, uptake_groups, write_table
from sarcoma_seg.settings import load_settings


def write_figures(settings, pre, volumes, preds, rows) -> Path:
    """The CT / truth / prediction rows and one figure per test patient (CT and PET, axial and
    coronal, truth and prediction outlines); returns the patients' folder."""
    paths = settings.paths
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
        figure = patients / f"{v.patient_id}.png"
        patient_figure(pre.display(v.ct), pet, v.mask, pred, v.spacing, title, figure)
    return patients


def write_card(settings, summary: dict, groups: dict, engine: str) -> dict | None:
    """The model card with the held-out figures, metrics/model_card.json (None for a model
    trained before cards)."""
    trained = settings.paths.model / CARD_NAME
    if not trained.is_file():
        return None
    card = evaluated_card(json.loads(trained.read_text()), summary, groups, engine=engine)
    model_card.write_card(settings.paths.metrics / CARD_NAME, card)
    return card


def log_evaluation(settings, summary: dict, engine: str, patients: Path, card: dict | None) -> None:
    """Test metrics, table, figures and card to the training's MLflow run; the card also as the
    description of the model version that run registered."""
    paths = settings.paths
    tracking.use_experiment(settings.train.mlflow_experiment)
    run_id = tracking.read_run_id(paths.model / "mlflow_run.json")
    with runlog.reopened(run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in summary.items()})
        mlflow.set_tag("evaluate.engine", engine)
        mlflow.log_artifact(str(paths.metrics / "per_patient.csv"), artifact_path="evaluation")
        mlflow.log_artifact(str(paths.figures / "predictions.png"), artifact_path="evaluation")
        for figure in sorted(patients.glob("*.png")):  # why a tumour was missed, per patient
            mlflow.log_artifact(str(figure), artifact_path="evaluation/patients")
        if card is not None:
            mlflow.log_dict(card, CARD_NAME)
    if card is not None:
        client = mlflow.MlflowClient()
        name = settings.train.registered_model
        for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            client.update_model_version(name, version.version, card_markdown(card))


def main() -> None:
    """Predict every test patient, write metrics, table, figures and card, log them to the run."""
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
    patients = write_figures(settings, pre, volumes, preds, rows)
    card = write_card(settings, summary, groups, opened.engine)
    log_evaluation(settings, summary, opened.engine, patients, card)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_cli(main)
