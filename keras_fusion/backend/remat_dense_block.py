"""Training step of a dense block that recomputes, for PyTorch.

TensorFlow and JAX have kernels of their own (`tensorflow_dense_block.py`,
`jax_dense_block.py`: under JAX, XLA's CPU compiler undoes what this one
saves, as that module says); this module is `keras.ops` plus
`keras.remat`, which is `torch.utils.checkpoint` under PyTorch and
`jax.checkpoint` under JAX, where the tests run it against the JAX kernel.

`keras.remat` around Keras layers gets a dense block wrong in two ways:
BatchNorm's moving-statistics update runs inside the rematerialised
function (under JAX its traced values leak out as the moving statistics;
under PyTorch the update runs twice), and the dropout sublayer draws its
seed inside it (the recomputation draws another). Here each dense layer is
instead a pure function of its inputs and weights that returns its new
features and its BatchNorm batch statistics; the moving statistics are
updated from those outside the rematerialised function, once per step,
with the Keras layer's formula (`batch_norm_relu.py`, shared with the
TensorFlow kernel). Dropout: under JAX, inside the function, from a seed
drawn once outside it; under PyTorch (whose random ops take no seed
tensor), after the function, from the dropout layer's seed generator.

The kernel receives the block as a `DenseBlockSpec` (`dense_block_spec.py`)
and returns the block's output and every BatchNorm's batch statistics; the
layer updates the moving statistics from them.

- `"full"`: each layer's function covers concatenation, BatchNorm, ReLU,
  the 1x1 and the 3x3 convolutions and dropout, so only its inputs (the
  earlier layers' features) are kept for the backward pass. JAX recomputes
  only what the gradients need (the 3x3 convolution's output is not).
- `"concat_bn"`: the bottleneck convolution's output is kept too
  (`jax.checkpoint` policy `save_only_these_names`); the 3x3 convolution
  runs outside the rematerialised function. Under PyTorch, whose
  checkpoint has no such policy, the bottleneck part and the second
  BatchNorm-ReLU are rematerialised as two functions, the bottleneck
  output passing between them.

The ops are those of `keras.layers.BatchNormalization`, `Conv*D` and
`Dropout`, on the same values, so outputs, statistics and gradients are
the plain block's (`recompute=False`); the tests check it.
"""

import keras
from keras import ops

from keras_fusion._internal.checks import channel_axis
from keras_fusion.backend import batch_norm_relu
from keras_fusion.backend.dense_block_spec import convolution

_BOTTLENECK = "keras_fusion_bottleneck"


def recomputing_dense_block(spec, inputs):
    """Run the block that `spec` (a `DenseBlockSpec`) describes, training.

    Returns:
        `(outputs, statistics)`: the block's output, and one
        `(mean, variance)` pair per BatchNorm in the order of the layers
        (the first BatchNorm of a layer before its bottleneck BatchNorm),
        with no gradient.
    """
    axis = channel_axis(len(inputs.shape), spec.data_format)
    features = [inputs]
    statistics = []
    for layer in spec.layers:
        layer_fn = _DenseLayerFunction(spec, layer, axis)
        # A tuple: torch.utils.checkpoint keeps its arguments by reference
        # for the recomputation, and `features` grows after this call.
        new_features, moments = layer_fn(tuple(features), layer.weights())
        statistics += [
            (ops.stop_gradient(m), ops.stop_gradient(v))
            for m, v in zip(moments[::2], moments[1::2], strict=True)
        ]
        features.append(new_features)
    if spec.return_new_features:
        features = features[1:]
    if len(features) == 1:
        return features[0], statistics
    return ops.concatenate(features, axis=axis), statistics


class _DenseLayerFunction:
    """One dense layer as rematerialised pure functions of its features
    and its weights (in `DenseLayerSpec.weights()` order)."""

    def __init__(self, spec, layer, axis):
        self.spec = spec
        self.layer = layer
        self.axis = axis
        self.backend = keras.backend.backend()

    def __call__(self, features, weights):
        # Without a bottleneck there is no 1x1 output to keep: "concat_bn"
        # is "full" (as in the TensorFlow kernel), or the BatchNorm-ReLU
        # output of the whole concatenation would be kept per layer.
        full = self.spec.policy == "full" or not self.layer.has_bottleneck
        if full and self.backend == "jax":
            # Dropout inside the rematerialised function, from a seed drawn
            # once outside it: the recomputation draws the same mask.
            seed = None
            if self.layer.dropout_seed is not None:
                seed = self.layer.dropout_seed.next()
            return keras.remat(self._whole_layer)(features, weights, seed)
        if full:
            # PyTorch's random ops take no seed tensor: dropout runs after
            # the rematerialised function, once, and autograd keeps its
            # mask (`growth_rate` channels, like the features).
            f, statistics = keras.remat(self._whole_layer)(
                features, weights, None
            )
            return self._dropout(f), statistics
        if self.backend == "jax":
            h, statistics = self._jax_concat_bn(features, weights)
        else:
            # Rematerialise concatenation, BatchNorm, ReLU and the 1x1
            # convolution, then the second BatchNorm-ReLU: the bottleneck
            # output is kept (the first function's output, the second's
            # input), as JAX's policy keeps it, and so is the 3x3
            # convolution's input (outside both). Without the second
            # function autograd would keep three more bottleneck-sized
            # maps per layer (BatchNorm's centred input, the ReLU output
            # and its channels-first copy).
            b, statistics = keras.remat(self._bottleneck)(features, weights)
            h, statistics_1 = keras.remat(self._second_half)(b, weights)
            statistics = statistics + statistics_1
        f = self._conv(h, self._layer(weights).kernel2)
        return self._dropout(f), statistics

    def _layer(self, weights):
        return self.layer.with_weights(weights)

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
        f = self._conv(h, self._layer(weights).kernel2)
        if seed is not None:
            f = keras.random.dropout(f, self.layer.dropout_rate, seed=seed)
        return f, statistics + statistics_1

    def _dropout(self, f):
        """Dropout as the plain block's Dropout layer runs it."""
        if self.layer.dropout_seed is None:
            return f
        return keras.random.dropout(
            f, self.layer.dropout_rate, seed=self.layer.dropout_seed
        )

    def _bottleneck(self, features, weights, name=False):
        """concat -> BN -> ReLU [-> 1x1 conv]; and the batch statistics."""
        layer = self._layer(weights)
        x = (
            ops.concatenate(features, axis=self.axis)
            if len(features) > 1
            else features[0]
        )
        h, mean, variance = batch_norm_relu.batch_norm_relu(
            x, layer.gamma0, layer.beta0, self.axis, self.spec.batch_norm
        )
        if not layer.has_bottleneck:
            return h, (mean, variance)
        b = self._conv(h, layer.kernel1)
        if name:
            from jax.ad_checkpoint import checkpoint_name

            b = checkpoint_name(b, _BOTTLENECK)
        return b, (mean, variance)

    def _second_half(self, b, weights):
        """[BN -> ReLU] after the bottleneck convolution."""
        layer = self._layer(weights)
        if not layer.has_bottleneck:
            return b, ()
        h, mean, variance = batch_norm_relu.batch_norm_relu(
            b, layer.gamma1, layer.beta1, self.axis, self.spec.batch_norm
        )
        return h, (mean, variance)

    def _conv(self, x, kernel):
        return convolution(x, kernel, self.spec.data_format)
