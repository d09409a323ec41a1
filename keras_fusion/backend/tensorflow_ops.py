"""TensorFlow ops the recomputing kernels share: convolution gradients
without the forward convolution, BatchNorm's gradient in one op on a CPU,
the `tf.distribute` replica sum, layout permutations.

`tensorflow_dense_block.py` and `tensorflow_transition.py` build their
custom gradients from these; everything here runs in `channels_last`.
"""

import keras
import tensorflow as tf

from keras_fusion.backend import batch_norm_relu


def batch_norm_gradient(d_y, x, gamma, mean, variance, axis, spec):
    """Gradients of BatchNorm(x), with batch statistics, with respect to x,
    gamma and beta: `fused_batch_norm_gradient` where it applies, else
    `batch_norm_relu.batch_norm_gradient` (all-reduced over the replicas
    for a synchronized BatchNorm)."""
    all_reduce = replica_sum() if spec.synchronized else None
    if fused_batch_norm_gradient_applies(x, spec, all_reduce):
        return fused_batch_norm_gradient(
            d_y, x, gamma, mean, variance, spec.epsilon
        )
    return batch_norm_relu.batch_norm_gradient(
        d_y, x, gamma, mean, variance, axis, spec, all_reduce
    )


def fused_batch_norm_gradient_applies(x, batch_norm, all_reduce):
    """Whether `fused_batch_norm_gradient` computes BatchNorm's gradient
    here: not for a BatchNorm synchronized over replicas (its sums must be
    the global batch's), not for float64 (the op has no such kernel), and
    not where a GPU may run the op (cuDNN's kernel takes the inverse
    variance where the CPU kernels take the variance)."""
    if batch_norm.synchronized and all_reduce is not None:
        return False
    if x.dtype not in (tf.float32, tf.float16, tf.bfloat16):
        return False
    return not tf.config.list_logical_devices("GPU")


def fused_batch_norm_gradient(d_y, x, gamma, mean, variance, epsilon):
    """`batch_norm_relu.batch_norm_gradient` (channels last, per replica)
    in one op: TensorFlow's `FusedBatchNormGradV3` CPU kernel (Eigen, or
    oneDNN where it is on) reads `x` and `d_y` once and allocates nothing
    besides `d_x`, where the element-wise ops allocate two temporaries of
    `x`'s size and pass over it five times. It computes the same analytic
    gradient from the same batch statistics (the forward pass's), summed in
    another order; the tests compare it with `batch_norm_gradient`."""
    shape = tf.shape(x)
    channels = x.shape[-1]
    # Any rank as 4D NHWC: the statistics are over every axis but the last.
    as_4d = [shape[0], 1, -1, channels]
    d_x, d_gamma, d_beta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=tf.reshape(d_y, as_4d),
        x=tf.reshape(x, as_4d),
        scale=tf.cast(gamma, mean.dtype),
        reserve_space_1=mean,
        reserve_space_2=variance,
        reserve_space_3=tf.zeros([0], mean.dtype),
        epsilon=epsilon,
        data_format="NHWC",
        is_training=True,
    )
    return tf.reshape(d_x, shape), d_gamma, d_beta


def replica_sum():
    """Sum over the replicas of the current `tf.distribute` replica
    context, or `None` outside one."""
    replica = tf.distribute.get_replica_context()
    if replica is None:
        return None
    return lambda value: replica.all_reduce(tf.distribute.ReduceOp.SUM, value)


def permutations(rank):
    to_last = [0, *range(2, rank), 1]
    to_first = [0, rank - 1, *range(1, rank - 1)]
    return to_last, to_first


def cast_seed(seed):
    # As keras's TensorFlow backend does before every stateless draw.
    if keras.backend.standardize_dtype(seed.dtype) == "int32":
        return seed
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")


def padding(kernel_shape):
    # A 1x1 kernel pads nothing, and TensorFlow's CPU kernels run 'VALID'
    # 1x1 backprops about twice as fast as 'SAME' ones.
    return "VALID" if all(k == 1 for k in kernel_shape[:-2]) else "SAME"


def conv_backprop(inputs, kernel, d_outputs):
    """Gradients of a stride-1 convolution of `inputs` with `kernel`, with
    respect to the kernel and the inputs, from its outputs' gradient."""
    d_kernel = conv_backprop_filter(inputs, d_outputs, kernel.shape)
    # The kernel's gradient first: the last reader of `inputs` is then the
    # ReLU gradient after this, which frees it before the input gradient's
    # BatchNorm gradient allocates.
    with tf.control_dependencies([d_kernel]):
        d_inputs = conv_backprop_input(tf.shape(inputs), kernel, d_outputs)
    return d_kernel, d_inputs


def conv_backprop_input(input_shape, kernel, d_outputs):
    """Gradient of a stride-1 'same' convolution with respect to its input."""
    return tf.nn.conv_transpose(
        d_outputs,
        kernel,
        output_shape=input_shape,
        strides=1,
        padding=padding(kernel.shape),
    )


def conv_backprop_filter(inputs, d_outputs, kernel_shape):
    """Gradient of a stride-1 'same' convolution with respect to its kernel."""
    rank = len(inputs.shape)
    if rank == 3:
        # Conv1D runs as a 2D convolution of height 1, as tf.nn.convolution
        # does.
        d_kernel = tf.raw_ops.Conv2DBackpropFilter(
            input=inputs[:, None],
            filter_sizes=[1, *kernel_shape],
            out_backprop=d_outputs[:, None],
            strides=[1, 1, 1, 1],
            padding=padding(kernel_shape),
        )
        return d_kernel[0]
    if rank == 4:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=inputs,
            filter_sizes=list(kernel_shape),
            out_backprop=d_outputs,
            strides=[1, 1, 1, 1],
            padding=padding(kernel_shape),
        )
    return tf.raw_ops.Conv3DBackpropFilterV2(
        input=inputs,
        filter_sizes=list(kernel_shape),
        out_backprop=d_outputs,
        strides=[1, 1, 1, 1, 1],
        padding=padding(kernel_shape),
    )


def conv(inputs, kernel):
    # The op keras.layers.Conv*D runs, with the block's paddings.
    return keras.ops.conv(
        inputs,
        kernel,
        padding=padding(kernel.shape).lower(),
        data_format="channels_last",
    )
