"""The shared inference path: postprocessing, flip test-time augmentation, config round trip."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.inference import segment_volume
from sarcoma_seg.model_folder import (
    DATA_CONFIG_NAME,
    LEGACY_CONFIG_NAME,
    MODEL_CONFIG_NAME,
    ModelConfig,
    check_inference,
    model_config_path,
    read_data_config,
    read_model_config,
    require_inference,
    write_data_config,
    write_model_config,
)
from sarcoma_seg.settings import Inference, ModelSection
from sarcoma_seg.transforms import Preprocessing

PRE = Preprocessing(hu_window=(-160.0, 240.0), image_size=32, channels=1)
PRE_PET = Preprocessing((-160.0, 240.0), 32, 3, pet_window=(0.0, 1.0))
INFERENCE = Inference(
    threshold=0.5, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=None
)


class LeftHalfModel:
    """Stands in for the U-Net: 'tumour' probability 0.8 in the left half of every image."""

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        probs = np.zeros(images.shape[:3] + (1,), np.float32)
        probs[:, :, : images.shape[2] // 2] = 0.8
        return probs


def test_flip_tta_averages_with_the_mirror_and_postprocess_applies() -> None:
    ct = np.zeros((2, 64, 64), np.float32)
    plain = Inference(
        threshold=0.5, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=None
    )
    mask = segment_volume(LeftHalfModel(), PRE, ct, plain)
    assert mask.shape == ct.shape and mask[:, :, :32].all() and not mask[:, :, 32:].any()
    # mirrored, the left half scores 0.4 on each side: below the threshold everywhere
    flipped = segment_volume(LeftHalfModel(), PRE, ct, replace(plain, tta_flip=True))
    assert not flipped.any()
    low = segment_volume(LeftHalfModel(), PRE, ct, replace(plain, tta_flip=True, threshold=0.3))
    assert low.all()


class TwoBandsModel:
    """Stands in for the U-Net: 'tumour' in a narrow and a wide band of columns, apart."""

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        probs = np.zeros(images.shape[:3] + (1,), np.float32)
        probs[:, :, 2:6] = probs[:, :, 12:28] = 0.8
        return probs


def test_postprocess_largest_component_keeps_the_wide_band_only() -> None:
    ct = np.zeros((2, 64, 64), np.float32)
    plain = Inference(
        threshold=0.5, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=None
    )
    both = segment_volume(TwoBandsModel(), PRE, ct, plain)
    one = segment_volume(TwoBandsModel(), PRE, ct, replace(plain, postprocess="largest_component"))
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
    plain = Inference(
        threshold=0.5, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=None
    )
    hits = segment_volume(SliceProbabilityModel(per_slice), PRE, ct, plain).any(axis=(1, 2))
    assert hits.tolist() == [p >= 0.5 for p in per_slice]
    # sigma 1: 0.627 0.815 0.751 0.656 0.702 0.600 on slices 1-6, 0.243 on slice 9
    smoothed = segment_volume(SliceProbabilityModel(per_slice), PRE, ct, replace(plain, z_sigma=1))
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
    plain = Inference(
        threshold=0.5, postprocess="none", tta_flip=True, z_sigma=0.0, review_below=None
    )
    segment_volume(
        LeftHalfModel(), PRE, np.zeros((11, 40, 40)), plain, batch_size=4, progress=seen.append
    )
    assert seen == [4, 4, 3]


def test_config_round_trip(tmp_path: Path) -> None:
    inference = Inference(**check_inference({"threshold": 0.4, "postprocess": "largest_component"}))
    section = ModelSection("resnet18", 1, 1, "0" * 64)
    write_model_config(tmp_path / MODEL_CONFIG_NAME, PRE, inference, section)
    assert read_model_config(tmp_path / MODEL_CONFIG_NAME) == ModelConfig(PRE, inference, section)


def test_a_model_folder_prefers_model_config_and_falls_back_to_preprocessing(
    tmp_path: Path,
) -> None:
    assert model_config_path(tmp_path) == tmp_path / MODEL_CONFIG_NAME  # named in errors
    write_model_config(tmp_path / LEGACY_CONFIG_NAME, PRE)
    assert model_config_path(tmp_path) == tmp_path / LEGACY_CONFIG_NAME  # an older model's folder
    write_model_config(tmp_path / MODEL_CONFIG_NAME, PRE)
    assert model_config_path(tmp_path) == tmp_path / MODEL_CONFIG_NAME


def test_a_config_without_inference_cannot_segment(tmp_path: Path) -> None:
    write_data_config(tmp_path, PRE)  # what preprocess writes beside the data
    config = read_model_config(tmp_path / DATA_CONFIG_NAME)
    assert config == ModelConfig(PRE, None, None) and read_data_config(tmp_path) == PRE
    with pytest.raises(SarcomaSegError, match=r"data_config\.json: has no inference section"):
        require_inference(tmp_path / DATA_CONFIG_NAME, config)


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
    assert [inference_batch_size(s) for s in (96, 128, 512)] == [16, 9, 1]


def test_the_pretraced_predictor_gives_predict_on_batch_bit_for_bit() -> None:
    from sarcoma_seg.inference import traced_predictor, volume_probabilities
    from sarcoma_seg.model import build_unet

    model = build_unet("resnet18", None, 4)  # the U-Net predict runs, untrained
    head = model.get_layer("final_conv")
    head.bias.assign(np.zeros(head.bias.shape))  # probabilities near 0.5: a mask to compare
    images = np.random.default_rng(2).random((7, 32, 32, 4)).astype(np.float32)
    predictor = traced_predictor(model, (4, 32, 32, 4))  # traced before any batch is seen
    for tta in (False, True):
        keras = volume_probabilities(model, images, tta, 4)
        traced = volume_probabilities(model, images, tta, 4, predictor=predictor)
        assert np.array_equal(keras, traced)
    mask = segment_volume(model, PRE_PET, images[..., 0] * 400 - 160, INFERENCE, images[..., 3])
    assert 0 < mask.mean() < 1  # the comparison above covers both sides of the threshold
