"""Training steps of DenseNet's transition and stem that recompute instead
of storing.

A transition runs BatchNorm -> ReLU -> 1x1 convolution -> 2x2 average
pooling; the ImageNet DenseNets' stem, after its 7x7 convolution,
BatchNorm -> ReLU -> zero padding -> 3x3 max pooling with stride 2. Plain
Keras layers keep the BatchNorm's, the ReLU's (and the convolution's or the
padding's) outputs for the backward pass, each as large as the input or
larger. These kernels keep only their input (a transition's is the output
of the dense block before it, which that block keeps anyway; the stem's is
the 7x7 convolution's output, which the plain BatchNorm keeps too),
BatchNorm's batch statistics and, for the stem, its output (which the
first dense block keeps); the backward pass recomputes relu(BatchNorm(x))
from the saved statistics. The stem can return that ReLU output too (the
stride-2 feature of a U-Net's first skip): an output, not something kept,
whose gradient joins the pooling's.

Why this is TensorFlow code and not `keras.remat` (which the JAX and
PyTorch kernels in `remat_transition.py` use): `tf.recompute_grad` around
the layers would run the whole forward pass again (the convolution and the
pooling included), update BatchNorm's moving statistics a second time and
differentiate BatchNorm by autodiff. Here the backward pass reruns only
BatchNorm and ReLU (`batch_norm_relu.py`, shared with the dense block's
kernel): the average pooling's gradient needs no input, the 1x1
convolution's gradients come straight from its backprop ops, the max
pooling's gradient reads the saved output, and BatchNorm is differentiated
analytically (in one `FusedBatchNormGradV3` op on a CPU, summed over the
replicas when it is synchronized), as in the dense block's kernel, whose
helpers these kernels share.

Everything here runs in `channels_last`; `channels_first` inputs are
transposed on the way in and out, as in `tensorflow_dense_block.py`.

Agreement with the plain layers: the forward pass runs the Keras layers'
ops on the same values, so outputs and batch statistics are theirs bit for
bit; the recomputation reproduces the forward pass's ReLU branches, so the
pooling gradients route the same way; the gradients differ from autodiff's
only in BatchNorm's summation order (the tests check 1e-5 relative).
"""

import keras
import tensorflow as tf

from keras_fusion.backend import batch_norm_relu

# Shared with the dense block's kernel: convolution gradients, BatchNorm's
# one-op gradient, the replica sum, the layout permutations.
from keras_fusion.backend import tensorflow_ops

# The stem's zero padding and max pooling, as keras.applications.densenet
# builds them (ZeroPadding2D(1), MaxPooling2D(3, strides=2)).
_STEM_PADDING = [[0, 0], [1, 1], [1, 1], [0, 0]]
_STEM_POOL_SIZE = 3
_STEM_POOL_STRIDES = 2


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

    @tf.custom_gradient
    def transition(x, gamma, beta, kernel):
        axis = len(x.shape) - 1
        h, mean, variance = batch_norm_relu.batch_norm_relu(
            x, gamma, beta, axis, batch_norm
        )
        outputs = keras.ops.average_pool(
            _conv_1x1(h, kernel),
            pool_size=2,
            strides=2,
            padding="valid",
            data_format="channels_last",
        )

        def grad_fn(d_outputs, *unused_statistics_gradients):
            x_again = _after(d_outputs, x)
            h = batch_norm_relu.recompute_batch_norm_relu(
                x_again, gamma, beta, mean, variance, axis, batch_norm
            )
            d_conv = _average_pool_gradient(d_outputs, tf.shape(x_again))
            d_kernel, d_h = tensorflow_ops.conv_backprop(h, kernel, d_conv)
            # TensorFlow's fused ReLU gradient: one pass over the tensor.
            d_y = tf.raw_ops.ReluGrad(gradients=d_h, features=h)
            d_x, d_gamma, d_beta = tensorflow_ops.batch_norm_gradient(
                d_y, x_again, gamma, mean, variance, axis, batch_norm
            )
            return d_x, d_gamma, d_beta, d_kernel

        return (outputs, mean, variance), grad_fn

    return _in_channels_last(
        transition, inputs, data_format, gamma, beta, kernel
    )


def recomputing_stem(
    inputs, gamma, beta, batch_norm, data_format, return_features=False
):
    """BatchNorm -> ReLU -> zero padding by 1 -> 3x3 max pooling with
    stride 2 of a 4D feature map, in training mode.

    Args and returns as `recomputing_transition`, without the kernel; with
    `return_features`, the outputs are `[pooled, features]`, `features`
    being the ReLU's output, whose gradient joins the pooling's in the
    backward pass. It is an output, not something the backward pass keeps:
    that recomputes it as without `return_features`.
    """

    @tf.custom_gradient
    def stem(x, gamma, beta):
        axis = len(x.shape) - 1
        h, mean, variance = batch_norm_relu.batch_norm_relu(
            x, gamma, beta, axis, batch_norm
        )
        outputs = keras.ops.max_pool(
            keras.ops.pad(h, _STEM_PADDING),
            pool_size=_STEM_POOL_SIZE,
            strides=_STEM_POOL_STRIDES,
            padding="valid",
            data_format="channels_last",
        )

        def grad_fn(d_outputs, *other_gradients):
            x_again = _after(d_outputs, x)
            padded = tf.pad(
                batch_norm_relu.recompute_batch_norm_relu(
                    x_again, gamma, beta, mean, variance, axis, batch_norm
                ),
                _STEM_PADDING,
            )
            # The op TensorFlow's own MaxPool gradient runs, on the
            # recomputed (bit-identical) input and the saved output.
            d_padded = tf.raw_ops.MaxPoolGrad(
                orig_input=padded,
                orig_output=outputs,
                grad=d_outputs,
                ksize=[1, _STEM_POOL_SIZE, _STEM_POOL_SIZE, 1],
                strides=[1, _STEM_POOL_STRIDES, _STEM_POOL_STRIDES, 1],
                padding="VALID",
            )
            d_features = other_gradients[0] if return_features else None
            if d_features is not None:
                d_padded += tf.pad(d_features, _STEM_PADDING)
            # The ReLU's gradient on the padded tensors (the padding's is
            # sliced off after it), so that the unpadded ReLU output need
            # not stay alive beside the padded one.
            d_y = tf.raw_ops.ReluGrad(gradients=d_padded, features=padded)
            return tensorflow_ops.batch_norm_gradient(
                d_y[:, 1:-1, 1:-1, :],
                x_again,
                gamma,
                mean,
                variance,
                axis,
                batch_norm,
            )

        if return_features:
            return (outputs, h, mean, variance), grad_fn
        return (outputs, mean, variance), grad_fn

    return _in_channels_last(stem, inputs, data_format, gamma, beta)


def _in_channels_last(kernel_fn, inputs, data_format, *weights):
    """`kernel_fn` (a custom gradient returning one or more outputs, then
    mean and variance) on `inputs` transposed to channels_last, its outputs
    transposed back: one tensor, or a list of several."""
    channels_first = data_format == "channels_first"
    to_last, to_first = tensorflow_ops.permutations(len(inputs.shape))
    x = tf.transpose(inputs, to_last) if channels_first else inputs
    *outputs, mean, variance = kernel_fn(x, *weights)
    if channels_first:
        outputs = [tf.transpose(output, to_first) for output in outputs]
    if len(outputs) == 1:
        outputs = outputs[0]
    return outputs, (tf.stop_gradient(mean), tf.stop_gradient(variance))


def _after(d_outputs, x):
    """`x`, once `d_outputs` exists: the recomputation waits for the
    backward pass to reach this layer (as in `tensorflow_dense_block.py`),
    and graph optimizations cannot merge it with the forward pass's
    BatchNorm-ReLU, which would keep that alive instead."""
    with tf.control_dependencies([d_outputs]):
        return tf.identity(x)


def _average_pool_gradient(d_outputs, input_shape):
    """Gradient of 2-wide average pooling with stride 2 ('valid') in
    channels_last, for an input of `input_shape`: each output's gradient
    over the window's size, to each input of its window; zero for the last
    position of an odd-sized axis, which no window covers. (Windows do not
    overlap, so this is TensorFlow's `AvgPoolGrad` exactly, for every
    rank.)"""
    rank = len(d_outputs.shape)
    d_inputs = d_outputs / 2 ** (rank - 2)
    for axis in range(1, rank - 1):
        d_inputs = tf.repeat(d_inputs, 2, axis=axis)
    paddings = [[0, 0]]
    paddings += [[0, input_shape[axis] % 2] for axis in range(1, rank - 1)]
    paddings += [[0, 0]]
    return tf.pad(d_inputs, paddings)


def _conv_1x1(inputs, kernel):
    # The op keras.layers.Conv*D runs ('valid', the layer's default).
    return keras.ops.conv(
        inputs, kernel, padding="valid", data_format="channels_last"
    )
