import keras
import numpy as np
import pytest

from benchmarks.reference_densenet import transition_block
from keras_fusion import TransitionBlock
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.layer_test_case import float16_kernels_run
from tests.layer_test_case import make_inputs
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test
from tests.layer_test_case import skip_unless_channels_first_convolution_runs

LAYER_CASES = pytest.mark.parametrize(
    "input_shape, kwargs, expected",
    [
        ((2, 8, 8, 10), {}, (2, 4, 4, 5)),
        ((2, 9, 7), {"compression_ratio": 0.25}, (2, 4, 1)),
        ((1, 4, 6, 6, 6), {}, (1, 2, 3, 3, 3)),
        ((2, 10, 8, 8), {"data_format": "channels_first"}, (2, 5, 4, 4)),
    ],
    ids=["2d", "1d", "3d", "channels-first"],
)


@LAYER_CASES
def test_layer_checks(input_shape, kwargs, expected, tmp_path):
    if kwargs.get("data_format") == "channels_first":
        skip_unless_channels_first_convolution_runs(len(input_shape))
    run_layer_test(
        TransitionBlock,
        kwargs,
        input_shape,
        tmp_path,
        expected_num_trainable_weights=3,  # BN gamma, beta; conv kernel
        expected_num_non_trainable_weights=2,  # moving mean, variance
        expected_output_shape=expected,
        atol=1e-5,
        run_mixed_precision=float16_kernels_run(
            len(input_shape),
            kwargs.get("data_format", "channels_last"),
            pooling=True,
        ),
    )


@tensorflow_only
@LAYER_CASES
def test_saved_model_export(input_shape, kwargs, expected, tmp_path):
    if kwargs.get("data_format") == "channels_first":
        skip_unless_channels_first_convolution_runs(len(input_shape))
    run_export_test(TransitionBlock, kwargs, input_shape, tmp_path, atol=1e-5)


def test_matches_keras_applications_transition_block():
    inputs = keras.Input((8, 8, 10))
    reference = keras.Model(inputs, transition_block(inputs, 0.5, "pool2"))
    layer = TransitionBlock(0.5, name="pool2")
    layer.build((None, 8, 8, 10))
    layer.bn.set_weights(reference.get_layer("pool2_bn").get_weights())
    layer.conv.set_weights(reference.get_layer("pool2_conv").get_weights())
    data = make_inputs((3, 8, 8, 10), seed=1)
    for training in (False, True):
        np.testing.assert_allclose(
            to_numpy(layer(data, training=training)),
            to_numpy(reference(data, training=training)),
            rtol=1e-5,
            atol=1e-6,
        )


def test_output_channels_are_floor_of_compression():
    layer = TransitionBlock(compression_ratio=0.5)
    assert layer.compute_output_shape((None, 8, 8, 7)) == (None, 4, 4, 3)
    assert layer.compute_output_shape((None, None, 9, 7)) == (None, None, 4, 3)


@pytest.mark.parametrize("compression", [0, 1.5, "half", True])
def test_transition_block_errors_if_compression_is_invalid(compression):
    with pytest.raises(
        ValueError, match=r"`compression_ratio` should be a float in"
    ):
        TransitionBlock(compression_ratio=compression)


def test_transition_block_accepts_numpy_numbers():
    layer = TransitionBlock(
        np.float32(0.5),
        batch_norm_epsilon=np.float64(1e-3),
        batch_norm_momentum=np.float32(0.5),
    )
    config = layer.get_config()
    for name, value in {
        "compression_ratio": 0.5,
        "batch_norm_epsilon": 1e-3,
        "batch_norm_momentum": 0.5,
    }.items():
        assert config[name] == value and type(config[name]) is float
    assert tuple(layer(make_inputs((1, 4, 4, 6))).shape) == (1, 2, 2, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"batch_norm_epsilon": 0},
            "`batch_norm_epsilon` should be a positive float.*0",
        ),
        (
            {"batch_norm_epsilon": "small"},
            "`batch_norm_epsilon` should be a positive float",
        ),
        (
            {"batch_norm_momentum": 1.5},
            r"`batch_norm_momentum` should be a float in \[0, 1\].*1.5",
        ),
        (
            {"batch_norm_momentum": True},
            r"`batch_norm_momentum` should be a float in \[0, 1\]",
        ),
    ],
)
def test_transition_block_errors_if_batch_norm_argument_is_invalid(
    kwargs, message
):
    with pytest.raises(ValueError, match=message):
        TransitionBlock(**kwargs)


def test_transition_block_errors_if_channels_are_unknown():
    with pytest.raises(ValueError, match="channel dimension.*should be known"):
        TransitionBlock()(keras.Input((8, 8, None)))
