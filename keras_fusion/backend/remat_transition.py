"""Training steps of DenseNet's transition and stem that recompute, for JAX
and PyTorch.

TensorFlow has its own kernels (`tensorflow_transition.py`, which says what
they keep and why); these are `keras.ops` plus `keras.remat`
(`jax.checkpoint` under JAX, `torch.utils.checkpoint` under PyTorch)
around a pure function of the input and the weights that returns the
output and BatchNorm's batch statistics. Only the function's arguments are
kept for the backward pass; the moving statistics are updated from the
returned statistics outside it, once per step (`keras.remat` around the
Keras layers would update them inside, and again in the recomputation).
JAX recomputes only what the gradients need: BatchNorm and ReLU, not the
transition's convolution.

The ops are those of `keras.layers.BatchNormalization`, `Conv*D`,
`ZeroPadding2D` and the pooling layers, on the same values, so outputs,
statistics and gradients are the plain layers'; the tests check it.
"""

import keras
from keras import ops

from keras_fusion._internal.checks import channel_axis
from keras_fusion.backend import batch_norm_relu


def recomputing_transition(
    inputs, gamma, beta, kernel, batch_norm, data_format
):
    """BatchNorm -> ReLU -> 1x1 convolution -> 2x2 average pooling with
    stride 2, in training mode.

    Args:
        inputs: a 3D, 4D or 5D feature map, in the compute dtype.
        gamma, beta: BatchNorm's scale and offset.
        kernel: the 1x1 convolution's kernel, in the compute dtype.
        batch_norm: a `BatchNormSpec` (epsilon, synchronized).
        data_format: `"channels_last"` or `"channels_first"`.

    Returns:
        `(outputs, (mean, variance))`: the pooled feature map and
        BatchNorm's batch statistics, with no gradient.
    """
    axis = channel_axis(len(inputs.shape), data_format)

    def transition(x, gamma, beta, kernel):
        h, mean, variance = batch_norm_relu.batch_norm_relu(
            x, gamma, beta, axis, batch_norm
        )
        h = ops.conv(h, kernel, padding="valid", data_format=data_format)
        outputs = ops.average_pool(
            h, pool_size=2, strides=2, padding="valid", data_format=data_format
        )
        return outputs, mean, variance

    outputs, mean, variance = keras.remat(transition)(
        inputs, gamma, beta, kernel
    )
    return outputs, (ops.stop_gradient(mean), ops.stop_gradient(variance))


def recomputing_stem(
    inputs, gamma, beta, batch_norm, data_format, return_features=False
):
    """BatchNorm -> ReLU -> zero padding by 1 -> 3x3 max pooling with
    stride 2 of a 4D feature map, in training mode.

    Args and returns as `recomputing_transition`, without the kernel; with
    `return_features`, the outputs are `[pooled, features]`, `features`
    being the ReLU's output: an output of the rematerialized function, not
    something its backward pass keeps, whose gradient autodiff adds to the
    pooling's.
    """
    axis = channel_axis(len(inputs.shape), data_format)
    padding = [[0, 0], [0, 0], [1, 1], [1, 1]]
    if data_format == "channels_last":
        padding = [[0, 0], [1, 1], [1, 1], [0, 0]]

    def stem(x, gamma, beta):
        h, mean, variance = batch_norm_relu.batch_norm_relu(
            x, gamma, beta, axis, batch_norm
        )
        outputs = ops.max_pool(
            ops.pad(h, padding),
            pool_size=3,
            strides=2,
            padding="valid",
            data_format=data_format,
        )
        if return_features:
            return [outputs, h], mean, variance
        return outputs, mean, variance

    outputs, mean, variance = keras.remat(stem)(inputs, gamma, beta)
    return outputs, (ops.stop_gradient(mean), ops.stop_gradient(variance))
