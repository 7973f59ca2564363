"""The training input as a tf.data pipeline: augmentation and batching run on tf.data's threads,
several batches at once and ahead of the model, yet every batch is a pure function of
(seed, epoch, position), so the result does not depend on threads or timing."""

import copy
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from sarcoma_seg.dataset import SliceSet, epoch_order


@dataclass
class Batches:
    """A tf.data dataset of (images, masks) batches for every epoch in a row, and the number of
    steps in one epoch (model.fit(dataset, steps_per_epoch=steps, epochs=epochs))."""

    dataset: Any  # tf.data.Dataset
    steps: int


def epoch_orders(
    masks: np.ndarray, seed: int, epochs: int, tumour_fraction: float | None = None
) -> list[np.ndarray]:
    """Slice indices of every epoch, drawn as the Keras Sequence drew them (one generator from
    the seed: a fresh oversampled order each epoch, else the first order reshuffled)."""
    rng = np.random.default_rng(seed)
    order = epoch_order(masks, rng, tumour_fraction)
    orders = [order.copy()]
    for _ in range(1, epochs):
        if tumour_fraction:
            order = epoch_order(masks, rng, tumour_fraction)
        else:
            rng.shuffle(order)
        orders.append(order.copy())
    return orders


def sample_seeds(seed: int, epoch: int, position: int, count: int) -> list[int]:
    """`count` independent seeds for one sample, from (seed, epoch, position in the epoch)."""
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(count)
    return [int(s) for s in state]


def seed_augmentation(augment: Any, seeds: list[int]) -> None:
    """Reseed a Compose and each of its transforms with its own seed. Compose.set_random_seed
    gives every transform the same seed, so their coin flips would agree on every sample."""
    augment.set_random_seed(seeds[0])
    for transform, seed in zip(augment.transforms, seeds[1:]):
        transform.set_random_seed(seed)


class Augmenter:
    """Applies the augmentation to a batch, each sample seeded on its own; one copy of the
    Compose per thread, since a Compose keeps its random state on itself."""

    def __init__(self, augment: Any, seed: int) -> None:
        self.augment, self.seed, self.local = augment, seed, threading.local()

    def pipeline(self) -> Any:
        """This thread's copy of the Compose."""
        if not hasattr(self.local, "augment"):
            self.local.augment = copy.deepcopy(self.augment)
        return self.local.augment

    def __call__(
        self, images: np.ndarray, masks: np.ndarray, epoch: int, start: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augmented copies of one batch whose first sample sits at `start` in its epoch."""
        augment = self.pipeline()
        count = len(augment.transforms) + 1
        out_images, out_masks = [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            seed_augmentation(augment, sample_seeds(self.seed, epoch, start + i, count))
            pair = augment(image=image, mask=mask)
            out_images.append(pair["image"])
            out_masks.append(pair["mask"])
        return np.stack(out_images), np.stack(out_masks)


def batch_plan(orders: list[np.ndarray], batch_size: int) -> list[tuple[int, int, np.ndarray]]:
    """(epoch, start position, slice indices) of every batch of every epoch, in training order."""
    return [
        (epoch, start, order[start : start + batch_size])
        for epoch, order in enumerate(orders)
        for start in range(0, len(order), batch_size)
    ]


def train_batches(
    data: SliceSet,
    batch_size: int,
    augment: Any,
    seed: int,
    epochs: int,
    tumour_fraction: float | None = None,
    first_epoch: int = 0,
    parallel: int | None = None,
) -> Batches:
    """Shuffled, oversampled and augmented training batches for epochs `first_epoch` (a resumed
    training's next epoch) to `epochs`; `parallel` batches are made at once (None: tf.data
    picks) and kept ahead of the model."""
    import tensorflow as tf

    orders = epoch_orders(data.masks, seed, epochs, tumour_fraction)
    plan = batch_plan(orders, batch_size)
    augmenter = Augmenter(augment, seed) if augment is not None else None

    def make(step: np.int64) -> tuple[np.ndarray, np.ndarray]:
        """Batch number `step` of the plan."""
        epoch, start, idx = plan[int(step)]
        images, masks = data.images[idx], data.masks[idx]
        if augmenter is not None:
            images, masks = augmenter(images, masks, epoch, start)
        return images.astype(np.float32), masks[..., None].astype(np.float32)

    def load(step: Any) -> tuple[Any, Any]:
        """The tf.data map: make() on a tf.data thread, with the batch's static shape."""
        images, masks = tf.numpy_function(make, [step], [tf.float32, tf.float32], stateful=False)
        images.set_shape((None, *data.images.shape[1:]))
        masks.set_shape((None, *data.masks.shape[1:], 1))
        return images, masks

    calls = tf.data.AUTOTUNE if parallel is None else parallel
    start = sum(1 for epoch, _, _ in plan if epoch < first_epoch)
    dataset = (
        tf.data.Dataset.range(start, len(plan))
        .map(load, num_parallel_calls=calls, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return Batches(with_data_sharding(dataset), int(np.ceil(len(orders[0]) / batch_size)))


def eval_batches(data: SliceSet, batch_size: int) -> Any:
    """Plain batches in order (validation), as a tf.data dataset."""
    import tensorflow as tf

    masks = data.masks[..., None].astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((data.images.astype(np.float32), masks))
    return with_data_sharding(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def with_data_sharding(dataset: Any) -> Any:
    """Across workers, split every global batch between them (there are no files to split)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
