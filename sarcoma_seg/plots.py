"""Figures: the training curves and the CT / ground truth / prediction rows."""

from pathlib import Path

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
