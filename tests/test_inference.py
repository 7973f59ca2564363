"""The shared inference path: postprocessing, flip test-time augmentation, config round trip."""

from pathlib import Path

import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.inference import (
    check_inference,
    load_config,
    save_config,
    segment_volume,
)
from sarcoma_seg.transforms import Preprocessing

PRE = Preprocessing(hu_window=(-160.0, 240.0), image_size=32, channels=1)


class LeftHalfModel:
    """Stands in for the U-Net: 'tumour' probability 0.8 in the left half of every image."""

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        probs = np.zeros(images.shape[:3] + (1,), np.float32)
        probs[:, :, : images.shape[2] // 2] = 0.8
        return probs


def test_flip_tta_averages_with_the_mirror_and_postprocess_applies() -> None:
    ct = np.zeros((2, 64, 64), np.float32)
    plain = {"threshold": 0.5, "postprocess": "none", "tta_flip": False}
    mask = segment_volume(LeftHalfModel(), PRE, ct, plain)
    assert mask.shape == ct.shape and mask[:, :, :32].all() and not mask[:, :, 32:].any()
    # mirrored, the left half scores 0.4 on each side: below the threshold everywhere
    flipped = segment_volume(LeftHalfModel(), PRE, ct, {**plain, "tta_flip": True})
    assert not flipped.any()
    low = segment_volume(LeftHalfModel(), PRE, ct, {**plain, "tta_flip": True, "threshold": 0.3})
    assert low.all()


class TwoBandsModel:
    """Stands in for the U-Net: 'tumour' in a narrow and a wide band of columns, apart."""

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        probs = np.zeros(images.shape[:3] + (1,), np.float32)
        probs[:, :, 2:6] = probs[:, :, 12:28] = 0.8
        return probs


def test_postprocess_largest_component_keeps_the_wide_band_only() -> None:
    ct = np.zeros((2, 64, 64), np.float32)
    plain = {"threshold": 0.5, "postprocess": "none", "tta_flip": False}
    both = segment_volume(TwoBandsModel(), PRE, ct, plain)
    one = segment_volume(TwoBandsModel(), PRE, ct, {**plain, "postprocess": "largest_component"})
    assert both[:, :, :16].any() and both[:, :, 30:50].all()  # the model grid is 32 of 64 px
    assert not one[:, :, :16].any() and np.array_equal(one[:, :, 16:], both[:, :, 16:])


class SliceProbabilityModel:
    """Stands in for the U-Net: one given probability for the whole of each slice, in order."""

    def __init__(self, per_slice: list[float]) -> None:
        self.per_slice, self.seen = per_slice, 0

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        n = len(images)  # the last batch arrives padded: the padding slices get 0
        values = np.zeros(n, np.float32)
        given = self.per_slice[self.seen : self.seen + n]
        values[: len(given)] = given
        self.seen += n
        return np.broadcast_to(values[:, None, None, None], (n, *images.shape[1:3], 1))


def test_z_sigma_fills_a_dropped_slice_and_removes_a_lone_one() -> None:
    ct = np.zeros((11, 32, 32), np.float32)
    # a tumour on slices 1-6 that the model lost on slice 4; slice 9 alone is a flicker
    per_slice = [0.0, 0.9, 0.9, 0.9, 0.3, 0.9, 0.9, 0.0, 0.0, 0.6, 0.0]
    plain = {"threshold": 0.5, "postprocess": "none", "tta_flip": False, "z_sigma": 0.0}
    hits = segment_volume(SliceProbabilityModel(per_slice), PRE, ct, plain).any(axis=(1, 2))
    assert hits.tolist() == [p >= 0.5 for p in per_slice]
    # sigma 1: 0.627 0.815 0.751 0.656 0.702 0.600 on slices 1-6, 0.243 on slice 9
    smoothed = segment_volume(SliceProbabilityModel(per_slice), PRE, ct, {**plain, "z_sigma": 1})
    assert smoothed.any(axis=(1, 2)).tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]


def test_z_sigma_matches_a_gaussian_along_slices_only() -> None:
    from scipy import ndimage

    from sarcoma_seg.inference import smooth_across_slices

    probs = np.random.default_rng(2).random((6, 5, 4)).astype(np.float32)
    out = smooth_across_slices(probs, 1.5)
    expected = np.stack(
        [
            ndimage.gaussian_filter1d(probs[:, r, c], 1.5, mode="nearest")
            for r in range(5)
            for c in range(4)
        ],
        axis=1,
    ).reshape(6, 5, 4)
    assert np.allclose(out, expected, atol=1e-6)
    assert smooth_across_slices(probs, 0.0) is probs
    assert np.allclose(smooth_across_slices(np.full((3, 2, 2), 0.7), 2.0), 0.7)


def test_progress_counts_every_slice_once() -> None:
    seen: list[int] = []
    plain = {"threshold": 0.5, "postprocess": "none", "tta_flip": True}
    segment_volume(
        LeftHalfModel(), PRE, np.zeros((11, 40, 40)), plain, batch_size=4, progress=seen.append
    )
    assert seen == [4, 4, 3]


def test_config_round_trip(tmp_path: Path) -> None:
    inference = check_inference({"threshold": 0.4, "postprocess": "largest_component"})
    save_config(tmp_path / "p.json", PRE, inference)
    assert load_config(tmp_path / "p.json") == (PRE, inference)


@pytest.mark.parametrize(
    ("inference", "param"),
    [
        ({"threshold": 1.5}, "inference.threshold"),
        ({"threshold": 0.5, "postprocess": "crf"}, "inference.postprocess"),
        ({"threshold": 0.5, "tta_flip": "yes"}, "inference.tta_flip"),
        ({"threshold": 0.5, "z_sigma": -1}, "inference.z_sigma"),
        ({"threshold": 0.5, "z_sigma": "wide"}, "inference.z_sigma"),
    ],
)
def test_bad_inference_params_name_the_param(inference: dict, param: str) -> None:
    with pytest.raises(SarcomaSegError, match=param.replace(".", r"\.")):
        check_inference(inference)


def test_compiled_batches_match_the_eager_model() -> None:
    import tensorflow as tf

    from sarcoma_seg.inference import inference_batch_size, volume_probabilities

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((16, 16, 2))
    model = tf.keras.Model(
        inputs, tf.keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    )
    images = np.random.default_rng(1).random((11, 16, 16, 2)).astype(np.float32)
    eager = model(images, training=False).numpy()[..., 0]
    for batch_size in (4, 11, None):  # 4: the last batch of 3 is padded to 4
        assert np.allclose(volume_probabilities(model, images, False, batch_size), eager, atol=1e-6)
    flipped = volume_probabilities(model, images, True, 4)
    mirror = model(images[:, :, ::-1], training=False).numpy()[:, :, ::-1, 0]
    assert np.allclose(flipped, (eager + mirror) / 2, atol=1e-6)
    assert [inference_batch_size(s) for s in (96, 128, 512)] == [32, 18, 1]
