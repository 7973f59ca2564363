"""Figures: the training curves and the CT / ground truth / prediction rows."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def history_figure(history: dict[str, list[float]], key: str, path: Path) -> None:
    """Train against validation curve of one metric (the original study's loss and IoU plots)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history[key]) + 1)
    ax.plot(epochs, history[key], label=f"train {key}")
    if f"val_{key}" in history:  # split.val: 0 has no validation curve
        ax.plot(epochs, history[f"val_{key}"], label=f"validation {key}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def prediction_figure(
    images: list[np.ndarray],
    truths: list[np.ndarray],
    preds: list[np.ndarray],
    titles: list[str],
    path: Path,
) -> None:
    """Rows of CT (2D, scaled to [0, 1]), ground truth overlay and predicted overlay."""
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for r in range(rows):
        ct = images[r]
        panels = [(None, "CT"), (truths[r], "ground truth"), (preds[r], "prediction")]
        for c, (mask, label) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(ct, cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                ax.imshow(np.ma.masked_equal(mask, 0), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(f"{titles[r]}: {label}" if c == 0 else label, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def outline(ax: Any, mask: np.ndarray, colour: str, aspect: float) -> None:
    """Draw a binary mask's outline on an axis (nothing where the mask is empty)."""
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
    ax.set_aspect(aspect)
    ax.axis("off")


def patient_figure(
    ct: np.ndarray,
    pet: np.ndarray | None,
    truth: np.ndarray,
    pred: np.ndarray,
    spacing: tuple[float, float, float],
    title: str,
    path: Path,
) -> None:
    """One test patient: axial at the truth's largest slice and coronal at its largest row, CT
    (display window, [0, 1]) and PET (SUV 0-6) with truth (green) and prediction (red) outlines:
    why a tumour was missed, without opening the scan."""
    axial = int(np.argmax(truth.sum(axis=(1, 2)))) if truth.any() else len(ct) // 2
    row = int(np.argmax(truth.sum(axis=(0, 2)))) if truth.any() else ct.shape[1] // 2
    views = [  # (name, slicer, aspect = row spacing / column spacing of the shown plane)
        (f"axial {axial}", (axial, slice(None), slice(None)), spacing[1] / spacing[2]),
        # slices run feet to head in the stored order, so the coronal view is flipped: head up
        (f"coronal {row}", (slice(None, None, -1), row, slice(None)), spacing[0] / spacing[2]),
    ]
    images = [("CT", ct, "gray", (0, 1))] + (
        [("PET", pet, "hot", (0, 6))] if pet is not None else []
    )
    fig, axes = plt.subplots(len(views), len(images), figsize=(4 * len(images), 8), squeeze=False)
    for r, (view, where, aspect) in enumerate(views):
        for c, (name, volume, cmap, (low, high)) in enumerate(images):
            ax = axes[r, c]
            ax.imshow(volume[where], cmap=cmap, vmin=low, vmax=high)
            outline(ax, truth[where], "lime", aspect)
            outline(ax, pred[where], "red", aspect)
            ax.set_title(f"{name} {view}", fontsize=9)
    fig.suptitle(f"{title}  (green: truth, red: prediction)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
