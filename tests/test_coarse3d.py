"""The coarse 3D stage: grid arithmetic with known answers, shapes through the network, and a
seeded training that repeats itself."""

import numpy as np
import pytest

from sarcoma_seg.coarse3d import (
    CoarseTraining,
    build_unet3d,
    coarse_inputs,
    coarse_shape,
    coarse_target,
    fit_coarse,
    on_model_grid,
    padded_side,
    predict_coarse,
)
from sarcoma_seg.transforms import Preprocessing
from sarcoma_seg.volumes import Volume


def _volume(seed: int, shape=(12, 32, 32), spacing=(4.0, 2.0, 2.0)) -> Volume:
    """A bright cube (tumour) in noisy soft tissue, with a PET hot spot on it."""
    rng = np.random.default_rng(seed)
    ct = rng.normal(40, 20, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    z, y, x = (rng.integers(2, n // 2) for n in shape)
    mask[z : z + shape[0] // 3, y : y + 10, x : x + 10] = 1
    ct[mask == 1] += 80
    pet = (1.0 + 4.0 * mask).astype(np.float32)
    return Volume(f"P{seed}", ct, mask, pet, spacing, "test")


PRE = Preprocessing((-160.0, 240.0), 32, 3, pet_window=(0.0, 6.0))


def test_coarse_shape_known_answers():
    assert coarse_shape((70, 200, 200), (3.27, 0.98, 0.98), 8.0) == (29, 24, 24)
    assert coarse_shape((3, 4, 5), (1.0, 1.0, 1.0), 100.0) == (1, 1, 1)  # never empty
    assert [padded_side(n) for n in (1, 8, 9, 29)] == [8, 8, 16, 32]


def test_target_is_the_tumour_share_of_each_coarse_voxel():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[:, :, :2] = 1  # the left half
    v = Volume("P", np.zeros((4, 4, 4), np.float32), mask, None, (1.0, 1.0, 1.0), "test")
    target = coarse_target(v, 4.0)  # one voxel holding the whole scan
    assert target.shape == (1, 1, 1)
    assert np.allclose(target, 0.5, atol=0.01)


def test_inputs_carry_ct_and_pet_through_their_windows():
    v = _volume(0)
    image = coarse_inputs(v, PRE, 8.0)
    assert image.shape == (6, 8, 8, 2)
    assert image.min() >= 0.0 and image.max() <= 1.0
    ct_only = coarse_inputs(v, Preprocessing((-160.0, 240.0), 32, 3), 8.0)
    assert ct_only.shape == (6, 8, 8, 1)
    assert np.allclose(ct_only[..., 0], image[..., 0])


def test_network_keeps_the_grid_and_predict_crops_the_padding():
    model = build_unet3d(2)
    out = model(np.zeros((1, 8, 16, 16, 2), np.float32)).numpy()
    assert out.shape == (1, 8, 16, 16, 1)
    probs = predict_coarse(model, np.zeros((5, 9, 11, 2), np.float32))
    assert probs.shape == (5, 9, 11)
    assert np.all((probs > 0) & (probs < 1))
    assert on_model_grid(probs, 20, 32).shape == (20, 32, 32)


@pytest.mark.parametrize("spacing_mm", [8.0])
def test_seeded_training_repeats_and_learns_something(spacing_mm):
    vols = [_volume(s) for s in range(4)]
    cfg = CoarseTraining(spacing_mm=spacing_mm, epochs=25, batch_size=2, seed=3)
    images = [coarse_inputs(v, PRE, spacing_mm) for v in vols]
    targets = [coarse_target(v, spacing_mm) for v in vols]
    first = predict_coarse(fit_coarse(images, targets, cfg), images[0])
    again = predict_coarse(fit_coarse(images, targets, cfg), images[0])
    assert np.array_equal(first, again)
    assert first.shape == targets[0].shape
    # the head started at the prior everywhere; after training the tumour stands out
    assert first[targets[0] > 0.5].mean() > first[targets[0] == 0].mean()
