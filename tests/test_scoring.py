"""Scoring, confidence and the review rule on tiny hand-made volumes with known answers."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sarcoma_seg.inference import commitment, needs_review
from sarcoma_seg.scoring import score, tumour_appearance, uptake_groups, write_table
from sarcoma_seg.settings import Inference
from sarcoma_seg.volumes import Volume

ROOT = Path(__file__).resolve().parents[1]
RULE = Inference(threshold=0.2, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=0.5)


def volume(pet: np.ndarray | None = None) -> Volume:
    """2 slices of 2 x 3 voxels, 2 mm cubes; the tumour is the first slice's top row."""
    mask = np.zeros((2, 2, 3), np.uint8)
    mask[0, 0] = 1
    ct = np.full((2, 2, 3), -100.0, np.float32)
    ct[0, 0] = [10.0, 30.0, 50.0]
    return Volume("P1", ct, mask, pet, (2.0, 2.0, 2.0), "test")


def test_tumour_appearance_reads_inside_the_true_mask_only() -> None:
    pet = np.full((2, 2, 3), 9.0, np.float32)
    pet[0, 0] = [1.0, 2.0, 4.0]
    found = tumour_appearance(volume(pet))
    assert np.allclose([found["suv_median"], found["hu_median"]], [2.0, 30.0])
    assert np.allclose(found["suv_p90"], 3.6)  # numpy's linear percentile of 1, 2, 4
    assert np.isnan(tumour_appearance(volume())["suv_median"])  # CT only: no uptake


def test_score_rows_carry_volumes_uptake_and_confidence(tmp_path: Path) -> None:
    v = volume(np.ones((2, 2, 3), np.float32))
    pred = v.mask.copy()
    pred[0, 0, 0] = 0  # 2 of 3 tumour voxels found
    rows, summary = score([v], [pred], [0.4], [True])
    row = rows[0]
    assert np.allclose(
        [row["dice_3d"], row["volume_true_cm3"], row["volume_pred_cm3"]],
        [0.8, 0.024, 0.016],
        atol=1e-4,
    )
    assert row["confidence"] == 0.4 and row["needs_review"] is True
    assert summary["needs_review"] == 1 and np.allclose(summary["confidence_mean"], 0.4)
    assert "suv_median_mean" not in summary  # descriptive columns are not averaged
    write_table(rows, tmp_path / "t.csv")
    header, line = (tmp_path / "t.csv").read_text().splitlines()
    assert header.endswith("suv_median,suv_p90,hu_median,confidence,needs_review")
    assert line.endswith(",1.0,1.0,30.0,0.4,True")


def test_uptake_groups_split_at_suv_2() -> None:
    rows = [
        {"suv_median": 1.5, "dice_3d": 0.2},
        {"suv_median": 1.9, "dice_3d": 0.6},
        {"suv_median": 3.0, "dice_3d": 0.9},
        {"suv_median": float("nan"), "dice_3d": 0.0},  # no PET: in neither group
    ]
    groups = uptake_groups(rows)
    assert groups["suv_below_2"] == {"patients": 2, "mean": 0.4, "min": 0.2}
    assert groups["suv_above"] == {"patients": 1, "mean": 0.9, "min": 0.9}


def test_commitment_is_committed_over_suspected_voxels() -> None:
    probs = np.array([[[0.9, 0.3, 0.1, 0.06, 0.01]]])  # >= 0.2: 2 voxels; >= 0.05: 4
    assert np.allclose(commitment(probs, 0.2), 0.5)
    assert commitment(np.full((1, 2, 2), 0.1), 0.2) == 0.0  # nothing committed: look
    assert commitment(np.full((1, 2, 2), 0.9), 0.2) == 1.0
    assert needs_review(0.49, RULE) is True and needs_review(0.5, RULE) is False
    assert needs_review(0.0, Inference(0.2, "none", False, 0.0, None)) is None  # no rule: no flag


def benchmark():
    """benchmarks/cross_validation.py as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("cv", ROOT / "benchmarks/cross_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_review_rule_is_chosen_on_validation_rows_and_checked_on_test() -> None:
    cv = benchmark()
    val = [{"dice_3d": 0.9, "confidence": c} for c in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
    val.append({"dice_3d": 0.3, "confidence": 0.1})  # a failure does not move the cutoff
    rule = cv.review_rule(val)
    assert rule["review_below"] == pytest.approx(0.6)  # numpy's 20% quantile of the six
    assert cv.review_rule(val[:4])["review_below"] is None  # too few good patients
    test = [{"dice_3d": 0.2, "confidence": 0.55}, {"dice_3d": 0.9, "confidence": 0.1}]
    assert cv.review_check(test, 0.6) == {"failed_flagged": "1 of 1", "good_flagged": "1 of 1"}


def test_finished_folds_merge_into_one_table(tmp_path: Path) -> None:
    cv = benchmark()

    def row(patient: str, fold: int, role: str, dice: float, suv: float, conf: float) -> dict:
        base = {"patient": patient, "fold": fold, "role": role, "dice_3d": dice, "tuned": dice}
        return base | {"suv_median": suv, "confidence": conf, "hd95_mm": 1.0}

    goods = [row(f"V{i}", 1, "val", 0.8, 3.0, 0.3 + 0.1 * i) for i in range(5)]
    records = [
        {
            "fold": 1,
            "chosen": {"name": "stored"},
            "rows": [
                row("B", 1, "test", 0.9, 3.0, 0.9),
                row("X", 1, "val", 0.1, 1.0, 0.1),
                *goods,
            ],
        },
        {"fold": 0, "chosen": {"name": "none"}, "rows": [row("A", 0, "test", 0.3, 1.5, 0.2)]},
    ]
    rows, summary = cv.summarise(records)
    assert [r["patient"] for r in rows] == ["A", "B"] and summary["folds"] == [0, 1]
    assert summary["params"]["mean"] == 0.6 and summary["params"]["below_0.5"] == 1
    assert summary["params_by_uptake"]["suv_below_2"]["mean"] == 0.3
    assert summary["review"]["review_below"] == pytest.approx(0.38)  # 20% quantile of 0.3..0.7
    assert [r["needs_review"] for r in rows] == [True, False]
    cv.write_table(rows, tmp_path / "table.csv")
    assert (tmp_path / "table.csv").read_text().splitlines()[1].startswith("A,0,0.300,0.300")
