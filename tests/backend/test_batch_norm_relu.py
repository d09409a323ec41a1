"""The BatchNorm-ReLU that both recomputing kernels share, against
`keras.layers.BatchNormalization` followed by ReLU, differentiated by the
backend's own autodiff."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_fusion.backend import batch_norm_relu
from keras_fusion.backend.dense_block_spec import BatchNormSpec
from keras_fusion.backend.dense_block_spec import DenseLayerSpec
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.layer_test_case import make_inputs

SPEC = BatchNormSpec(epsilon=1.001e-5, synchronized=False)
AXES = pytest.mark.parametrize("axis", [3, 1], ids=["channels_last", "axis1"])


class _KerasBatchNormReLU(keras.layers.Layer):
    """The reference: Keras's own layer, then ReLU."""

    def __init__(self, axis, **kwargs):
        super().__init__(**kwargs)
        self.bn = keras.layers.BatchNormalization(
            axis=axis, epsilon=SPEC.epsilon, momentum=0.9
        )

    def build(self, input_shape):
        self.bn.build(input_shape)
        channels = input_shape[self.bn.axis]
        rng = np.random.default_rng(3)
        self.bn.gamma.assign(rng.uniform(0.5, 1.5, channels))
        self.bn.beta.assign(rng.uniform(-0.5, 0.5, channels))

    def call(self, x, training=None):
        return ops.relu(self.bn(x, training=training))


def _reference(axis, shape):
    layer = _KerasBatchNormReLU(axis)
    layer.build(shape)
    return layer


@AXES
def test_forward_is_keras_batch_normalization_bit_for_bit(axis):
    x = make_inputs((4, 5, 6, 7))
    reference = _reference(axis, x.shape)
    bn = reference.bn
    outputs, mean, variance = batch_norm_relu.batch_norm_relu(
        ops.convert_to_tensor(x), bn.gamma.value, bn.beta.value, axis, SPEC
    )
    np.testing.assert_array_equal(
        to_numpy(outputs), to_numpy(reference(x, training=True))
    )
    axes = tuple(a for a in range(4) if a != axis)
    np.testing.assert_allclose(to_numpy(mean), x.mean(axes), atol=1e-6)
    np.testing.assert_allclose(to_numpy(variance), x.var(axes), atol=1e-5)


@AXES
def test_recomputation_from_saved_statistics_is_bit_for_bit(axis):
    x = ops.convert_to_tensor(make_inputs((4, 5, 6, 7), seed=1))
    bn = _reference(axis, x.shape).bn
    gamma, beta = bn.gamma.value, bn.beta.value
    outputs, mean, variance = batch_norm_relu.batch_norm_relu(
        x, gamma, beta, axis, SPEC
    )
    again = batch_norm_relu.recompute_batch_norm_relu(
        x, gamma, beta, mean, variance, axis, SPEC
    )
    np.testing.assert_array_equal(to_numpy(again), to_numpy(outputs))


@AXES
def test_analytic_gradient_matches_autodiff_of_keras_layer(axis):
    x = make_inputs((4, 5, 6, 7), seed=2)
    reference = _reference(axis, x.shape)
    _, (d_x, d_gamma, d_beta) = value_and_grads(reference, x)

    bn = reference.bn
    x = ops.convert_to_tensor(x)
    outputs, mean, variance = batch_norm_relu.batch_norm_relu(
        x, bn.gamma.value, bn.beta.value, axis, SPEC
    )
    # d(sum(y sin y))/dy, the gradient `value_and_grads`' loss sends back.
    d_outputs = ops.sin(outputs) + outputs * ops.cos(outputs)
    d_y = batch_norm_relu.relu_gradient(d_outputs, outputs)
    ours = batch_norm_relu.batch_norm_gradient(
        d_y, x, bn.gamma.value, mean, variance, axis, SPEC
    )
    for mine, expected in zip(ours, (d_x, d_gamma, d_beta), strict=True):
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(
            to_numpy(mine), expected, rtol=1e-5, atol=1e-5 * scale
        )


def test_moving_statistics_update_is_keras_formula():
    x = make_inputs((4, 5, 6, 7), seed=4)
    reference = _reference(3, x.shape)
    ours = _reference(3, x.shape)
    reference(x, training=True)
    _, mean, variance = batch_norm_relu.batch_norm_relu(
        ops.convert_to_tensor(x),
        ours.bn.gamma.value,
        ours.bn.beta.value,
        3,
        SPEC,
    )
    batch_norm_relu.update_moving_statistics(
        ours.bn.moving_mean, ours.bn.moving_variance, mean, variance, 0.9
    )
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_array_equal(
            to_numpy(getattr(ours.bn, name)),
            to_numpy(getattr(reference.bn, name)),
        )


@pytest.mark.parametrize("bottleneck", [True, False])
def test_layer_spec_weights_round_trip(bottleneck):
    names = ["gamma0", "beta0", "kernel1", "gamma1", "beta1", "kernel2"]
    values = {n: np.full((1, 1, 2, 3), i) for i, n in enumerate(names)}
    if not bottleneck:
        values.update(kernel1=None, gamma1=None, beta1=None)
    spec = DenseLayerSpec(**values)
    weights = spec.weights()
    assert len(weights) == (6 if bottleneck else 3)
    assert spec.has_bottleneck is bottleneck
    assert spec.num_batch_norms == (2 if bottleneck else 1)
    assert spec.growth_rate == 3
    doubled = spec.with_weights([w * 2 for w in weights])
    for name in names:
        if values[name] is None:
            assert getattr(doubled, name) is None
        else:
            np.testing.assert_array_equal(
                getattr(doubled, name), values[name] * 2
            )


@tensorflow_only(
    "tests the TensorFlow kernel's one-op BatchNorm gradient "
    "(FusedBatchNormGradV3)"
)
@pytest.mark.parametrize(
    "shape", [(4, 9, 7), (4, 5, 6, 7), (2, 3, 4, 5, 7)], ids=["1d", "2d", "3d"]
)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tensorflow_fused_gradient_equals_batch_norm_gradient(shape, dtype):
    # The TensorFlow kernel's one-op BatchNorm gradient (FusedBatchNormGradV3)
    # against the element-wise `batch_norm_gradient`, on the same batch
    # statistics; the CPU kernel is Eigen's or oneDNN's, as the machine has.
    import tensorflow as tf

    from keras_fusion.backend import tensorflow_ops

    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal(shape) * 3 + 1, dtype)
    d_y = tf.constant(rng.standard_normal(shape), dtype)
    gamma = tf.constant(rng.uniform(0.5, 1.5, shape[-1]), "float32")
    axis = len(shape) - 1
    _, mean, variance = batch_norm_relu.batch_norm_relu(
        x, gamma, tf.zeros_like(gamma), axis, SPEC
    )
    assert tensorflow_ops.fused_batch_norm_gradient_applies(x, SPEC, None) == (
        not tf.config.list_logical_devices("GPU")
    )
    fused = tensorflow_ops.fused_batch_norm_gradient(
        d_y, x, gamma, mean, variance, SPEC.epsilon
    )
    expected = batch_norm_relu.batch_norm_gradient(
        d_y, x, gamma, mean, variance, axis, SPEC
    )
    assert fused[0].dtype == x.dtype
    tolerance = 1e-6 if dtype == "float32" else 1e-3
    for mine, reference in zip(fused, expected, strict=True):
        reference = to_numpy(reference).astype("float64")
        scale = np.max(np.abs(reference))
        np.testing.assert_allclose(
            to_numpy(mine).astype("float64"),
            reference,
            rtol=tolerance,
            atol=tolerance * scale,
        )
