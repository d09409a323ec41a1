"""relu(BatchNorm(x)) in training mode, written once for both kernels.

The forward pass (`batch_norm_relu`) runs the ops of
`keras.layers.BatchNormalization.call` in training mode, on the same
values, so the outputs and batch statistics are the plain block's bit for
bit, and `update_moving_statistics` is that layer's update formula. The
recomputation (`recompute_batch_norm_relu`) runs the same ops on the
forward pass's saved statistics, so a ReLU whose input is within rounding
of zero takes the forward pass's branch. `relu_gradient` then
`batch_norm_gradient` differentiate it: BatchNorm's analytic gradient
(through the batch statistics too) takes three element-wise passes where
autodiff of the forward ops runs about a dozen;
the TensorFlow kernel uses it, `keras.remat` differentiates the forward
pass itself. (TensorFlow's fused BatchNorm kernels are faster still but
compute the statistics their own way, so near-zero ReLU inputs would flip
branch.) `benchmarks/dense_block_memory.py` times both.

Everything is `keras.ops`; `axis` is the channel axis, non-negative.
"""

import keras
from keras import ops


def statistics_dtype(dtype):
    """BatchNorm's statistics dtype for inputs of `dtype`, the one
    `keras.layers.BatchNormalization` computes in: float32 for
    float16/bfloat16, and for float64 float64 under TensorFlow but float32
    under JAX and PyTorch, where Keras's type promotion turns 64-bit types
    into 32-bit ones (as JAX does without x64)."""
    return keras.backend.result_type(dtype, "float32")


def batch_norm_relu(x, gamma, beta, axis, spec):
    """relu(BatchNorm(x)) with batch statistics, as the Keras layer runs it.

    Args:
        x: the input, in the compute dtype.
        gamma, beta: BatchNorm's scale and offset.
        axis: the channel axis of `x`.
        spec: a `BatchNormSpec` (epsilon, synchronized).

    Returns:
        `(outputs, mean, variance)`: outputs in `x`'s dtype, the batch
        statistics in `statistics_dtype(x.dtype)`.
    """
    dtype = x.dtype
    x = ops.cast(x, statistics_dtype(dtype))
    reduction_axes = [a for a in range(len(x.shape)) if a != axis]
    mean, variance = ops.moments(
        x, axes=reduction_axes, synchronized=spec.synchronized
    )
    outputs = _normalize_relu(x, gamma, beta, mean, variance, axis, spec, dtype)
    return outputs, mean, variance


def recompute_batch_norm_relu(x, gamma, beta, mean, variance, axis, spec):
    """relu(BatchNorm(x)) again, from the forward pass's batch statistics.

    Returns the forward pass's outputs bit for bit, in `x`'s dtype.
    """
    dtype = x.dtype
    x = ops.cast(x, statistics_dtype(dtype))
    return _normalize_relu(x, gamma, beta, mean, variance, axis, spec, dtype)


def relu_gradient(d_outputs, outputs):
    """The gradient through the ReLU: `d_outputs` where `outputs > 0`.

    (The TensorFlow kernel runs TensorFlow's fused `ReluGrad` op instead:
    one pass over the tensor instead of a comparison and a select.)
    """
    return ops.where(outputs > 0, d_outputs, 0)


def batch_norm_gradient(
    d_y, x, gamma, mean, variance, axis, spec, all_reduce=None
):
    """Gradients of BatchNorm(x), with batch statistics, with respect to x,
    gamma and beta.

    Args:
        d_y: the gradient with respect to BatchNorm's output (before the
            ReLU: see `relu_gradient`).
        x: the input, as given to `batch_norm_relu`.
        gamma, mean, variance: BatchNorm's scale and the batch statistics.
        axis: the channel axis.
        spec: the `BatchNormSpec`.
        all_reduce: with a synchronized BatchNorm, a function summing a
            tensor over the replicas (the statistics, and so the sums in
            the gradient with respect to `x`, are the global batch's, as
            autodiff through `ops.moments(synchronized=True)` gives); the
            gradients of gamma and beta stay per replica, as the optimizer
            sums them. `None` for a per-replica BatchNorm.

    Returns:
        `(d_x, d_gamma, d_beta)`: `d_x` in `x`'s dtype.
    """
    dtype = x.dtype
    x = ops.cast(x, statistics_dtype(dtype))
    d_y = ops.cast(d_y, x.dtype)
    axis = axis % len(x.shape)
    reduction_axes = [a for a in range(len(x.shape)) if a != axis]
    count = ops.cast(ops.size(d_y) // x.shape[axis], x.dtype)
    inverse_std = ops.rsqrt(variance + spec.epsilon)
    x_hat = (x - _broadcast(mean, axis, x)) * _broadcast(inverse_std, axis, x)
    d_beta = ops.sum(d_y, axis=reduction_axes)
    d_gamma = ops.sum(d_y * x_hat, axis=reduction_axes)
    sum_d_y, sum_d_y_x_hat = d_beta, d_gamma
    if spec.synchronized and all_reduce is not None:
        sum_d_y = all_reduce(d_beta)
        sum_d_y_x_hat = all_reduce(d_gamma)
        count = all_reduce(count)
    scale = ops.cast(gamma, x.dtype) * inverse_std
    mean_d_y = _broadcast(sum_d_y, axis, x)
    mean_d_y_x_hat = _broadcast(sum_d_y_x_hat, axis, x)
    d_x = _broadcast(scale, axis, x) * (
        d_y - (mean_d_y + x_hat * mean_d_y_x_hat) / count
    )
    return ops.cast(d_x, dtype), d_gamma, d_beta


def update_moving_statistics(
    moving_mean, moving_variance, mean, variance, momentum
):
    """`keras.layers.BatchNormalization`'s update of its moving statistics
    (variables), from one step's batch statistics."""
    mean = ops.stop_gradient(mean)
    variance = ops.stop_gradient(variance)
    old_mean = ops.cast(moving_mean.value, mean.dtype)
    old_variance = ops.cast(moving_variance.value, mean.dtype)
    moving_mean.assign(old_mean * momentum + mean * (1.0 - momentum))
    moving_variance.assign(
        old_variance * momentum + variance * (1.0 - momentum)
    )


def _normalize_relu(x, gamma, beta, mean, variance, axis, spec, dtype):
    outputs = ops.batch_normalization(
        x,
        mean,
        variance,
        axis=axis,
        offset=ops.cast(beta, x.dtype),
        scale=ops.cast(gamma, x.dtype),
        epsilon=spec.epsilon,
    )
    return ops.relu(ops.cast(outputs, dtype))


def _broadcast(per_channel, axis, x):
    """A per-channel vector shaped to broadcast against `x` along `axis`."""
    if axis == len(x.shape) - 1:
        return per_channel
    shape = [1] * len(x.shape)
    shape[axis] = x.shape[axis]
    return ops.reshape(per_channel, shape)
