"""Training step of a dense block that recomputes, for JAX and PyTorch.

TensorFlow has its own kernel (`tensorflow_dense_block.py`); this module is
`keras.ops` plus `keras.remat`, which is `jax.checkpoint` under JAX and
`torch.utils.checkpoint` under PyTorch.

`keras.remat` around Keras layers gets a dense block wrong in two ways:
BatchNorm's moving-statistics update runs inside the rematerialised
function (under JAX its traced values leak out as the moving statistics;
under PyTorch the update runs twice), and the dropout sublayer draws its
seed inside it (the recomputation draws another). Here each dense layer is
instead a pure function of its inputs and weights that returns its new
features and its BatchNorm batch statistics; the moving statistics are
updated from those outside the rematerialised function, once per step,
with the Keras layer's formula. Dropout: under JAX, inside the function,
from a seed drawn once outside it; under PyTorch (whose random ops take no
seed tensor), the dropout sublayer runs after the function.

- `"full"`: each layer's function covers concatenation, BatchNorm, ReLU,
  the 1x1 and the 3x3 convolutions and dropout, so only its inputs (the
  earlier layers' features) are kept for the backward pass. JAX recomputes
  only what the gradients need (the 3x3 convolution's output is not).
- `"concat_bn"`: the bottleneck convolution's output is kept too
  (`jax.checkpoint` policy `save_only_these_names`); the 3x3 convolution
  runs outside the rematerialised function. Under PyTorch, whose
  checkpoint has no such policy, the bottleneck part alone is
  rematerialised.

The ops are those of `keras.layers.BatchNormalization`, `Conv*D` and
`Dropout`, on the same values, so outputs, statistics and gradients are
the plain block's (`recompute=False`); the tests check it.
"""

import keras
from keras import ops

from keras_fusion._internal.checks import channel_axis

_BOTTLENECK = "keras_fusion_bottleneck"


def recomputing_dense_block(block, inputs):
    """Run `block` (a `MemoryEfficientDenseBlock`) in training mode.

    Returns the block's output; the BatchNorm moving statistics are updated.
    """
    axis = channel_axis(len(inputs.shape), block.data_format)
    compute_dtype = inputs.dtype
    features = [inputs]
    for parts in block.dense_layers:
        weights = _layer_weights(parts, compute_dtype)
        layer_fn = _DenseLayerFunction(block, parts, axis)
        # A tuple: torch.utils.checkpoint keeps its arguments by reference
        # for the recomputation, and `features` grows after this call.
        new_features, statistics = layer_fn(tuple(features), weights)
        _update_moving_statistics(parts, statistics)
        features.append(new_features)
    return ops.concatenate(features, axis=axis)


def _layer_weights(parts, compute_dtype):
    weights = {
        "gamma0": parts.bn_0.gamma.value,
        "beta0": parts.bn_0.beta.value,
        "kernel2": ops.cast(parts.conv_2.kernel.value, compute_dtype),
    }
    if parts.conv_1 is not None:
        weights["kernel1"] = ops.cast(parts.conv_1.kernel.value, compute_dtype)
        weights["gamma1"] = parts.bn_1.gamma.value
        weights["beta1"] = parts.bn_1.beta.value
    return weights


class _DenseLayerFunction:
    """One dense layer as rematerialised pure functions."""

    def __init__(self, block, parts, axis):
        self.parts = parts
        self.axis = axis
        self.policy = block.recompute_policy
        self.backend = keras.backend.backend()

    def __call__(self, features, weights):
        # Without a bottleneck there is no 1x1 output to keep: "concat_bn"
        # is "full" (as in the TensorFlow kernel), or the BatchNorm-ReLU
        # output of the whole concatenation would be kept per layer.
        full = self.policy == "full" or self.parts.conv_1 is None
        if full and self.backend == "jax":
            # Dropout inside the rematerialised function, from a seed drawn
            # once outside it: the recomputation draws the same mask.
            seed = None
            if self.parts.dropout is not None:
                seed = self.parts.dropout.seed_generator.next()
            return keras.remat(self._whole_layer)(features, weights, seed)
        if full:
            # PyTorch's random ops take no seed tensor: the dropout sublayer
            # runs after the rematerialised function, once, and autograd
            # keeps its mask (`growth_rate` channels, like the features).
            f, statistics = keras.remat(self._whole_layer)(
                features, weights, None
            )
            return self._dropout(f), statistics
        if self.backend == "jax":
            h, statistics = self._jax_concat_bn(features, weights)
        else:
            # Rematerialise concatenation, BatchNorm, ReLU and the 1x1
            # convolution; the bottleneck output is the function's output
            # and so is kept.
            b, statistics = keras.remat(self._bottleneck)(features, weights)
            h, statistics_1 = self._second_half(b, weights)
            statistics = statistics + statistics_1
        f = self.parts.conv_2.convolution_op(h, weights["kernel2"])
        return self._dropout(f), statistics

    def _jax_concat_bn(self, features, weights):
        import jax

        policy = jax.checkpoint_policies.save_only_these_names(_BOTTLENECK)

        def layer(features, weights):
            h, statistics = self._bottleneck(features, weights, name=True)
            h, statistics_1 = self._second_half(h, weights)
            return h, statistics + statistics_1

        return jax.checkpoint(layer, policy=policy)(features, weights)

    def _whole_layer(self, features, weights, seed):
        h, statistics = self._bottleneck(features, weights)
        h, statistics_1 = self._second_half(h, weights)
        f = self.parts.conv_2.convolution_op(h, weights["kernel2"])
        if seed is not None:
            f = keras.random.dropout(f, self.parts.dropout.rate, seed=seed)
        return f, statistics + statistics_1

    def _dropout(self, f):
        """The dropout sublayer, as the plain block runs it."""
        if self.parts.dropout is None:
            return f
        return self.parts.dropout(f, training=True)

    def _bottleneck(self, features, weights, name=False):
        """concat -> BN -> ReLU [-> 1x1 conv]; and the batch statistics."""
        parts = self.parts
        x = (
            ops.concatenate(features, axis=self.axis)
            if len(features) > 1
            else features[0]
        )
        h, mean, variance = _batch_norm_relu(
            x, weights["gamma0"], weights["beta0"], parts.bn_0
        )
        if parts.conv_1 is None:
            return h, (mean, variance)
        b = parts.conv_1.convolution_op(h, weights["kernel1"])
        if name:
            from jax.ad_checkpoint import checkpoint_name

            b = checkpoint_name(b, _BOTTLENECK)
        return b, (mean, variance)

    def _second_half(self, b, weights):
        """[BN -> ReLU] after the bottleneck convolution."""
        parts = self.parts
        if parts.conv_1 is None:
            return b, ()
        h, mean, variance = _batch_norm_relu(
            b, weights["gamma1"], weights["beta1"], parts.bn_1
        )
        return h, (mean, variance)


def _batch_norm_relu(x, gamma, beta, bn):
    """relu(BatchNorm(x)) in training mode, with the ops and so the results
    of `keras.layers.BatchNormalization`; and the batch statistics."""
    dtype = x.dtype
    x = ops.cast(x, keras.backend.result_type(dtype, "float32"))
    mean, variance = ops.moments(x, axes=bn._reduction_axes)
    y = ops.batch_normalization(
        x,
        mean,
        variance,
        axis=bn.axis,
        offset=ops.cast(beta, x.dtype),
        scale=ops.cast(gamma, x.dtype),
        epsilon=bn.epsilon,
    )
    return ops.relu(ops.cast(y, dtype)), mean, variance


def _update_moving_statistics(parts, statistics):
    bns = [parts.bn_0] if parts.bn_1 is None else [parts.bn_0, parts.bn_1]
    for index, bn in enumerate(bns):
        mean = ops.stop_gradient(statistics[2 * index])
        variance = ops.stop_gradient(statistics[2 * index + 1])
        moving_mean = ops.cast(bn.moving_mean.value, mean.dtype)
        moving_variance = ops.cast(bn.moving_variance.value, mean.dtype)
        bn.moving_mean.assign(
            moving_mean * bn.momentum + mean * (1.0 - bn.momentum)
        )
        bn.moving_variance.assign(
            moving_variance * bn.momentum + variance * (1.0 - bn.momentum)
        )
