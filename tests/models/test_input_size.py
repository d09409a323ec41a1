"""Every model builder refuses an input smaller than its model takes.

A model with `None` spatial sizes checks them when it runs, on every
backend and in every exported format: an image too small for its poolings
and valid convolutions used to give an empty map, NaNs or values of
uninitialised memory (which of these depended on the CPU and on oneDNN).
The smallest sizes are the models' arithmetic: a U-Net's
`unet_level_sizes`, two or four 2x2 poolings, keras.applications' 32.
"""

import re

import keras
import numpy as np
import pytest

from keras_fusion.models import DenseNet121
from keras_fusion.models import DenseNetBC
from keras_fusion.models import FCDenseNet
from keras_fusion.models import UNet
from keras_fusion.models import unet_level_sizes
from tests.backend_utils import TF_RUN_TIME_SIZES
from tests.backend_utils import tensorflow_only
from tests.layer_test_case import check_export
from tests.layer_test_case import serve

# (builder, its smallest spatial size, channels, model name in the error)
BUILDERS = {
    "unet_1_level": (
        lambda shape: UNet(input_shape=shape, num_levels=1, filters=2),
        18,
        1,
        "UNet",
    ),
    "unet_2_levels": (
        lambda shape: UNet(input_shape=shape, num_levels=2, filters=2),
        44,
        1,
        "UNet",
    ),
    "densenet_bc": (
        lambda shape: DenseNetBC(depth=10, growth_rate=2, input_shape=shape),
        4,
        3,
        "DenseNetBC",
    ),
    "fc_densenet": (
        lambda shape: FCDenseNet(
            blocks=(1, 1, 1, 1, 1), growth_rate=2, filters=4, input_shape=shape
        ),
        4,
        3,
        "FCDenseNet",
    ),
    "densenet121": (
        lambda shape: DenseNet121(weights=None, input_shape=shape),
        32,
        3,
        "DenseNet",
    ),
}
# The slow one (a DenseNet-121) only where a case needs a model per run.
FAST = [name for name in BUILDERS if name != "densenet121"]


def _images(size, channels, batch=1, width=None):
    rng = np.random.default_rng(size)
    shape = (batch, size, size if width is None else width, channels)
    return rng.random(shape, dtype="float32")


def _too_small(name, size, width=None):
    _, _, channels, model_name = BUILDERS[name]
    shape = (1, size, size if width is None else width, channels)
    return f"`{model_name}` needs inputs with spatial sizes of at least.*" + (
        re.escape(f"Received: an input of shape {shape}")
    )


@pytest.mark.parametrize("num_levels", [1, 2, 3, 4])
def test_unet_smallest_size_is_the_first_that_keeps_a_pixel(num_levels):
    # unet_level_sizes at the smallest size, and one below: a reference
    # independent of the model (the paper's arithmetic).
    smallest = {1: 18, 2: 44, 3: 92, 4: 188}[num_levels]
    below = unet_level_sizes(smallest - 1, num_levels)
    assert len(below["encoder"]) < num_levels or below["output"] < 1
    assert unet_level_sizes(smallest, num_levels)["output"] >= 1
    UNet(input_shape=(smallest, smallest, 1), num_levels=num_levels, filters=1)
    with pytest.raises(ValueError, match=f"the smallest is {smallest}"):
        UNet(
            input_shape=(smallest - 1, smallest + 9, 1),
            num_levels=num_levels,
            filters=1,
        )


@pytest.mark.parametrize("name", list(BUILDERS))
def test_static_sizes_below_the_smallest_are_refused_when_built(name):
    build, smallest, channels, _ = BUILDERS[name]
    with pytest.raises(ValueError, match=r"`input_shape`.*" + str(smallest)):
        build((smallest + 3, smallest - 1, channels))


@pytest.mark.parametrize("name", FAST)
def test_none_sizes_run_at_the_smallest_and_refuse_one_less(name):
    build, smallest, channels, _ = BUILDERS[name]
    model = build((None, None, channels))
    output = model.predict(_images(smallest, channels, 2), verbose=0)
    assert np.all(np.isfinite(output))
    assert output.size > 0
    # Eager, under jax.jit (predict traces each shape statically) and on
    # PyTorch the sizes are ints when the check runs; on TensorFlow
    # `predict` retraces with `None` sizes for a second shape.
    error = ValueError
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        error = tf.errors.InvalidArgumentError
    with pytest.raises(error, match=_too_small(name, smallest, smallest - 1)):
        model.predict(_images(smallest, channels, 1, smallest - 1), verbose=0)
    with pytest.raises(ValueError, match=_too_small(name, smallest - 1)):
        model(_images(smallest - 1, channels))


@tensorflow_only(TF_RUN_TIME_SIZES)
@pytest.mark.parametrize("name", FAST)
def test_none_sizes_are_checked_under_xla(name):
    build, smallest, channels, _ = BUILDERS[name]
    model = build((None, None, channels))
    model.compile(jit_compile=True)
    model.predict(_images(smallest + 1, channels), verbose=0)
    import tensorflow as tf

    with pytest.raises(
        tf.errors.InvalidArgumentError, match="input_size_check_size"
    ):
        model.predict(_images(smallest - 1, channels), verbose=0)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_densenet121_checks_none_sizes_in_a_tf_function():
    import tensorflow as tf

    model = DenseNet121(weights=None, input_shape=(None, None, 3))
    predict = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
    )
    assert predict(_images(32, 3)).shape == (1, 1000)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=_too_small("densenet121", 31)
    ):
        predict(_images(31, 3))


# The converters drop TensorFlow's `Assert`: the reshape of the input to
# its sizes raised to the minimum has too many elements for a small input.
EXPORTED_TOO_SMALL = {
    "tf_saved_model": "needs inputs with spatial sizes of at least",
    "litert": "(?i)reshape",
    "onnx": "Reshape node.*input_size_check_size",
}


@tensorflow_only(TF_RUN_TIME_SIZES)
@pytest.mark.parametrize("export_format", sorted(EXPORTED_TOO_SMALL))
def test_exported_model_refuses_a_small_input(export_format, tmp_path):
    model = DenseNetBC(depth=10, growth_rate=2, input_shape=(None, None, 3))
    valid = _images(4, 3)
    path = check_export(
        model,
        [(valid, model.predict(valid, verbose=0))],
        tmp_path,
        1e-5,
        export_format,
    )
    for small in (_images(3, 3), _images(8, 3, width=2)):
        with pytest.raises(
            RuntimeError, match=f"(?s){EXPORTED_TOO_SMALL[export_format]}"
        ):
            serve(path, small)


@pytest.mark.backends("jax", reason="jax.export traces None sizes as symbols")
def test_jax_export_of_none_sizes_says_to_fix_them(tmp_path):
    model = DenseNetBC(depth=10, growth_rate=2, input_shape=(None, None, 3))
    model(_images(8, 3))
    with pytest.raises(ValueError, match="input_signature"):
        model.export(str(tmp_path / "model.onnx"), format="onnx", verbose=False)


def test_input_size_check_round_trips_through_a_keras_file(tmp_path):
    model = DenseNetBC(depth=10, growth_rate=2, input_shape=(None, None, 3))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(_images(5, 3), verbose=0),
        model.predict(_images(5, 3), verbose=0),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match=_too_small("densenet_bc", 3)):
        loaded(_images(3, 3))
