"""Metrics on tiny hand-drawn masks with known answers."""

import numpy as np

from sarcoma_seg.metrics import dice, iou, slice_scores, volume_scores

TRUTH = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ]
)
PRED = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 1],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)  # tp=2, fp=1, fn=2


def test_dice_and_iou_known_values() -> None:
    assert np.allclose(dice(PRED, TRUTH), 4 / 7, atol=1e-4)
    assert np.allclose(iou(PRED, TRUTH), 2 / 5, atol=1e-4)


def test_perfect_and_disjoint() -> None:
    assert np.allclose(dice(TRUTH, TRUTH), 1.0)
    assert np.allclose(iou(TRUTH, 1 - TRUTH), 0.0, atol=1e-5)


def test_empty_prediction_of_empty_truth_scores_one_and_missed_tumour_zero() -> None:
    empty = np.zeros_like(TRUTH)
    assert np.allclose(dice(empty, empty), 1.0)
    assert np.allclose(dice(empty, TRUTH), 0.0, atol=1e-5)
    assert np.allclose(iou(TRUTH, empty), 0.0, atol=1e-5)


def test_slice_scores_average_over_slices() -> None:
    preds = np.stack([PRED, np.zeros_like(PRED)])
    truths = np.stack([TRUTH, np.zeros_like(TRUTH)])
    scores = slice_scores(preds, truths)
    assert np.allclose(scores["slice_iou"], (2 / 5 + 1) / 2, atol=1e-4)
    assert np.allclose(scores["slice_fscore"], (4 / 7 + 1) / 2, atol=1e-4)


def test_volume_scores_pool_all_slices_and_use_voxel_size() -> None:
    preds = np.stack([PRED, TRUTH])  # tp = 2 + 4, fp = 1, fn = 2
    truths = np.stack([TRUTH, TRUTH])
    scores = volume_scores(preds, truths, voxel_mm3=125.0)
    assert np.allclose(scores["dice_3d"], 12 / 15, atol=1e-4)
    assert np.allclose(scores["iou_3d"], 6 / 9, atol=1e-4)
    assert np.allclose(scores["volume_true_cm3"], 8 * 0.125)
    assert np.allclose(scores["volume_pred_cm3"], 7 * 0.125)
