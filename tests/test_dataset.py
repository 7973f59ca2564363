"""Epoch order: every slice once, shuffled with the seed, tumour slices oversampled on request."""

import numpy as np

from sarcoma_seg.dataset import epoch_order


def masks_with_tumour(total: int, with_tumour: int) -> np.ndarray:
    """total 4x4 masks, the first with_tumour of them holding one tumour pixel."""
    masks = np.zeros((total, 4, 4), np.uint8)
    masks[:with_tumour, 1, 1] = 1
    return masks


def test_plain_order_is_a_seeded_permutation() -> None:
    masks = masks_with_tumour(20, 5)
    first = epoch_order(masks, np.random.default_rng(3))
    assert sorted(first) == list(range(20))
    assert np.array_equal(first, epoch_order(masks, np.random.default_rng(3)))


def test_oversampling_reaches_the_tumour_fraction_and_keeps_every_slice() -> None:
    masks = masks_with_tumour(20, 2)  # 2 tumour slices, 18 empty
    order = epoch_order(masks, np.random.default_rng(0), tumour_fraction=0.5)
    assert set(range(20)) <= set(order.tolist())
    tumour_share = np.isin(order, [0, 1]).mean()
    assert np.isclose(tumour_share, 0.5) and len(order) == 36


def test_no_tumour_slices_means_no_oversampling() -> None:
    assert len(epoch_order(masks_with_tumour(6, 0), np.random.default_rng(0), 0.5)) == 6
