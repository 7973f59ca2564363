"""Metrics on tiny hand-drawn masks with known answers."""

import numpy as np

from sarcoma_seg.metrics import (
    detection_scores,
    dice,
    iou,
    slice_scores,
    surface_distances,
    volume_scores,
)

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
    scores = volume_scores(preds, truths, spacing=(5.0, 5.0, 5.0))
    assert np.allclose(scores["dice_3d"], 12 / 15, atol=1e-4)
    assert np.allclose(scores["iou_3d"], 6 / 9, atol=1e-4)
    assert np.allclose(scores["volume_true_cm3"], 8 * 0.125)
    assert np.allclose(scores["volume_pred_cm3"], 7 * 0.125)
    assert np.allclose(scores["volume_rel_error"], -1 / 8)
    assert np.allclose([scores["sensitivity"], scores["precision"]], [6 / 8, 6 / 7], atol=1e-4)


def test_sensitivity_and_precision_known_values() -> None:
    scores = detection_scores(PRED, TRUTH)  # tp=2, fp=1, fn=2
    assert np.allclose([scores["sensitivity"], scores["precision"]], [2 / 4, 2 / 3], atol=1e-4)


def test_surface_distances_use_the_voxel_spacing() -> None:
    truth = np.zeros((1, 1, 5), bool)
    pred = np.zeros((1, 1, 5), bool)
    truth[0, 0, 0] = pred[0, 0, 3] = True  # 3 voxels apart along columns of 2 mm
    scores = surface_distances(pred, truth, spacing=(5.0, 1.0, 2.0))
    assert np.allclose([scores["hd95_mm"], scores["msd_mm"]], [6.0, 6.0])


def test_surface_distances_of_identical_masks_are_zero() -> None:
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface_distances(cube, cube, (1.0, 1.0, 1.0)) == {"hd95_mm": 0.0, "msd_mm": 0.0}


def test_empty_prediction_and_empty_truth_have_defined_scores() -> None:
    empty = np.zeros((2, 3, 4), bool)
    tumour = empty.copy()
    tumour[0, 0, 0] = True
    both = volume_scores(empty, empty, (2.0, 1.0, 1.0))
    assert both["dice_3d"] == 1.0 and both["hd95_mm"] == 0.0 and both["volume_rel_error"] == 0.0
    assert both["sensitivity"] == 1.0 and both["precision"] == 1.0
    diagonal = np.sqrt(4.0**2 + 3.0**2 + 4.0**2)  # the field in mm: the worst possible distance
    missed = volume_scores(empty, tumour, (2.0, 1.0, 1.0))
    assert np.allclose([missed["dice_3d"], missed["sensitivity"]], 0.0, atol=1e-4)
    assert np.allclose([missed["hd95_mm"], missed["msd_mm"]], diagonal)
    assert missed["volume_rel_error"] == -1.0
    invented = volume_scores(tumour, empty, (2.0, 1.0, 1.0))
    assert np.allclose(invented["precision"], 0.0, atol=1e-4)
    assert invented["volume_rel_error"] == 1.0 and np.isclose(invented["hd95_mm"], diagonal)
