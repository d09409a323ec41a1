"""Training step of a dense block that recomputes instead of storing, for
JAX.

Why this is JAX code and not `keras.remat` (which `remat_dense_block.py`
runs under PyTorch): Keras compiles every JAX training step with XLA, and
XLA undoes `jax.checkpoint` around the dense layers. Its CPU pipeline sees
that a rematerialised BatchNorm-ReLU is the forward pass's own expression
again and schedules it there, so the recomputing block planned as many
bytes of temporaries as the plain one (`benchmarks.dense_block_residuals`).
This kernel is a `jax.custom_vjp` of the whole block, written as the
TensorFlow kernel (`tensorflow_dense_block.py`) is:

- the forward pass keeps the block's features once, as its output (and,
  for `"concat_bn"`, the bottleneck convolutions' outputs) and the batch
  statistics;
- the backward pass walks the layers from last to first, slices each
  layer's input out of the kept output, recomputes BatchNorm-ReLU (and
  the bottleneck convolution for `"full"`) from the saved statistics,
  differentiates BatchNorm analytically (`batch_norm_relu.py`) and the
  convolutions by their transposes (the forward convolution is not run
  again), and adds each layer's input gradient into the running gradient
  of the layers before it;
- each layer reads its input from the kept output only after the layer
  after it is done: the output goes through an addition of a zero that
  XLA computes from the running gradient (`_zero_after`). XLA's CPU
  compiler drops `jax.lax.optimization_barrier` before its last
  simplification passes, and without that data dependence it (a) rewrites
  each layer's slice of the output into the forward pass's own
  concatenation, which then stays alive until the backward pass (the
  plain block's quadratic memory), and (b) schedules every layer's
  recomputation at the start of the backward pass. The zero is added
  before the slice, which XLA then cannot trace back to a forward-pass
  concatenation, and it is read from one element of the running gradient
  only: XLA fuses the scalar into every consumer and computes it there
  per element, so a zero gathered from every later layer's weight
  gradients doubled the 32-layer step's time.

Dropout draws once per step from the dropout layer's seed generator,
outside the custom gradient; the backward pass applies the same mask to
the gradient. The kernel works in the block's data format.

Agreement with the plain block (`recompute=False`, Keras sublayers), which
the tests check to 1e-5 relative (gradients) and 1e-6 (statistics): the
forward pass runs the ops of the Keras layers on the same values, and the
gradients are the analytic gradients of the same function, summed in
another order.
"""

import jax
import keras
from keras import ops

from keras_fusion._internal.checks import channel_axis
from keras_fusion.backend import batch_norm_relu
from keras_fusion.backend.dense_block_spec import convolution


def recomputing_dense_block(spec, inputs):
    """Run the block that `spec` (a `DenseBlockSpec`) describes, training.

    Returns:
        `(outputs, statistics)`: the block's output, and one
        `(mean, variance)` pair per BatchNorm in the order of the layers
        (the first BatchNorm of a layer before its bottleneck BatchNorm),
        with no gradient.
    """
    seeds = tuple(
        None if layer.dropout_seed is None else layer.dropout_seed.next()
        for layer in spec.layers
    )
    weights = tuple(layer.weights() for layer in spec.layers)
    kernel = _DenseBlockKernel(spec, len(inputs.shape))
    outputs, moments = kernel.block(inputs, weights, seeds)
    statistics = [
        (ops.stop_gradient(m), ops.stop_gradient(v))
        for m, v in zip(moments[::2], moments[1::2], strict=True)
    ]
    return outputs, statistics


class _DenseBlockKernel:
    """The block's custom-gradient function. It reads only the spec's
    static parts (policy, data format, BatchNorm settings, each layer's
    bottleneck, growth rate and dropout rate); weights and seeds are its
    arguments."""

    def __init__(self, spec, rank):
        self.spec = spec
        self.axis = channel_axis(rank, spec.data_format)
        block = jax.custom_vjp(self._primal)
        block.defvjp(self._forward, self._backward)
        self.block = block

    def _layers(self, weights):
        return [
            layer.with_weights(w)
            for layer, w in zip(self.spec.layers, weights, strict=True)
        ]

    def _primal(self, x, weights, seeds):
        outputs, moments, _ = self._run(x, weights, seeds)
        return outputs, moments

    def _forward(self, x, weights, seeds):
        outputs, moments, bottlenecks = self._run(x, weights, seeds)
        kept = outputs
        if self.spec.return_new_features:
            # The forward pass never builds the last concatenation: keep
            # the input and the new features, and rebuild it backwards.
            kept = (x, outputs)
        return (outputs, moments), (kept, bottlenecks, moments, weights, seeds)

    def _run(self, x, weights, seeds):
        batch_norm = self.spec.batch_norm
        c = x
        bottlenecks = []
        moments = []
        new_features = []
        for index, layer in enumerate(self._layers(weights)):
            h, mean, variance = batch_norm_relu.batch_norm_relu(
                c, layer.gamma0, layer.beta0, self.axis, batch_norm
            )
            moments += [mean, variance]
            b = None
            if layer.has_bottleneck:
                b = self._conv(h, layer.kernel1)
                h, mean, variance = batch_norm_relu.batch_norm_relu(
                    b, layer.gamma1, layer.beta1, self.axis, batch_norm
                )
                moments += [mean, variance]
            bottlenecks.append(b if self.spec.policy == "concat_bn" else None)
            f = self._dropout(self._conv(h, layer.kernel2), index, seeds)
            if self.spec.return_new_features:
                new_features.append(f)
                if index == len(self.spec.layers) - 1:
                    break
            c = ops.concatenate([c, f], axis=self.axis)
        if self.spec.return_new_features:
            c = _concatenate(new_features, self.axis)
        return c, tuple(moments), tuple(bottlenecks)

    def _backward(self, residuals, cotangents):
        kept, bottlenecks, moments, weights, seeds = residuals
        gradient, _ = cotangents
        if self.spec.return_new_features:
            x, new_features = kept
            outputs = ops.concatenate([x, new_features], axis=self.axis)
            gradient = ops.concatenate(
                [ops.zeros_like(x), gradient], axis=self.axis
            )
        else:
            outputs = kept
        layers = self._layers(weights)
        # Where each layer's batch statistics start in `moments`.
        position = [0]
        for layer in layers[:-1]:
            position.append(position[-1] + 2 * layer.num_batch_norms)
        input_channels = outputs.shape[self.axis] - sum(
            layer.growth_rate for layer in layers
        )
        grads = [None] * len(layers)
        for index in reversed(range(len(layers))):
            layer = layers[index]
            width = input_channels + index * layer.growth_rate
            d_f = _slice(gradient, width, None, self.axis)
            gradient = _slice(gradient, 0, width, self.axis)
            d_f = self._dropout(d_f, index, seeds)
            # This layer's input, and its stored bottleneck output, read
            # after the layers after it are done (see the module
            # docstring).
            zero = _zero_after(gradient, d_f)
            c = _slice(_plus(outputs, zero), 0, width, self.axis)
            stored_b = bottlenecks[index]
            if stored_b is not None:
                stored_b = _plus(stored_b, zero)
            statistics = moments[position[index] : position[index] + 4]
            d_c, grads[index] = self._layer_backward(
                layer, c, stored_b, statistics, d_f
            )
            gradient = gradient + d_c
        return gradient, tuple(grads), tuple(None for _ in seeds)

    def _layer_backward(self, layer, c, stored_b, statistics, d_f):
        """Recompute one dense layer from its input `c` and return the
        gradients of its input and weights (in `weights()` order)."""
        batch_norm = self.spec.batch_norm
        axis = self.axis

        def recompute(x, gamma, beta, moments):
            return batch_norm_relu.recompute_batch_norm_relu(
                x, gamma, beta, *moments, axis, batch_norm
            )

        def backward(d_outputs, x, outputs, gamma, moments):
            d_y = batch_norm_relu.relu_gradient(d_outputs, outputs)
            d_x, d_gamma, d_beta = batch_norm_relu.batch_norm_gradient(
                d_y, x, gamma, *moments, axis, batch_norm
            )
            return d_x, _cast(d_gamma, gamma), _cast(d_beta, gamma)

        moments0, moments1 = statistics[:2], statistics[2:]
        h1 = recompute(c, layer.gamma0, layer.beta0, moments0)
        if not layer.has_bottleneck:
            d_h1, d_kernel2 = self._conv_transpose(h1, layer.kernel2, d_f)
            d_c, d_gamma0, d_beta0 = backward(
                d_h1, c, h1, layer.gamma0, moments0
            )
            return d_c, (d_gamma0, d_beta0, d_kernel2)
        b = self._conv(h1, layer.kernel1) if stored_b is None else stored_b
        h2 = recompute(b, layer.gamma1, layer.beta1, moments1)
        d_h2, d_kernel2 = self._conv_transpose(h2, layer.kernel2, d_f)
        d_b, d_gamma1, d_beta1 = backward(d_h2, b, h2, layer.gamma1, moments1)
        d_h1, d_kernel1 = self._conv_transpose(h1, layer.kernel1, d_b)
        d_c, d_gamma0, d_beta0 = backward(d_h1, c, h1, layer.gamma0, moments0)
        return d_c, (d_gamma0, d_beta0, d_kernel1, d_gamma1, d_beta1, d_kernel2)

    def _dropout(self, x, index, seeds):
        if seeds[index] is None:
            return x
        return keras.random.dropout(
            x, self.spec.layers[index].dropout_rate, seed=seeds[index]
        )

    def _conv(self, x, kernel):
        return convolution(x, kernel, self.spec.data_format)

    def _conv_transpose(self, x, kernel, d_y):
        """The gradients of `conv(x, kernel)` with respect to `x` and
        `kernel`, from the transposes of the two linear maps: the forward
        convolution is not run."""
        (d_x,) = jax.linear_transpose(lambda x: self._conv(x, kernel), x)(d_y)
        (d_kernel,) = jax.linear_transpose(
            lambda kernel: self._conv(x, kernel), kernel
        )(d_y)
        return d_x, d_kernel


def _slice(x, start, stop, axis):
    stop = x.shape[axis] if stop is None else stop
    return jax.lax.slice_in_dim(x, start, stop, axis=axis)


def _concatenate(tensors, axis):
    if len(tensors) == 1:
        return tensors[0]
    return ops.concatenate(tensors, axis=axis)


def _cast(gradient, primal):
    return ops.cast(gradient, primal.dtype)


def _zero_after(*tensors):
    """A float32 scalar zero that XLA computes from the first element of
    each of `tensors`, so only after them. (It is NaN when one of those
    elements is infinite or NaN; the gradients are then not finite
    anyway.)"""
    total = 0.0
    for tensor in tensors:
        total = total + ops.cast(ops.reshape(tensor, (-1,))[0], "float32")
    return total * 0.0


def _plus(x, zero):
    return x + ops.cast(zero, x.dtype)
