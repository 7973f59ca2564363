"""predict's overlay.png: CT slices with the predicted tumour filled and outlined, drawn with
OpenCV, which predict has loaded already (matplotlib's import and layout took ~1 s of the
command; evaluate's figures stay in plots.py)."""

from pathlib import Path

import cv2
import numpy as np

from sarcoma_seg.errors import SarcomaSegError

TILE = 240  # px per slice: the 3 inch x 80 dpi panels of the matplotlib montage it replaced
CAPTION = 20  # px of white strip above each slice for its caption
COLUMNS = 4
FILL_BGR = np.array([0, 255, 255], np.float32)  # yellow, the top of matplotlib's autumn map
OUTLINE_BGR = (0, 0, 255)  # red
FILL_ALPHA = 0.35


def fitted(image: np.ndarray, interpolation: int) -> np.ndarray:
    """A 2D slice resized so that its longer side is TILE px, keeping its aspect ratio."""
    rows, cols = image.shape
    scale = TILE / max(rows, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    return cv2.resize(image, size, interpolation=interpolation)


def overlay_tile(image: np.ndarray, mask: np.ndarray, caption: str) -> np.ndarray:
    """One slice (scaled to [0, 1]) as a BGR tile: the mask filled and outlined, caption above."""
    gray = fitted(np.clip(image, 0.0, 1.0).astype(np.float32), cv2.INTER_AREA)
    bgr = np.repeat((gray * 255.0)[..., None], 3, axis=2)
    inside = fitted(mask.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)
    bgr[inside] = (1 - FILL_ALPHA) * bgr[inside] + FILL_ALPHA * FILL_BGR
    picture = bgr.round().astype(np.uint8)
    outlines, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, outlines, -1, OUTLINE_BGR, 1)
    tile = np.full((CAPTION + TILE, TILE, 3), 255, np.uint8)
    top, left = CAPTION + (TILE - picture.shape[0]) // 2, (TILE - picture.shape[1]) // 2
    tile[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    cv2.putText(tile, caption, (4, CAPTION - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return tile


def overlay_montage(
    images: list[np.ndarray], masks: list[np.ndarray], captions: list[str], path: Path
) -> None:
    """A grid of CT slices (scaled to [0, 1]), up to COLUMNS wide, with the predicted tumour
    filled and outlined, written as a PNG."""
    tiles = [overlay_tile(i, m, c) for i, m, c in zip(images, masks, captions, strict=True)]
    if not tiles:
        raise SarcomaSegError(f"{path}: no slices to draw")
    cols = min(COLUMNS, len(tiles))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % cols)
    rows = [np.hstack(tiles[r : r + cols]) for r in range(0, len(tiles), cols)]
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise SarcomaSegError(f"{path}: could not write the overlay PNG")
