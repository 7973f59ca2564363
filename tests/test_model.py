"""The U-Net builders: an ensemble is one model that averages its members."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.model import (
    average_members,
    build_unet,
    check_train_params,
    mean_history,
    save_unet,
    seed_everything,
    validation_dice,
)
from sarcoma_seg.model_folder import MODEL_CONFIG_NAME, load_unet, write_model_config
from sarcoma_seg.settings import settings_from
from sarcoma_seg.transforms import Preprocessing
from tests.conftest import tiny_params


def test_ensemble_averages_members_and_survives_hdf5(tmp_path: Path) -> None:
    members = []
    for seed in (0, 1):
        seed_everything(seed)
        members.append(build_unet("resnet18", None, 4))
    images = np.random.default_rng(0).random((2, 32, 32, 4), dtype=np.float32)
    each = [m(images, training=False).numpy() for m in members]
    assert not np.allclose(each[0], each[1])  # different seeds, different members
    ensemble = average_members(members, 4)
    assert np.allclose(ensemble(images, training=False).numpy(), (each[0] + each[1]) / 2)
    section = save_unet(ensemble, tmp_path / "model.h5", "resnet18")
    write_model_config(
        tmp_path / MODEL_CONFIG_NAME, Preprocessing((-160.0, 240.0), 32, 4), None, section
    )
    loaded = load_unet(tmp_path)
    assert np.allclose(loaded(images, training=False).numpy(), (each[0] + each[1]) / 2)


def test_one_member_is_the_model_itself() -> None:
    model = build_unet("resnet18", None, 3)
    assert average_members([model], 3) is model


def test_mean_history_averages_epoch_by_epoch() -> None:
    history = mean_history([{"loss": [1.0, 0.5]}, {"loss": [0.8, 0.3]}])
    assert np.allclose(history["loss"], [0.9, 0.4])


def test_validation_dice_scores_at_the_inference_threshold() -> None:
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 1))
    model = tf.keras.Model(inputs, tf.keras.layers.Lambda(lambda x: x * 0.0 + 0.3)(inputs))
    images = np.zeros((2, 8, 8, 1), np.float32)
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, :4] = 1  # half of every slice is tumour; the model says 0.3 everywhere
    for threshold, expected in [(0.2, 2 * 64 / (64 + 128)), (0.5, 0.0)]:
        callback, logs = validation_dice(images, masks, threshold), {}
        callback.set_model(model)
        callback.on_epoch_end(0, logs)
        assert np.isclose(logs["val_dice"], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbone": "resnet9000"}, r"^train\.backbone='resnet9000' is not allowed"),
        ({"lr_schedule": "plateau", "monitor": "last"}, r"plateau needs a validation monitor"),
        ({"registered_model": "a/b"}, r"^train\.registered_model='a/b' is not allowed"),
        ({"ensemble": 2, "monitor": "val_dice"}, r"train\.monitor=val_dice stops each early"),
    ],
)
def test_check_train_params_refuses_what_the_schema_cannot_see(change: dict, message: str) -> None:
    train = settings_from(tiny_params()).train
    check_train_params(train)  # the defaults pass
    with pytest.raises(SarcomaSegError, match=message):
        check_train_params(replace(train, **change))
