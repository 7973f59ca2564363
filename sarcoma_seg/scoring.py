"""Scoring held-out patients, shared by the evaluate stage and the cross-validation benchmark: the
per-patient table (3D scores, what the tumour looks like on PET and CT, the model's confidence),
its summary, the Dice by uptake group and the patients' figure slices."""

import csv
from pathlib import Path
from typing import Any

import numpy as np

from sarcoma_seg.metrics import dice, iou, volume_scores
from sarcoma_seg.volumes import Volume

# FDG uptake groups by the true tumour's median SUV: below 2 the tumour is hardly hotter than
# muscle and blood pool, so the CT has to carry it (issue 27's failures sit there)
LOW_UPTAKE_SUV = 2.0
# per-patient columns that describe the patient or the prediction, not scores to average
DESCRIPTIVE = (
    "patient",
    "volume_true_cm3",
    "volume_pred_cm3",
    "suv_median",
    "suv_p90",
    "hu_median",
    "needs_review",
)


def tumour_appearance(volume: Volume) -> dict[str, float]:
    """Median and 90th percentile SUV and median HU inside the true tumour (NaN where there is
    no PET or no tumour): why a patient failed, without opening the scan."""
    inside = volume.mask.astype(bool)
    if not inside.any():
        return {"suv_median": np.nan, "suv_p90": np.nan, "hu_median": np.nan}
    suv = volume.pet[inside] if volume.pet is not None else None
    return {
        "suv_median": float(np.median(suv)) if suv is not None else np.nan,
        "suv_p90": float(np.percentile(suv, 90)) if suv is not None else np.nan,
        "hu_median": float(np.median(volume.ct[inside])),
    }


def patient_row(
    volume: Volume, pred: np.ndarray, confidence: float | None, needs_review: bool | None
) -> dict[str, Any]:
    """One patient's row: 3D scores, the tumour's appearance, the model's confidence."""
    row = {"patient": volume.patient_id, **volume_scores(pred, volume.mask, volume.spacing)}
    row |= tumour_appearance(volume)
    return row | {"confidence": confidence, "needs_review": needs_review}


def score(
    volumes: list[Volume],
    preds: list[np.ndarray],
    confidences: list[float | None] | None = None,
    reviews: list[bool | None] | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Per-patient rows, and the summary: mean / median / std of each score plus slice scores."""
    confidences = confidences or [None] * len(volumes)
    reviews = reviews or [None] * len(volumes)
    rows = [patient_row(*args) for args in zip(volumes, preds, confidences, reviews)]
    slice_iou = np.concatenate([iou(p, v.mask, (1, 2)) for v, p in zip(volumes, preds)])
    slice_f = np.concatenate([dice(p, v.mask, (1, 2)) for v, p in zip(volumes, preds)])
    summary: dict[str, Any] = {"patients": len(rows), "slices": len(slice_iou)}
    summary |= {"slice_iou": slice_iou.mean(), "slice_fscore": slice_f.mean()}
    for key in [k for k in rows[0] if k not in DESCRIPTIVE and rows[0][k] is not None]:
        values = np.array([r[key] for r in rows], dtype=float)
        summary |= {f"{key}_mean": values.mean(), f"{key}_median": np.median(values)}
        summary[f"{key}_std"] = values.std()
    if all(r["needs_review"] is not None for r in rows):
        summary["needs_review"] = sum(bool(r["needs_review"]) for r in rows)
    return rows, {k: v if isinstance(v, int) else round(float(v), 6) for k, v in summary.items()}


def uptake_groups(rows: list[dict[str, Any]], key: str = "dice_3d") -> dict[str, dict[str, Any]]:
    """Patients, mean and min of `key` in each uptake group (tumour median SUV below
    LOW_UPTAKE_SUV or not); patients without PET are left out."""
    groups: dict[str, list[float]] = {f"suv_below_{LOW_UPTAKE_SUV:g}": [], "suv_above": []}
    for row in rows:
        suv = float(row["suv_median"])
        if np.isfinite(suv):
            name = f"suv_below_{LOW_UPTAKE_SUV:g}" if suv < LOW_UPTAKE_SUV else "suv_above"
            groups[name].append(float(row[key]))
    return {
        name: {
            "patients": len(values),
            "mean": round(float(np.mean(values)), 6) if values else None,
            "min": round(float(np.min(values)), 6) if values else None,
        }
        for name, values in groups.items()
    }


def figure_slices(volumes: list[Volume], count: int) -> list[tuple[int, int]]:
    """(patient, slice) pairs: each patient's largest tumour slice, then the next, up to count."""
    ranked = [np.argsort(-v.mask.sum(axis=(1, 2)).astype(np.int64), kind="stable") for v in volumes]
    depth = max(map(len, ranked))
    picks = [(p, int(r[i])) for i in range(depth) for p, r in enumerate(ranked) if i < len(r)]
    return picks[:count]


def cell(value: Any) -> Any:
    """A table cell: floats rounded to 6 decimals, None empty, NaN as 'nan'."""
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """The per-patient table as CSV."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in r.items()} for r in rows)
