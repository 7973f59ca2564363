"""The tf.data training input: the Sequence's slice orders, the same bytes whatever the
parallelism, and independent coin flips per transform."""

import numpy as np

from sarcoma_seg.dataset import SliceSet, batch_sequence
from sarcoma_seg.pipeline_input import eval_batches, sample_seeds, train_batches
from sarcoma_seg.transforms import build_augmentation
from tests.conftest import tiny_params


def tiny_set(n: int = 10, size: int = 32, channels: int = 4) -> SliceSet:
    """n random slices with a square tumour in every other one."""
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size, channels), dtype=np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    masks[::2, 8:16, 8:16] = 1
    return SliceSet(images, masks, np.array(["p"] * n), np.arange(n), {"p": [1.0, 1.0, 1.0]})


def batches_of(data: SliceSet, parallel: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every batch of 3 epochs of the default augmentation."""
    augment = build_augmentation(tiny_params()["train"]["augment"], 32, 7, pet=True)
    made = train_batches(data, 4, augment, 7, epochs=3, tumour_fraction=None, parallel=parallel)
    assert made.steps == 3
    return [(x.numpy(), y.numpy()) for x, y in made.dataset]


def test_batches_are_the_same_bytes_serial_or_parallel() -> None:
    data = tiny_set()
    serial, parallel = batches_of(data, 1), batches_of(data, 4)
    assert len(serial) == 9 and [x.shape[0] for x, _ in serial[:3]] == [4, 4, 2]
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert xs.tobytes() == xp.tobytes() and ys.tobytes() == yp.tobytes()
    assert not np.array_equal(serial[0][0], serial[3][0])  # epochs differ


def test_slice_order_is_the_sequence_order_and_unaugmented_batches_are_the_data() -> None:
    data = tiny_set()
    sequence = batch_sequence(data, 4, augment=lambda image, mask: {"image": image, "mask": mask})
    made = train_batches(data, 4, None, 0, epochs=2)
    got = [x.numpy() for x, _ in made.dataset]
    for epoch in range(2):
        for i in range(len(sequence)):
            assert np.array_equal(got[epoch * 3 + i], sequence[i][0])
        sequence.on_epoch_end()
    plain = [y.numpy() for _, y in eval_batches(data, 4)]
    assert np.array_equal(np.concatenate(plain)[..., 0], data.masks)


def test_each_transform_draws_its_own_seed() -> None:
    seeds = sample_seeds(42, 0, 5, 10)
    assert len(set(seeds)) == 10 and seeds == sample_seeds(42, 0, 5, 10)
    assert seeds != sample_seeds(42, 1, 5, 10)
