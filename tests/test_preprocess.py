"""Deterministic preprocessing: HU window, shapes, channels, mask binarisation."""

import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.settings import Preprocess
from sarcoma_seg.transforms import Preprocessing, build_augmentation, preprocessing_from

PRE = Preprocessing(hu_window=(-160.0, 240.0), image_size=32, channels=3)


@pytest.mark.parametrize(
    ("hu", "expected"), [(-1000, 0.0), (-160, 0.0), (-60, 0.25), (40, 0.5), (240, 1.0), (3000, 1.0)]
)
def test_window_maps_hu_linearly_and_clips(hu: float, expected: float) -> None:
    out = PRE.image(np.full((64, 64), hu, dtype=np.float32))
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert np.allclose(out, expected)


def section(**keys: object) -> Preprocess:
    """A preprocess section: params.yaml's windows, 3 channels, no context, no PET, with keys
    replaced (values as YAML gives them, unchecked)."""
    values = {
        "hu_window": [-160, 240],
        "png8_window": [0, 255],
        "channels": 3,
        "context_slices": 0,
        "hu_windows": None,
        "pet_window": None,
    }
    return Preprocess(**(values | keys))


def test_image_shape_and_channels_replicated() -> None:
    out = PRE.image(np.random.default_rng(0).normal(0, 100, (48, 40)))
    assert out.shape == (32, 32, 3)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_mask_is_binarised_and_resized_by_covered_fraction() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 2  # label 2 is tumour too (values 0, 1, 2 occur in the exported set)
    out = PRE.mask(mask)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1}
    assert out.sum() == 16 * 16


@pytest.mark.parametrize("side", ["left", "right"])
def test_mask_downsampling_is_centred(side: str) -> None:
    # 10 -> 4 pixels: footprints [0, 2.5), [2.5, 5), [5, 7.5), [7.5, 10); a 4-pixel-wide tumour
    # at either edge covers 100% and 60% of the two outer footprints, so both mirror images
    # keep two columns (INTER_NEAREST keeps two on the left but one on the right)
    mask = np.zeros((10, 10), dtype=np.uint8)
    cols = slice(0, 4) if side == "left" else slice(6, 10)
    mask[:, cols] = 1
    out = Preprocessing((-160.0, 240.0), 4, 3).mask(mask)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[:, slice(0, 2) if side == "left" else slice(2, 4)] = 1
    assert np.array_equal(out, expected)


def test_mask_upsampling_keeps_the_tumour_where_it_was() -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1:3, 1:3] = 1
    out = Preprocessing((-160.0, 240.0), 8, 3).mask(mask)
    assert out.sum() == 4 * 4 and np.array_equal(out, out[::-1, ::-1])  # centred, symmetric


def test_volume_and_restore_roundtrip() -> None:
    ct = np.zeros((3, 64, 64), dtype=np.float32)
    assert PRE.volume(ct).shape == (3, 32, 32, 3)
    small = np.zeros((32, 32), dtype=np.float32)
    small[8:24, 8:24] = 1.0
    restored = PRE.restore(small, (64, 64))
    assert restored.shape == (64, 64) and restored.dtype == np.float32
    assert (restored >= 0.5).sum() == 32 * 32  # a square stays a square of twice the side


def test_restore_interpolates_probabilities_before_the_threshold() -> None:
    probs = np.zeros((4, 4), dtype=np.float32)
    probs[:, 2:] = 1.0  # a step between columns 1 and 2
    restored = PRE.restore(probs, (8, 8))
    assert 0 < restored[0, 3] < 1  # the edge is interpolated, not copied from the nearest pixel
    assert np.allclose(restored[:, :3], 0) and np.allclose(restored[:, 5:], 1)


def test_pet_channel_follows_the_ct_channels() -> None:
    pre = Preprocessing((-160.0, 240.0), 32, 3, pet_window=(0.0, 5.0))
    ct = np.full((2, 64, 64), 40.0, dtype=np.float32)
    pet = np.zeros((2, 64, 64), dtype=np.float32)
    pet[1] = 10.0  # above the window: clipped to 1
    pet[0, :32] = 2.5  # mid-window
    images = pre.volume(ct, pet)
    assert pre.input_channels == 4 and images.shape == (2, 32, 32, 4)
    assert np.allclose(images[..., :3], 0.5)
    assert np.allclose(images[1, ..., 3], 1.0)
    assert np.allclose(images[0, :16, :, 3], 0.5) and np.allclose(images[0, 16:, :, 3], 0.0)
    assert np.allclose(pre.image(ct[1], pet[1]), images[1])


def test_pet_model_without_pet_names_what_is_missing() -> None:
    pre = Preprocessing((-160.0, 240.0), 32, 3, pet_window=(0.0, 5.0))
    with pytest.raises(SarcomaSegError, match="reads PET"):
        pre.volume(np.zeros((2, 64, 64)))
    with pytest.raises(SarcomaSegError, match="reads PET"):
        pre.volume(np.zeros((2, 64, 64)), np.zeros((2, 32, 32)))


@pytest.mark.parametrize(
    ("base", "pre", "param"),
    [
        ({"image_size": 100}, {"hu_window": [-160, 240], "channels": 3}, "base.image_size"),
        ({"image_size": 0}, {"hu_window": [-160, 240], "channels": 3}, "base.image_size"),
        ({"image_size": 96}, {"hu_window": [240, -160], "channels": 3}, "preprocess.hu_window"),
        ({"image_size": 96}, {"hu_window": [-160, 240], "channels": 2}, "preprocess.channels"),
        (
            {"image_size": 96},
            {"hu_window": [-160, 240], "channels": 3, "pet_window": [5, 0]},
            "preprocess.pet_window",
        ),
    ],
)
def test_bad_params_name_the_param(base: dict, pre: dict, param: str) -> None:
    with pytest.raises(SarcomaSegError, match=param.replace(".", r"\.")):
        preprocessing_from(base["image_size"], section(**pre))


def test_augmentation_is_seeded_and_keeps_mask_binary() -> None:
    cfg = {"horizontal_flip": {"enabled": True, "p": 1.0}, "affine": {"enabled": False}}
    image = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, :8] = 1
    out = build_augmentation(cfg, 32, seed=3)(image=image, mask=mask)
    assert np.array_equal(out["image"], image[:, ::-1])
    assert np.array_equal(out["mask"], mask[:, ::-1])


def test_unknown_augmentation_lists_the_allowed_names() -> None:
    with pytest.raises(SarcomaSegError, match="train.augment.elastic.*horizontal_flip"):
        build_augmentation({"elastic": {"enabled": True}}, 32, seed=0)


def test_2p5d_channels_are_the_neighbouring_slices_clamped_at_the_edges() -> None:
    pre = Preprocessing((0.0, 10.0), image_size=32, channels=3, context=1)
    ct = np.stack([np.full((40, 40), float(z)) for z in range(4)])  # slice z holds value z
    out = pre.volume(ct)
    assert out.shape == (4, 32, 32, 3)
    assert np.allclose(out[0, 0, 0], [0.0, 0.0, 0.1])  # no slice below the first
    assert np.allclose(out[2, 0, 0], [0.1, 0.2, 0.3])
    assert np.allclose(out[3, 0, 0], [0.2, 0.3, 0.3])


def test_2p5d_channels_must_match_the_context() -> None:
    with pytest.raises(SarcomaSegError, match=r"context_slices=2.*channels = 5"):
        preprocessing_from(32, section(context_slices=2))
    assert preprocessing_from(32, section(context_slices=2, channels=5)).context == 2


def test_pet_uptake_scales_only_the_pet_channel_within_its_range() -> None:
    cfg = {"pet_uptake": {"enabled": True, "p": 1.0, "scale": [0.25, 0.5], "drop": 0.0}}
    image = np.full((16, 16, 4), 0.8, np.float32)
    mask = np.zeros((16, 16), np.uint8)
    augment = build_augmentation(cfg, 16, seed=0, pet=True)
    pets = [augment(image=image, mask=mask)["image"] for _ in range(20)]
    for out in pets:
        assert np.array_equal(out[..., :3], image[..., :3])  # CT untouched
        assert 0.2 - 1e-6 <= out[0, 0, 3] <= 0.4 + 1e-6  # 0.8 x [0.25, 0.5]
        assert np.all(out[..., 3] == out[0, 0, 3])  # one factor per slice
    assert len({float(out[0, 0, 3]) for out in pets}) > 10  # random, not one fixed factor


def test_pet_uptake_drop_zeroes_pet_and_is_skipped_for_ct_only_models() -> None:
    cfg = {"pet_uptake": {"enabled": True, "p": 1.0, "scale": [1.0, 1.0], "drop": 1.0}}
    image = np.full((16, 16, 4), 0.8, np.float32)
    mask = np.zeros((16, 16), np.uint8)
    out = build_augmentation(cfg, 16, seed=0, pet=True)(image=image, mask=mask)["image"]
    assert np.all(out[..., 3] == 0.0) and np.all(out[..., :3] == 0.8)
    ct_only = image[..., :3]
    out = build_augmentation(cfg, 16, seed=0, pet=False)(image=ct_only, mask=mask)["image"]
    assert np.array_equal(out, ct_only)  # no PET channel: the last CT channel is not touched


@pytest.mark.parametrize(
    "bad", [{"scale": [1.0, 0.5]}, {"scale": [0.3]}, {"scale": 0.5}, {"drop": 2}, {"p": None}]
)
def test_pet_uptake_with_bad_settings_names_the_param(bad: dict) -> None:
    cfg = {"pet_uptake": {"enabled": True, "p": 1.0, "scale": [0.3, 1.0], "drop": 0.0, **bad}}
    with pytest.raises(SarcomaSegError, match=r"train\.augment\.pet_uptake"):
        build_augmentation(cfg, 16, seed=0, pet=True)


def test_hu_windows_give_each_ct_channel_its_own_window() -> None:
    windows = [[-160, 240], [-20, 100], [-1000, 1000]]
    pre = preprocessing_from(32, section(hu_windows=windows))
    ct = np.full((2, 64, 64), 40.0)
    ct[:, :32] = -500.0  # top half: fat-to-air, below every window but the wide one
    out = pre.volume(ct)
    assert out.shape == (2, 32, 32, 3)
    assert np.allclose(out[0, 20, 0], [0.5, 0.5, 0.52])  # 40 HU through each window
    assert np.allclose(out[0, 0, 0], [0.0, 0.0, 0.25])  # -500 HU


def test_hu_windows_survive_the_saved_config(tmp_path) -> None:
    from sarcoma_seg.model_folder import read_data_config, write_data_config

    pre = Preprocessing((-160.0, 240.0), 32, 3, hu_windows=((-160.0, 240.0), (0.0, 100.0)))
    write_data_config(tmp_path, pre)
    assert read_data_config(tmp_path) == pre


@pytest.mark.parametrize(
    ("pre", "units", "message"),
    [
        ({"hu_windows": [[-160, 240]]}, "HU", r"hu_windows=.*one \[low, high\] per channel"),
        ({"hu_windows": [[0, 1], [2, 1], [0, 5]]}, "HU", r"hu_windows\[1\]=\[2, 1\]"),
        ({"hu_windows": "wide"}, "HU", r"hu_windows='wide'"),
        ({"hu_windows": [[0, 1]] * 3}, "png8", r"hu_windows needs CT in HU.*png8"),
        ({"hu_windows": [[0, 1]] * 3, "context_slices": 1}, "HU", r"context_slices"),
    ],
)
def test_bad_hu_windows_name_the_param(pre: dict, units: str, message: str) -> None:
    with pytest.raises(SarcomaSegError, match=r"preprocess\." + message):
        preprocessing_from(32, section(**pre), units)


def test_pet_blur_blurs_only_the_pet_channel_with_a_gaussian() -> None:
    from scipy.ndimage import gaussian_filter

    cfg = {"pet_blur": {"enabled": True, "p": 1.0, "sigma": [2.0, 2.0]}}
    image = np.full((16, 16, 4), 0.3, np.float32)
    image[..., 3] = 0.0
    image[8, 8, 3] = 1.0  # one hot PET pixel
    mask = np.zeros((16, 16), np.uint8)
    out = build_augmentation(cfg, 16, seed=0, pet=True)(image=image, mask=mask)["image"]
    assert np.array_equal(out[..., :3], image[..., :3])  # CT untouched
    assert np.allclose(out[..., 3], gaussian_filter(image[..., 3], 2.0, mode="reflect"), atol=1e-6)
    assert np.isclose(out[..., 3].sum(), 1.0)  # the uptake is spread, not lost
    ct_only = image[..., :3]
    out = build_augmentation(cfg, 16, seed=0, pet=False)(image=ct_only, mask=mask)["image"]
    assert np.array_equal(out, ct_only)  # no PET channel: the last CT channel is not blurred


@pytest.mark.parametrize("bad", [{"sigma": [3.0, 1.0]}, {"sigma": [0.0, 1.0]}, {"sigma": 2}])
def test_pet_blur_with_bad_settings_names_the_param(bad: dict) -> None:
    cfg = {"pet_blur": {"enabled": True, "p": 1.0, "sigma": [1.0, 3.0], **bad}}
    with pytest.raises(SarcomaSegError, match=r"train\.augment\.pet_blur"):
        build_augmentation(cfg, 16, seed=0, pet=True)
