"""train.mixed_precision: float16 compute, float32 probabilities, a loss-scaled optimizer; one
training step runs on the CPU (forced: without a GPU training stays in float32)."""

import numpy as np
import pytest
import tensorflow as tf

from sarcoma_seg.distribute import float32_output, set_precision
from sarcoma_seg.model import build_unet, compile_unet
from sarcoma_seg.settings import settings_from
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow  # float16 on a CPU: building and one step take ~20 s


def test_mixed_precision_builds_and_trains_one_step_on_cpu() -> None:
    tp = settings_from(tiny_params()).train
    try:
        assert set_precision(True, force=True)
        model = float32_output(build_unet(tp.backbone, None, 4, tp.bn_momentum))
        compile_unet(model, tp)
        assert model.get_layer("final_conv").compute_dtype == "float16"
        assert model.output.dtype == tf.float32
        assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        rng = np.random.default_rng(0)
        x = rng.random((2, 32, 32, 4), dtype=np.float32)
        y = (rng.random((2, 32, 32, 1)) > 0.9).astype(np.float32)
        loss = model.train_on_batch(x, y, return_dict=True)["loss"]
        assert np.isfinite(loss)
    finally:
        set_precision(False)
    if not tf.config.list_physical_devices("GPU"):
        assert not set_precision(True)  # float16 is only slower on a CPU
        set_precision(False)
