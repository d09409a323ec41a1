import re

import keras
import numpy as np
import pytest

from keras_fusion import TransitionBlock
from keras_fusion._tools.reference_densenet import transition_block
from tests.backend_utils import BACKEND
from tests.backend_utils import TF_KERNEL
from tests.backend_utils import compiled_models
from tests.backend_utils import fit_losses
from tests.backend_utils import record_recomputations
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
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
        ((2, 8, 8, 10), {}, (2, 4, 4, 5)),
        ((2, 9, 7), {"compression_ratio": 0.25}, (2, 4, 1)),
        ((1, 4, 6, 6, 6), {}, (1, 2, 3, 3, 3)),
        ((2, 10, 8, 8), {"data_format": "channels_first"}, (2, 5, 4, 4)),
        ((2, 8, 8, 10), {"recompute": True}, (2, 4, 4, 5)),
        ((2, 9, 7), {"recompute": True}, (2, 4, 3)),
        ((1, 4, 6, 6, 6), {"recompute": True}, (1, 2, 3, 3, 3)),
        (
            (2, 10, 8, 8),
            {"data_format": "channels_first", "recompute": True},
            (2, 5, 4, 4),
        ),
    ],
    ids=[
        "2d",
        "1d",
        "3d",
        "channels-first",
        "2d-recompute",
        "1d-recompute",
        "3d-recompute",
        "channels-first-recompute",
    ],
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
        float16_kernels_missing=missing_float16_kernels(
            len(input_shape),
            kwargs.get("data_format", "channels_last"),
            pooling=True,
        ),
    )


@EXPORT_FORMATS
@LAYER_CASES
def test_export(export_format, input_shape, kwargs, expected, tmp_path):
    if kwargs.get("data_format") == "channels_first":
        skip_unless_channels_first_convolution_runs(len(input_shape))
    run_export_test(
        TransitionBlock,
        kwargs,
        input_shape,
        tmp_path,
        atol=1e-5,
        export_format=export_format,
        fails_with=export_limit(
            export_format, rank=len(input_shape), avg_pooling=True
        ),
    )


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
            "`batch_norm_epsilon` should be a positive, finite float.*0",
        ),
        (
            {"batch_norm_epsilon": "small"},
            "`batch_norm_epsilon` should be a positive, finite float",
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


def _pair(input_shape, **kwargs):
    """A plain transition and a recomputing one with the same weights,
    BatchNorm weights and statistics made random so that every term of the
    gradients matters."""
    plain = TransitionBlock(recompute=False, **kwargs)
    ours = TransitionBlock(recompute=True, **kwargs)
    plain.build(input_shape)
    ours.build(input_shape)
    rng = np.random.default_rng(3)
    channels = plain.bn.gamma.shape[0]
    plain.bn.gamma.assign(rng.uniform(0.5, 1.5, channels))
    plain.bn.beta.assign(rng.normal(0.0, 0.5, channels))
    ours.set_weights(plain.get_weights())
    return plain, ours


def _assert_close_relative(actual, expected, rtol):
    """Agreement to `rtol` relative to the tensor's scale."""
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _moving_statistics(layer):
    return [to_numpy(layer.bn.moving_mean), to_numpy(layer.bn.moving_variance)]


@pytest.mark.parametrize(
    "input_shape, data_format, dtype, rtol",
    [
        ((3, 8, 8, 10), "channels_last", "float32", 1e-5),
        ((3, 7, 9, 10), "channels_last", "float32", 1e-5),
        ((3, 10, 8, 8), "channels_first", "float32", 1e-5),
        ((3, 9, 10), "channels_last", "float32", 1e-5),
        ((2, 4, 5, 6, 6), "channels_last", "float32", 1e-5),
        ((3, 8, 8, 10), "channels_last", "float64", 1e-10),
    ],
    ids=["2d", "2d-odd-sizes", "channels-first", "1d", "3d", "float64"],
)
def test_recompute_outputs_and_gradients_equal_the_plain_block(
    input_shape, data_format, dtype, rtol
):
    if dtype == "float64" and BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX computes in float32 unless jax_enable_x64 is set")
    plain, ours = _pair(input_shape, data_format=data_format, dtype=dtype)
    x = make_inputs(input_shape, seed=2, dtype=dtype)
    y_ours, g_ours = value_and_grads(ours, x)
    if data_format == "channels_first":
        # The reference is the plain block in channels_last on the
        # transposed input (the kernel and BatchNorm weights have the same
        # layout in both): the same function, and one that runs where
        # TensorFlow has no NCHW convolution (CPUs without oneDNN).
        x = np.moveaxis(x, 1, -1)
        plain = TransitionBlock(recompute=False)
        plain.build(x.shape)
        plain.set_weights(ours.get_weights())
        y_plain, g_plain = value_and_grads(plain, x)
        y_plain = np.moveaxis(y_plain, -1, 1)
        g_plain[0] = np.moveaxis(g_plain[0], -1, 1)
    else:
        y_plain, g_plain = value_and_grads(plain, x)
    assert y_ours.dtype == y_plain.dtype == np.dtype(dtype)
    _assert_close_relative(y_ours, y_plain, rtol)
    # The input's, gamma's, beta's and the kernel's.
    assert len(g_ours) == len(g_plain) == 4
    for mine, reference in zip(g_ours, g_plain, strict=True):
        assert mine.dtype == np.dtype(dtype)
        _assert_close_relative(mine, reference, rtol)


def test_recompute_under_mixed_precision_matches_the_plain_block():
    skip_unless_float16_kernels_run(4, "channels_last", pooling=True)
    input_shape = (4, 8, 8, 12)
    plain, ours = _pair(input_shape, dtype="mixed_float16")
    x = make_inputs(input_shape, seed=4)
    y_plain, g_plain = value_and_grads(plain, x)
    y_ours, g_ours = value_and_grads(ours, x)
    assert y_ours.dtype == y_plain.dtype == np.dtype("float16")
    # The forward pass runs the plain block's ops on the same values.
    np.testing.assert_array_equal(y_ours, y_plain)
    # BatchNorm's gradient is summed in another order, in float32, before
    # the cast to float16: a float16 rounding apart.
    for mine, reference in zip(g_ours, g_plain, strict=True):
        assert mine.dtype == reference.dtype
        _assert_close_relative(mine, reference, 2e-3)
    for mine, reference in zip(
        _moving_statistics(ours), _moving_statistics(plain), strict=True
    ):
        assert mine.dtype == np.dtype("float32")
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)


def test_recompute_updates_moving_statistics_once_per_step():
    input_shape = (4, 6, 6, 8)
    layer = TransitionBlock(recompute=True, batch_norm_momentum=0.9)
    x = make_inputs(input_shape, seed=5)
    value_and_grads(layer, x)
    # Keras's update, once: moving = momentum * moving + (1 - momentum) *
    # batch statistic, from the initial mean 0 and variance 1 (a second
    # update would give 0.81 * initial + 0.19 * batch statistic).
    axes = (0, 1, 2)
    expected_mean = 0.9 * 0.0 + 0.1 * x.mean(axis=axes)
    expected_variance = 0.9 * 1.0 + 0.1 * x.var(axis=axes)
    mean, variance = _moving_statistics(layer)
    np.testing.assert_allclose(mean, expected_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(variance, expected_variance, rtol=0, atol=1e-6)


def test_recompute_moving_statistics_follow_the_plain_block_over_steps():
    # Both layers take the plain layer's SGD update each step, so that
    # their weights stay equal and the statistics compared depend only on
    # how each layer updates them.
    input_shape = (4, 6, 6, 8)
    plain, ours = _pair(input_shape)
    optimizer = keras.optimizers.SGD(0.1)
    for step in range(3):
        x = make_inputs(input_shape, seed=10 + step)
        _, grads = value_and_grads(plain, x)
        value_and_grads(ours, x)
        for mine, reference in zip(
            _moving_statistics(ours), _moving_statistics(plain), strict=True
        ):
            np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)
        optimizer.apply(
            [keras.ops.convert_to_tensor(g) for g in grads[1:]],
            plain.trainable_variables,
        )
        for mine, reference in zip(
            ours.trainable_variables, plain.trainable_variables, strict=True
        ):
            mine.assign(reference)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "jit"])
def test_recompute_fit_matches_the_plain_block(jit_compile):
    input_shape = (8, 6, 6, 8)
    x = make_inputs(input_shape, seed=6)
    target = make_inputs((8, 3, 3, 4), seed=7)
    models = compiled_models(_pair(input_shape), input_shape[1:], jit_compile)
    losses = fit_losses(models, x, target, batch_size=4)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for mine, reference in zip(
        models[1].weights, models[0].weights, strict=True
    ):
        np.testing.assert_allclose(
            to_numpy(mine), to_numpy(reference), rtol=1e-5, atol=1e-6
        )


@tensorflow_only(TF_KERNEL)
def test_recompute_backward_pass_recomputes_batch_norm_relu(monkeypatch):
    # Observed from outside: the kernel's recomputation goes through the
    # shared function, counted here by a wrapper.
    recomputed = record_recomputations(monkeypatch)
    _, ours = _pair((2, 6, 6, 8))
    x = make_inputs((2, 6, 6, 8), seed=8)
    ours(x, training=True)
    ours(x, training=False)
    assert recomputed == []
    value_and_grads(ours, x)
    assert recomputed == [(2, 6, 6, 8)]


@pytest.mark.backends(
    "jax",
    "torch",
    reason="counts what autodiff keeps: JAX's residuals, PyTorch's saved "
    "tensors and checkpoint inputs",
)
def test_recompute_keeps_nothing_but_the_arguments():
    from keras_fusion._tools.residuals import saved_activation_bytes
    from keras_fusion._tools.residuals import saved_residual_bytes

    x = make_inputs((2, 8, 8, 12))
    plain, ours = _pair(x.shape)
    # The plain block keeps BatchNorm's and the ReLU's outputs (more than
    # the input's size again); ours only its arguments, the input and the
    # weights, which exist anyway.
    assert saved_residual_bytes(plain, x) > x.nbytes
    assert saved_activation_bytes(ours, x) == 0


@pytest.mark.parametrize("frozen", ["layer", "batch_norm"])
def test_recompute_with_frozen_batch_norm_runs_the_plain_block(frozen):
    # A frozen BatchNorm normalizes with its moving statistics, as the
    # plain layers do, and updates nothing.
    plain, ours = _pair((2, 6, 6, 8))
    for layer in (plain, ours):
        if frozen == "layer":
            layer.trainable = False
        else:
            layer.bn.trainable = False
    x = make_inputs((2, 6, 6, 8), seed=9)
    np.testing.assert_array_equal(
        to_numpy(ours(x, training=True)), to_numpy(plain(x, training=True))
    )
    np.testing.assert_array_equal(
        to_numpy(ours(x, training=True)), to_numpy(ours(x, training=False))
    )
    mean, variance = _moving_statistics(ours)
    np.testing.assert_array_equal(mean, np.zeros_like(mean))
    np.testing.assert_array_equal(variance, np.ones_like(variance))


def test_recompute_round_trips_through_config():
    layer = TransitionBlock(compression_ratio=0.25, recompute=True)
    config = layer.get_config()
    assert config["recompute"] is True
    revived = TransitionBlock.from_config(config)
    assert revived.recompute is True
    assert TransitionBlock().get_config()["recompute"] is False


@pytest.mark.parametrize("recompute", ["full", 1, None, np.bool_(True)])
def test_transition_block_errors_if_recompute_is_not_a_bool(recompute):
    with pytest.raises(
        TypeError,
        match=f"`recompute` should be a bool. Received: recompute="
        f"{re.escape(repr(recompute))}",
    ):
        TransitionBlock(recompute=recompute)


@pytest.mark.backends(
    "tensorflow", reason="Keras converts to LiteRT through TensorFlow"
)
def test_litert_builtin_ops_export_names_the_layer_and_the_op(tmp_path):
    # LiteRT has no 3-D average pooling. Keras's converter settings keep it
    # as a TensorFlow op (which needs the Flex delegate: `test_export`);
    # asked for LiteRT's builtin ops only, the export itself fails and
    # says which layer and op.
    import tensorflow as tf

    inputs = keras.Input((None, None, None, 8))
    model = keras.Model(inputs, TransitionBlock(name="transition3d")(inputs))
    with pytest.raises(
        Exception, match=r"transition3d(_\d+)?/\w+/AvgPool3D"
    ) as info:
        model.export(
            str(tmp_path / "model.tflite"),
            format="litert",
            verbose=False,
            target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
        )
    assert type(info.value).__name__ == "ConverterError"
    assert "'tf.AvgPool3D' op is neither a custom op nor a flex op" in str(
        info.value
    )
