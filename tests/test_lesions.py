"""3D lesions: connected components and the largest one, at 26- and at 6-connectivity."""

import numpy as np
from scipy import ndimage

from sarcoma_seg.lesions import components, largest_component


def test_largest_component_keeps_the_biggest_3d_lesion() -> None:
    mask = np.zeros((4, 10, 10), np.uint8)
    mask[0:3, 1:4, 1:4] = 1  # 27 voxels
    mask[1, 7:9, 7:9] = 1  # 4 voxels, separate
    kept = largest_component(mask)
    assert kept.sum() == 27 and kept[1, 7, 7] == 0 and kept.dtype == np.uint8
    assert np.array_equal(largest_component(np.zeros_like(mask)), np.zeros_like(mask))


def test_largest_component_in_the_bounding_box_matches_labelling_the_whole_volume() -> None:
    rng = np.random.default_rng(4)
    mask = np.zeros((12, 40, 40), np.uint8)
    mask[3:10, 8:30, 12:35] = rng.random((7, 22, 23)) > 0.6  # many lesions, off-centre
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    biggest = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
    assert count > 2
    assert np.array_equal(largest_component(mask), biggest.astype(np.uint8))


def test_voxels_touching_at_a_corner_are_one_lesion_but_two_faces_apart() -> None:
    mask = np.zeros((3, 4, 4), bool)
    mask[0, 0:2, 0:2] = True  # 4 voxels
    mask[1, 2, 2] = True  # touches the first block at a corner only
    assert components(mask)[1] == 1
    assert components(mask, connectivity=1)[1] == 2
    assert largest_component(mask) is mask
    assert largest_component(mask, connectivity=1).sum() == 4


def test_face_connectivity_matches_scipys_default_labelling() -> None:
    # the phantom generator's blobs: as ndimage.label without a structure (6-connectivity) does
    rng = np.random.default_rng(7)
    mask = rng.random((9, 30, 30)) > 0.55
    labels, count = ndimage.label(mask)
    biggest = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
    assert count > 2
    assert np.array_equal(largest_component(mask, connectivity=1), biggest)
