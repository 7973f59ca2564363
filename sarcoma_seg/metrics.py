"""Segmentation metrics on binary masks (NumPy): slice-level IoU / F-score and 3D Dice."""

import numpy as np

SMOOTH = 1e-5  # as segmentation-models: an empty prediction of an empty truth scores 1


def _counts(pred: np.ndarray, truth: np.ndarray, axes: tuple[int, ...] | None) -> tuple:
    """True positives, false positives and false negatives over the given axes."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = np.sum(pred & truth, axis=axes)
    fp = np.sum(pred & ~truth, axis=axes)
    fn = np.sum(~pred & truth, axis=axes)
    return tp, fp, fn


def iou(pred: np.ndarray, truth: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Intersection over union (Jaccard); empty vs empty is 1."""
    tp, fp, fn = _counts(pred, truth, axes)
    return (tp + SMOOTH) / (tp + fp + fn + SMOOTH)


def dice(pred: np.ndarray, truth: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Dice coefficient (F1 score); empty vs empty is 1."""
    tp, fp, fn = _counts(pred, truth, axes)
    return (2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH)


def slice_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The original study's slice-level IoU and F-score, averaged over (N, H, W) slices."""
    axes = (1, 2)
    return {
        "slice_iou": float(np.mean(iou(pred, truth, axes))),
        "slice_fscore": float(np.mean(dice(pred, truth, axes))),
    }


def volume_scores(pred: np.ndarray, truth: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """3D Dice and IoU of one patient's stacked slices, plus true and predicted volume in cm3."""
    return {
        "dice_3d": float(dice(pred, truth)),
        "iou_3d": float(iou(pred, truth)),
        "volume_true_cm3": float(truth.astype(bool).sum() * voxel_mm3 / 1000.0),
        "volume_pred_cm3": float(pred.astype(bool).sum() * voxel_mm3 / 1000.0),
    }
