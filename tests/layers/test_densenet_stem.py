"""The DenseNet builders' private stem (`conv1`, for every `recompute`):
BatchNorm -> ReLU -> zero padding -> max pooling, recomputing or not, with
or without the ReLU's output beside the pooled one, against the plain Keras
layers of `keras.applications.densenet`."""

import keras
import numpy as np
import pytest

from keras_fusion.layers._densenet_stem import DenseNetStem
from tests.backend_utils import TF_KERNEL
from tests.backend_utils import record_recomputations
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.backend_utils import weighted_loss
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import export_limit
from tests.layer_test_case import make_inputs
from tests.layer_test_case import missing_float16_kernels
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test
from tests.layer_test_case import skip_unless_channels_first_convolution_runs
from tests.layer_test_case import skip_unless_float16_kernels_run

LAYER_CASES = pytest.mark.parametrize(
    "input_shape, kwargs, expected",
    [
        ((2, 9, 8, 6), {}, (2, 5, 4, 6)),
        ((2, 6, 9, 8), {"data_format": "channels_first"}, (2, 6, 5, 4)),
    ],
    ids=["channels-last", "channels-first"],
)


@LAYER_CASES
def test_layer_checks(input_shape, kwargs, expected, tmp_path):
    data_format = kwargs.get("data_format", "channels_last")
    if data_format == "channels_first":
        skip_unless_channels_first_convolution_runs()
    run_layer_test(
        DenseNetStem,
        kwargs,
        input_shape,
        tmp_path,
        expected_num_trainable_weights=2,  # BN gamma, beta
        expected_num_non_trainable_weights=2,  # moving mean, variance
        expected_output_shape=expected,
        atol=1e-5,
        float16_kernels_missing=missing_float16_kernels(4, data_format),
    )


@EXPORT_FORMATS
@LAYER_CASES
def test_export(export_format, input_shape, kwargs, expected, tmp_path):
    if kwargs.get("data_format") == "channels_first":
        skip_unless_channels_first_convolution_runs()
    run_export_test(
        DenseNetStem,
        kwargs,
        input_shape,
        tmp_path,
        atol=1e-5,
        export_format=export_format,
        fails_with=export_limit(export_format, max_pooling=True),
    )


def _keras_applications_stem(input_shape, dtype=None, features=False):
    """`conv1_bn`, `conv1_relu`, the padding and `pool1`, as
    `keras.applications.densenet` builds them, in channels_last; with
    `features`, the outputs are `[pool1's, conv1_relu's]`."""
    inputs = keras.Input(input_shape[1:])
    x = keras.layers.BatchNormalization(
        epsilon=1.001e-5, name="conv1_bn", dtype=dtype
    )(inputs)
    relu = keras.layers.Activation("relu", name="conv1_relu", dtype=dtype)(x)
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), dtype=dtype)(relu)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1", dtype=dtype)(x)
    return keras.Model(inputs, [x, relu] if features else x)


def _pair(input_shape, data_format="channels_last", dtype=None, **kwargs):
    """The plain layers (channels_last) and our stem (built with `kwargs`)
    with the same weights: random BatchNorm weights and statistics, so
    that every term counts."""
    reference_shape = input_shape
    if data_format == "channels_first":
        reference_shape = (input_shape[0], *input_shape[2:], input_shape[1])
    plain = _keras_applications_stem(
        reference_shape, dtype, kwargs.get("return_features", False)
    )
    ours = DenseNetStem(data_format=data_format, dtype=dtype, **kwargs)
    ours.build(input_shape)
    rng = np.random.default_rng(3)
    channels = reference_shape[-1]
    weights = [
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0.0, 0.5, channels),
        rng.normal(0.0, 0.1, channels),
        rng.uniform(0.5, 1.5, channels),
    ]
    weights = [w.astype("float32") for w in weights]
    plain.set_weights(weights)
    ours.set_weights(weights)
    return plain, ours


def _assert_close_relative(actual, expected, rtol):
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _moving_statistics(model_or_stem):
    return [
        to_numpy(v)
        for v in model_or_stem.non_trainable_variables
        if "moving" in v.path
    ]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_training_step_equals_keras_applications_stem(data_format):
    input_shape = (3, 11, 10, 6)
    if data_format == "channels_first":
        input_shape = (3, 6, 11, 10)
    plain, ours = _pair(input_shape, data_format)
    x = make_inputs(input_shape, seed=2)
    y_ours, g_ours = value_and_grads(ours, x)
    if data_format == "channels_first":
        # The plain layers in channels_last on the transposed input: the
        # same function, one that runs on every CPU.
        y_plain, g_plain = value_and_grads(plain, np.moveaxis(x, 1, -1))
        y_plain = np.moveaxis(y_plain, -1, 1)
        g_plain[0] = np.moveaxis(g_plain[0], -1, 1)
    else:
        y_plain, g_plain = value_and_grads(plain, x)
    _assert_close_relative(y_ours, y_plain, 1e-5)
    assert len(g_ours) == len(g_plain) == 3  # the input's, gamma's, beta's
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)
    for mine, reference in zip(
        _moving_statistics(ours), _moving_statistics(plain), strict=True
    ):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)


def test_inference_equals_keras_applications_stem():
    plain, ours = _pair((2, 9, 9, 4))
    x = make_inputs((2, 9, 9, 4), seed=3)
    np.testing.assert_array_equal(
        to_numpy(ours(x, training=False)), to_numpy(plain(x, training=False))
    )


def _pooled_and_features_loss(outputs):
    pooled, features = outputs
    return weighted_loss(pooled) + weighted_loss(features)


@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "plain"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_training_step_with_features_equals_keras_applications_stem(
    data_format, recompute
):
    # Both outputs, and the gradients of a loss that uses both: the
    # features' gradient joins the pooling's before BatchNorm-ReLU's.
    input_shape = (3, 11, 10, 6)
    if data_format == "channels_first":
        input_shape = (3, 6, 11, 10)
    plain, ours = _pair(
        input_shape, data_format, recompute=recompute, return_features=True
    )
    x = make_inputs(input_shape, seed=2)
    y_ours, g_ours = value_and_grads(ours, x, _pooled_and_features_loss)
    if data_format == "channels_first":
        y_plain, g_plain = value_and_grads(
            plain, np.moveaxis(x, 1, -1), _pooled_and_features_loss
        )
        y_plain = [np.moveaxis(y, -1, 1) for y in y_plain]
        g_plain[0] = np.moveaxis(g_plain[0], -1, 1)
    else:
        y_plain, g_plain = value_and_grads(plain, x, _pooled_and_features_loss)
    assert len(y_ours) == len(y_plain) == 2
    for mine, reference in zip(y_ours, y_plain, strict=True):
        assert mine.shape == reference.shape
        _assert_close_relative(mine, reference, 1e-5)
    assert len(g_ours) == len(g_plain) == 3  # the input's, gamma's, beta's
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)
    for mine, reference in zip(
        _moving_statistics(ours), _moving_statistics(plain), strict=True
    ):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "plain"])
def test_inference_with_features_equals_keras_applications_stem(recompute):
    plain, ours = _pair((2, 9, 9, 4), recompute=recompute, return_features=True)
    x = make_inputs((2, 9, 9, 4), seed=3)
    for mine, reference in zip(
        ours(x, training=False), plain(x, training=False), strict=True
    ):
        np.testing.assert_array_equal(to_numpy(mine), to_numpy(reference))


def test_features_are_a_second_symbolic_output():
    stem = DenseNetStem(return_features=True)
    pooled, features = stem(keras.Input((9, 8, 6)))
    assert pooled.shape == (None, 5, 4, 6)
    assert features.shape == (None, 9, 8, 6)
    assert stem.compute_output_shape((2, 9, 8, 6)) == [
        (2, 5, 4, 6),
        (2, 9, 8, 6),
    ]


def test_configs_without_recompute_and_features_keep_their_meaning():
    # `.keras` files saved before these arguments existed hold the
    # recomputing stem with one output.
    config = DenseNetStem(recompute=False, return_features=True).get_config()
    assert config["recompute"] is False and config["return_features"] is True
    del config["recompute"], config["return_features"]
    stem = DenseNetStem.from_config(config)
    assert stem.recompute is True and stem.return_features is False


@pytest.mark.parametrize("argument", ["recompute", "return_features"])
def test_densenet_stem_errors_if_flags_are_not_bools(argument):
    with pytest.raises(TypeError, match=f"`{argument}` should be a bool"):
        DenseNetStem(**{argument: "full"})


def test_mixed_precision_training_step_matches_keras_applications_stem():
    skip_unless_float16_kernels_run(4, "channels_last")
    plain, ours = _pair((4, 9, 9, 8), dtype="mixed_float16")
    x = make_inputs((4, 9, 9, 8), seed=4)
    y_plain, g_plain = value_and_grads(plain, x)
    y_ours, g_ours = value_and_grads(ours, x)
    assert y_ours.dtype == y_plain.dtype == np.dtype("float16")
    np.testing.assert_array_equal(y_ours, y_plain)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 2e-3)
    for variable in ours.bn.non_trainable_variables:
        assert variable.dtype == "float32"


def test_moving_statistics_update_once_per_step():
    stem = DenseNetStem(batch_norm_momentum=0.9)
    x = make_inputs((4, 7, 7, 5), seed=5)
    value_and_grads(stem, x)
    # One update of Keras's formula from the initial mean 0, variance 1.
    mean, variance = _moving_statistics(stem)
    np.testing.assert_allclose(
        mean, 0.1 * x.mean(axis=(0, 1, 2)), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        variance, 0.9 + 0.1 * x.var(axis=(0, 1, 2)), rtol=0, atol=1e-6
    )


@tensorflow_only(TF_KERNEL)
@pytest.mark.parametrize(
    "return_features", [False, True], ids=["pooled", "features"]
)
def test_backward_pass_recomputes_batch_norm_relu(monkeypatch, return_features):
    recomputed = record_recomputations(monkeypatch)
    _, ours = _pair((2, 8, 8, 4), return_features=return_features)
    x = make_inputs((2, 8, 8, 4), seed=6)
    ours(x, training=True)
    assert recomputed == []
    loss = _pooled_and_features_loss if return_features else weighted_loss
    value_and_grads(ours, x, loss)
    assert recomputed == [(2, 8, 8, 4)]


class _PooledOnly(keras.layers.Layer):
    """A stem with `return_features=True` whose features go unused, as in
    a DenseNet classifier's training step."""

    def __init__(self, stem, **kwargs):
        super().__init__(**kwargs)
        self.stem = stem

    def call(self, inputs, training=None):
        return self.stem(inputs, training=training)[0]


@pytest.mark.backends(
    "jax",
    "torch",
    reason="counts what autodiff keeps: JAX's residuals, PyTorch's saved "
    "tensors and checkpoint inputs",
)
@pytest.mark.parametrize(
    "return_features", [False, True], ids=["pooled", "features-unused"]
)
def test_keeps_nothing_but_the_arguments(return_features):
    from keras_fusion._tools.residuals import saved_activation_bytes
    from keras_fusion._tools.residuals import saved_residual_bytes

    plain, ours = _pair((2, 8, 8, 6), return_features=return_features)
    if return_features:
        plain = keras.Model(plain.input, plain.output[0])
        ours = _PooledOnly(ours)
    x = make_inputs((2, 8, 8, 6))
    assert saved_residual_bytes(plain, x) > x.nbytes
    assert saved_activation_bytes(ours, x) == 0


def test_densenet_stem_errors_if_input_is_not_2d():
    with pytest.raises(ValueError, match="expects a 2D feature map of rank 4"):
        DenseNetStem()(keras.Input((8, 4)))
