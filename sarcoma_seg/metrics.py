"""Segmentation metrics on binary masks (NumPy): slice-level IoU / F-score and 3D Dice."""

import numpy as np
from scipy import ndimage

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


def volume_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Every 3D score of one patient's volume, distances and volumes in true millimetres."""
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    true_cm3 = float(truth.astype(bool).sum() * voxel_cm3)
    pred_cm3 = float(pred.astype(bool).sum() * voxel_cm3)
    # relative volume error; with no true tumour, 0 if none is predicted, else 1 (100 % wrong)
    rel = (pred_cm3 - true_cm3) / true_cm3 if true_cm3 else float(pred_cm3 > 0)
    return {
        "dice_3d": float(dice(pred, truth)),
        "iou_3d": float(iou(pred, truth)),
        **surface_distances(pred, truth, spacing),
        **detection_scores(pred, truth),
        "volume_true_cm3": true_cm3,
        "volume_pred_cm3": pred_cm3,
        "volume_rel_error": float(rel),
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of a binary mask that touch its outside (6-connectivity in 3D)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance in mm from every surface voxel of a to the nearest surface voxel of b."""
    to_b = ndimage.distance_transform_edt(~_surface(b), sampling=spacing)
    return to_b[_surface(a)]


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float]:
    """95th-percentile Hausdorff and mean symmetric surface distance in mm.

    Both empty: 0 mm. One empty: the field's diagonal in mm, the worst possible value, so that a
    missed or hallucinated tumour is penalised instead of dropped from the mean."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() and not truth.any():
        return {"hd95_mm": 0.0, "msd_mm": 0.0}
    if not pred.any() or not truth.any():
        diagonal = float(np.linalg.norm(np.array(pred.shape) * np.array(spacing)))
        return {"hd95_mm": diagonal, "msd_mm": diagonal}
    ab = _directed_distances(pred, truth, spacing)
    ba = _directed_distances(truth, pred, spacing)
    hd95 = max(np.percentile(ab, 95), np.percentile(ba, 95))  # as MONAI: max of directed HD95
    msd = np.concatenate([ab, ba]).mean()
    return {"hd95_mm": float(hd95), "msd_mm": float(msd)}


def detection_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Voxel sensitivity (recall) and precision; empty denominators score 1 (nothing to miss)."""
    tp, fp, fn = _counts(pred, truth, None)
    return {
        "sensitivity": float((tp + SMOOTH) / (tp + fn + SMOOTH)),
        "precision": float((tp + SMOOTH) / (tp + fp + SMOOTH)),
    }
