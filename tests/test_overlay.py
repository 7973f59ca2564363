"""predict's overlay montage (sarcoma_seg/overlay.py) on tiny hand-drawn slices."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.overlay import CAPTION, FILL_ALPHA, TILE, overlay_montage, overlay_tile


def square_mask(size: int = 12) -> np.ndarray:
    """A size x size slice with a filled 6 x 6 square in the middle and a 2 x 2 hole in it."""
    mask = np.zeros((size, size), np.uint8)
    mask[3:9, 3:9] = 1
    mask[5:7, 5:7] = 0
    return mask


def test_tile_fills_the_mask_yellow_outlines_it_red_and_leaves_the_rest_gray() -> None:
    image = np.full((12, 12), 0.5)
    tile = overlay_tile(image, square_mask(), "slice 3").astype(int)
    assert tile.shape == (CAPTION + TILE, TILE, 3)
    scale = TILE // 12  # 20 px per slice pixel
    gray = round(0.5 * 255)
    inside = tile[CAPTION + 4 * scale, 4 * scale]  # slice pixel (4, 4): in the square
    fill = (1 - FILL_ALPHA) * gray + FILL_ALPHA * np.array([0, 255, 255])
    assert np.allclose(inside, fill.round(), atol=1)
    hole = tile[CAPTION + 6 * scale, 6 * scale]  # slice pixel (6, 6): the hole
    outside = tile[CAPTION + 1 * scale, 1 * scale]
    assert np.array_equal(hole, [gray] * 3) and np.array_equal(outside, [gray] * 3)
    edge = tile[CAPTION + 3 * scale, 5 * scale]  # the square's top row is its outline
    assert np.array_equal(edge, [0, 0, 255])
    assert (tile[:CAPTION] < 255).any()  # the caption is drawn on the white strip


def test_tile_keeps_the_aspect_ratio_of_a_wide_slice() -> None:
    tile = overlay_tile(np.zeros((6, 12)), np.zeros((6, 12), np.uint8), "wide")  # black
    picture_rows = np.flatnonzero((tile[CAPTION:] != 255).any(axis=(1, 2)))
    assert len(picture_rows) == TILE // 2  # 240 px wide, 120 px high, centred
    assert picture_rows[0] == TILE // 4


def test_montage_is_a_grid_of_four_columns(tmp_path: Path) -> None:
    images, masks = [np.zeros((12, 12))] * 5, [square_mask()] * 5
    overlay_montage(images, masks, [f"slice {i}" for i in range(5)], tmp_path / "overlay.png")
    picture = cv2.imread(str(tmp_path / "overlay.png"))
    assert picture.shape == (2 * (CAPTION + TILE), 4 * TILE, 3)
    assert (picture[CAPTION + TILE :, TILE:] == 255).all()  # second row: one tile, then blank


def test_montage_refuses_an_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(SarcomaSegError, match="could not write"):
        overlay_montage([np.zeros((4, 4))], [np.zeros((4, 4))], ["s"], tmp_path / "no" / "o.png")
