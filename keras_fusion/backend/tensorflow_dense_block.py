"""Training step of a dense block that recomputes instead of storing.

Why this is TensorFlow code and not `keras.ops`: the memory saving needs a
custom gradient that (a) keeps the block's features once, as its output
(and, for `"concat_bn"`, the bottleneck convolutions' outputs), for the
backward pass, (b) recomputes the rest layer by layer in the backward pass,
slicing each layer's input out of the next one's and sequenced after the
incoming gradient so that the recomputed tensors of different layers are
never alive together, and (c) does not run the 3x3 convolution forward
again: its input and kernel gradients come straight from
`Conv*DBackpropInput`/`Conv*DBackpropFilter`. `keras.remat` and
`tf.recompute_grad` around a layer do none of (c), update BatchNorm's moving
statistics a second time during the recomputation and draw a new dropout
mask there. BatchNorm is recomputed from the forward pass's saved batch
statistics (`batch_norm_relu.py`, shared with the `keras.remat` kernel) and
differentiated analytically, in one `FusedBatchNormGradV3` op on a CPU.
`benchmarks/dense_block_memory.py` measures what all of this buys.

What is alive at the backward pass's peak, in the last layer (the tensors
of the width of the layer's input, about the output's): the gradient
accumulated so far, the layer's input, its BatchNorm-ReLU's gradient and
the BatchNorm gradient being written; every other tensor is of the growth
rate or bottleneck width. The ordering (control dependencies) is what keeps
it at four: TensorFlow's executor otherwise runs a ready op early and keeps
its inputs alive.

The kernel receives the block as a `DenseBlockSpec` (`dense_block_spec.py`):
weights as tensors, BatchNorm settings, dropout rates and seed generators.
It returns the block's output and every BatchNorm's batch statistics; the
layer updates the moving statistics from them, once per step. A block
that returns only its new features keeps them and its input instead of
their concatenation, and rebuilds it in the backward pass.

Everything here runs in `channels_last`; `channels_first` inputs are
transposed on the way in and out.

Agreement with the plain block (`recompute=False`, Keras sublayers), which
the tests check to 1e-5 relative (gradients) and 1e-6 (statistics):
- the forward pass computes BatchNorm with the ops of the Keras layer, so
  outputs and batch statistics are the plain block's;
- the gradients are the analytic gradients of the same function, summed
  in another order (about 1e-6 relative apart);
- dropout draws once per step from the dropout layer's seed generator; the
  backward pass applies the same stateless mask to the gradient.
"""

import tensorflow as tf

from keras_fusion.backend import batch_norm_relu
from keras_fusion.backend import tensorflow_ops

# The kernel works in channels_last.
_AXIS = -1


def recomputing_dense_block(spec, inputs):
    """Run the block that `spec` (a `DenseBlockSpec`) describes, training.

    Returns:
        `(outputs, statistics)`: the block's output, and one
        `(mean, variance)` pair per BatchNorm in the order of the layers
        (the first BatchNorm of a layer before its bottleneck BatchNorm),
        with no gradient.
    """
    channels_first = spec.data_format == "channels_first"
    rank = len(inputs.shape)
    to_last, to_first = tensorflow_ops.permutations(rank)
    x = tf.transpose(inputs, to_last) if channels_first else inputs
    seeds = [
        None
        if layer.dropout_seed is None
        else tensorflow_ops.cast_seed(layer.dropout_seed.next())
        for layer in spec.layers
    ]
    kernel = _DenseBlockKernel(spec, seeds)
    outputs, statistics = kernel(x)
    if channels_first:
        outputs = tf.transpose(outputs, to_first)
    return outputs, statistics


class _DenseBlockKernel:
    def __init__(self, spec, seeds):
        self.spec = spec
        self.seeds = seeds
        self.channels_first = spec.data_format == "channels_first"

    def __call__(self, x):
        weights = [w for layer in self.spec.layers for w in layer.weights()]

        @tf.custom_gradient
        def dense_block(x, *weights):
            outputs, moments, grad_fn = self._forward(x, weights)
            return (outputs, *moments), grad_fn

        outputs, *moments = dense_block(x, *weights)
        statistics = [
            (tf.stop_gradient(m), tf.stop_gradient(v))
            for m, v in zip(moments[::2], moments[1::2], strict=True)
        ]
        return outputs, statistics

    def _layers(self, weights):
        """The layer specs with `weights` (the custom gradient's arguments)
        in place of the spec's tensors."""
        layers = []
        position = 0
        for layer in self.spec.layers:
            count = len(layer.weights())
            layers.append(
                layer.with_weights(weights[position : position + count])
            )
            position += count
        return layers

    def _dropout(self, x, index):
        layer = self.spec.layers[index]
        if layer.dropout_seed is None:
            return x
        # Drawn in the layout the plain block's Dropout sees, so that the
        # same seed gives the same mask.
        to_last, to_first = tensorflow_ops.permutations(len(x.shape))
        if self.channels_first:
            x = tf.transpose(x, to_first)
        x = tf.nn.experimental.stateless_dropout(
            x, rate=layer.dropout_rate, seed=self.seeds[index]
        )
        return tf.transpose(x, to_last) if self.channels_first else x

    def _forward(self, x, weights):
        layers = self._layers(weights)
        batch_norm = self.spec.batch_norm
        axis = len(x.shape) - 1
        # The features are kept once: as the growing concatenation, whose
        # last value is the block's output. The backward pass slices each
        # layer's input back out of that output, so no per-layer tensor is
        # kept besides the bottleneck outputs of "concat_bn".
        c = x
        bottlenecks = []
        moments = []
        new_features = []
        for index, layer in enumerate(layers):
            h, mean, variance = batch_norm_relu.batch_norm_relu(
                c, layer.gamma0, layer.beta0, axis, batch_norm
            )
            moments += [mean, variance]
            if layer.has_bottleneck:
                b = tensorflow_ops.conv(h, layer.kernel1)
                if self.spec.policy == "concat_bn":
                    bottlenecks.append(b)
                h, mean, variance = batch_norm_relu.batch_norm_relu(
                    b, layer.gamma1, layer.beta1, axis, batch_norm
                )
                moments += [mean, variance]
            f = self._dropout(tensorflow_ops.conv(h, layer.kernel2), index)
            if self.spec.return_new_features:
                new_features.append(f)
                if index == len(layers) - 1:
                    break
            c = tf.concat([c, f], axis=_AXIS)
        if not self.spec.return_new_features:
            outputs = c

            def grad_fn(d_outputs, *unused_moment_gradients):
                return self._backward(
                    d_outputs, outputs, bottlenecks, moments, layers
                )

            return outputs, moments, grad_fn

        # Only the new features are returned: the backward pass keeps them
        # and the input (not their concatenation, whose last step the
        # forward pass never builds) and rebuilds the concatenation.
        outputs = tf.concat(new_features, axis=_AXIS)

        def new_features_grad_fn(d_outputs, *unused_moment_gradients):
            return self._backward(
                tf.concat([tf.zeros_like(x), d_outputs], axis=_AXIS),
                tf.concat([x, outputs], axis=_AXIS),
                bottlenecks,
                moments,
                layers,
            )

        return outputs, moments, new_features_grad_fn

    def _backward(self, d_outputs, outputs, bottlenecks, moments, layers):
        """The gradients of the input and weights, from the gradient of
        the whole concatenation `outputs` (input and new features)."""
        grads = []
        gradient = d_outputs
        # Where each layer's batch statistics start in `moments`.
        position = [0]
        for layer in layers[:-1]:
            position.append(position[-1] + 2 * layer.num_batch_norms)
        input_channels = outputs.shape[-1] - sum(
            layer.growth_rate for layer in layers
        )
        # Each layer's input is sliced out of the next layer's (the last
        # layer's out of the block's output), and only once that next layer
        # is done with its own: the block's output is dropped after the
        # first slice, and no two layers' inputs are alive together.
        c = outputs
        for index in reversed(range(len(layers))):
            layer = layers[index]
            width = input_channels + index * layer.growth_rate
            gradient, d_f = tf.split(
                gradient, [width, layer.growth_rate], axis=_AXIS
            )
            d_f = self._dropout(d_f, index)
            # The control dependency holds the recomputation back until this
            # layer's gradient exists (so until the layer after it is done),
            # so that only one layer's recomputed tensors are alive at a
            # time (as tf.recompute_grad does).
            with tf.control_dependencies([d_f, *grads[:6]]):
                c = c[..., :width]
                stored_b = None
                if self.spec.policy == "concat_bn" and layer.has_bottleneck:
                    stored_b = tf.identity(bottlenecks[index])
            statistics = moments[position[index] : position[index] + 4]
            d_c, layer_grads = self._layer_backward(
                layer, c, stored_b, statistics, d_f
            )
            gradient = gradient + d_c
            grads = layer_grads + grads
        return (gradient, *grads)

    def _layer_backward(self, layer, c, stored_b, statistics, d_f):
        """Recompute one dense layer from its input `c` and return the
        gradients of its input and weights (in `weights()` order)."""
        batch_norm = self.spec.batch_norm
        axis = len(c.shape) - 1

        def recompute(x, gamma, beta, moments):
            return batch_norm_relu.recompute_batch_norm_relu(
                x, gamma, beta, *moments, axis, batch_norm
            )

        def backward(d_outputs, x, outputs, gamma, moments):
            # TensorFlow's fused ReLU gradient: one pass over the tensor.
            d_y = tf.raw_ops.ReluGrad(gradients=d_outputs, features=outputs)
            return tensorflow_ops.batch_norm_gradient(
                d_y, x, gamma, *moments, axis, batch_norm
            )

        moments0, moments1 = statistics[:2], statistics[2:]
        h1 = recompute(c, layer.gamma0, layer.beta0, moments0)
        if not layer.has_bottleneck:
            d_kernel2, d_h1 = tensorflow_ops.conv_backprop(
                h1, layer.kernel2, d_f
            )
            d_c, d_gamma0, d_beta0 = backward(
                d_h1, c, h1, layer.gamma0, moments0
            )
            return d_c, [d_gamma0, d_beta0, d_kernel2]
        b = (
            tensorflow_ops.conv(h1, layer.kernel1)
            if stored_b is None
            else stored_b
        )
        h2 = recompute(b, layer.gamma1, layer.beta1, moments1)
        d_kernel2, d_h2 = tensorflow_ops.conv_backprop(h2, layer.kernel2, d_f)
        d_b, d_gamma1, d_beta1 = backward(d_h2, b, h2, layer.gamma1, moments1)
        d_kernel1, d_h1 = tensorflow_ops.conv_backprop(h1, layer.kernel1, d_b)
        d_c, d_gamma0, d_beta0 = backward(d_h1, c, h1, layer.gamma0, moments0)
        return d_c, [d_gamma0, d_beta0, d_kernel1, d_gamma1, d_beta1, d_kernel2]
