"""`predict --cohort`: every patient of a folder segmented by one loaded model, each into its own
output folder, and one table. A folder is read in any layout a download source reads: NIfTI
patient folders or an nnU-Net imagesTr (masks optional), or a DICOM tree (RTSTRUCT optional;
`--roi` picks the truth ROI as data.roi does)."""

import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sarcoma_seg.errors import SarcomaSegError, anticipated
from sarcoma_seg.io.common import read_json
from sarcoma_seg.metrics import dice
from sarcoma_seg.volumes import check_patient_id

COHORT_TABLE = "cohort.csv"
COLUMNS = ("patient", "voxels", "volume_cm3", "seconds", "dice_3d", "confidence", "needs_review")


@dataclass(frozen=True)
class CohortCase:
    """One patient: how to find its inputs and its truth (both may fail: that patient is
    reported and skipped, the others go on)."""

    patient_id: str
    inputs: Callable[[], tuple[Path, Path | None]]  # (CT file or series folder, PET or None)
    truth: Callable[[tuple[int, ...]], np.ndarray | None]  # mask on the CT's internal grid


def nifti_cases(folder: Path) -> list[CohortCase]:
    """The patients of a NIfTI folder (either layout), [] if it has neither."""
    from sarcoma_seg.io import nifti

    return [
        CohortCase(
            c.patient_id, lambda c=c: (c.ct, c.pet), lambda shape, c=c: nifti.read_truth(c, shape)
        )
        for c in nifti.cohort_cases(folder)
    ]


def dicom_cases(folder: Path, roi: str) -> list[CohortCase]:
    """The patients of a DICOM tree, found by their tags (as the dicom source finds them)."""
    from sarcoma_seg.io import dicom

    patients, _ = dicom.discover(folder)
    if not any(p.ct for p in patients.values()):
        raise SarcomaSegError(f"{folder}: no patients found (no NIfTI layout, no DICOM CT series)")
    return [
        CohortCase(
            pid,
            lambda p=patients[pid]: dicom.cohort_inputs(folder, p),
            lambda shape, p=patients[pid]: dicom.cohort_truth(folder, p, roi),
        )
        for pid in sorted(patients)
    ]


def cohort_cases(folder: Path, roi: str) -> list[CohortCase]:
    """Every patient of a cohort folder: a NIfTI layout, else a DICOM tree."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SarcomaSegError(f"--cohort {folder}: not a folder")
    return nifti_cases(folder) or dicom_cases(folder, roi)


def patient_dice(mask: np.ndarray, truth: np.ndarray | None) -> float | None:
    """3D Dice of a predicted mask against the truth, None without a truth."""
    if truth is None:
        return None
    if truth.shape != mask.shape:
        raise SarcomaSegError(f"truth mask shape {truth.shape} != scan {mask.shape}")
    return round(float(dice(mask, truth)), 6)


def table_row(patient: str, summary: dict[str, Any]) -> dict[str, Any]:
    """A cohort.csv row from a patient's summary.json."""
    return {
        "patient": patient,
        "voxels": summary["tumour_voxels"],
        "volume_cm3": summary["tumour_volume_cm3"],
        "seconds": summary["patient_seconds"],
        "dice_3d": "" if summary.get("dice_3d") is None else summary["dice_3d"],
        "confidence": summary["confidence"],
        "needs_review": summary["needs_review"],
    }


def write_cohort_table(rows: list[dict[str, Any]], path: Path) -> None:
    """cohort.csv, written beside and moved in (a reader never sees half a table)."""
    partial = path.with_suffix(".csv.part")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def segment_case(
    case: CohortCase, segment: Callable[..., dict[str, Any]], out: Path
) -> dict[str, Any]:
    """Read one patient, segment it into out (segment: predict's one-scan path, which returns
    the summary and the mask), score it against its truth; the summary as written."""
    from sarcoma_seg.scans import read_scan

    started = time.perf_counter()
    ct, pet = case.inputs()
    scan = read_scan(ct, None, pet)
    truth = case.truth(scan.ct.shape)  # read before anything is written: a bad truth skips
    extra = {"patient": case.patient_id}

    def finish(summary: dict[str, Any], mask: np.ndarray) -> None:
        """Add the patient's Dice and time to the summary before it is written."""
        summary |= extra | {"dice_3d": patient_dice(mask, truth)}
        summary["tumour_voxels"] = int(mask.sum())
        summary["patient_seconds"] = round(time.perf_counter() - started, 3)

    return segment(scan, out, finish)


def run_cohort(
    folder: Path, out: Path, roi: str, segment: Callable[..., dict[str, Any]], progress: bool
) -> list[str]:
    """Segment every patient not done yet into out/<patient>/, write out/cohort.csv; return the
    patients skipped (each reported in one line on stderr)."""
    from tqdm import tqdm

    cases = cohort_cases(folder, roi)
    for case in cases:  # each names a folder under out: refused before anything is written
        check_patient_id(case.patient_id, f"--cohort {folder}")
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for case in tqdm(cases, unit="patient", desc="cohort", disable=not progress):
        target = out / case.patient_id
        done = target / "summary.json"
        if done.is_file():  # a rerun into the same folder skips the patients already done
            rows.append(table_row(case.patient_id, read_json(done)))
            continue
        try:
            rows.append(table_row(case.patient_id, segment_case(case, segment, target)))
        except Exception as exc:  # one patient's bad input never stops the cohort
            line = anticipated(exc)
            if line is None:
                raise  # a bug, not bad input
            tqdm.write(f"error: patient {case.patient_id}: {line}", file=sys.stderr)
            skipped.append(case.patient_id)
    write_cohort_table(rows, out / COHORT_TABLE)
    return skipped
