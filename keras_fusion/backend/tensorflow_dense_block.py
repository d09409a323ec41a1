"""Training step of a dense block that recomputes instead of storing.

Why this is TensorFlow code and not `keras.ops`: the memory saving needs a
custom gradient that (a) keeps only each layer's `growth_rate` new channels
(and, for `"concat_bn"`, the bottleneck convolution's output) for the
backward pass, (b) recomputes the rest layer by layer in the backward pass,
sequenced after the incoming gradient so that the recomputed tensors of
different layers are never alive together, and (c) does not run the 3x3
convolution forward again: its input and kernel gradients come straight
from `Conv*DBackpropInput`/`Conv*DBackpropFilter`. `keras.remat` and
`tf.recompute_grad` around a layer do none of (c), update BatchNorm's moving
statistics a second time during the recomputation and draw a new dropout
mask there. In the backward pass BatchNorm is recomputed from the forward
pass's saved batch statistics (so the recomputed activations and ReLU
branches are the forward pass's, bit for bit) and differentiated with its
analytic gradient: 23 ms here on a 32x32x32x216 tensor where autodiff of
the ops of `keras.layers.BatchNormalization` takes 31 ms. (TensorFlow's
fused BatchNorm kernels take 14 ms but compute the statistics their own
way; near-zero ReLU inputs then flip branch, which moved a DenseNet-121's
gradients by 1%.)
`benchmarks/dense_block_memory.py` measures what all of this buys.

Everything here runs in `channels_last`; `channels_first` inputs are
transposed on the way in and out.

Agreement with the plain block (`recompute=False`, Keras sublayers), which
the tests check to 1e-5 relative (gradients) and 1e-6 (statistics):
- the forward pass computes BatchNorm with the ops of the Keras layer, so
  outputs and batch statistics are the plain block's, and updates the
  moving statistics once per step, with the Keras layer's formula;
- the gradients are the analytic gradients of the same function, summed
  in another order (about 1e-6 relative apart);
- dropout uses the dropout sublayer's seed generator, drawn once per step;
  the backward pass applies the same stateless mask to the gradient.
"""

import keras
import tensorflow as tf


def recomputing_dense_block(block, inputs):
    """Run `block` (a `MemoryEfficientDenseBlock`) in training mode.

    Returns the block's output; the BatchNorm moving statistics are updated.
    """
    channels_first = block.data_format == "channels_first"
    rank = len(inputs.shape)
    to_last, to_first = _permutations(rank)
    x = tf.transpose(inputs, to_last) if channels_first else inputs
    compute_dtype = x.dtype

    params = []
    seeds = []
    for layer in block.dense_layers:
        params.append(layer.bn_0.gamma.value)
        params.append(layer.bn_0.beta.value)
        if layer.conv_1 is not None:
            params.append(tf.cast(layer.conv_1.kernel.value, compute_dtype))
            params.append(layer.bn_1.gamma.value)
            params.append(layer.bn_1.beta.value)
        params.append(tf.cast(layer.conv_2.kernel.value, compute_dtype))
        if layer.dropout is not None:
            seeds.append(_cast_seed(layer.dropout.seed_generator.next()))

    kernel = _DenseBlockKernel(block, channels_first, seeds)
    outputs = kernel(x, params)
    _update_moving_statistics(block, kernel.batch_moments)
    return tf.transpose(outputs, to_first) if channels_first else outputs


class _DenseBlockKernel:
    def __init__(self, block, channels_first, seeds):
        self.block = block
        self.policy = block.recompute_policy
        self.channels_first = channels_first
        self.seeds = seeds
        self.batch_moments = []

    def __call__(self, x, params):
        @tf.custom_gradient
        def dense_block(x, *params):
            outputs, moments, grad_fn = self._forward(x, params)
            return (outputs, *moments), grad_fn

        outputs, *moments = dense_block(x, *params)
        self.batch_moments = [
            (tf.stop_gradient(m), tf.stop_gradient(v))
            for m, v in zip(moments[::2], moments[1::2], strict=True)
        ]
        return outputs

    def _unpack(self, params):
        per_layer = []
        position = 0
        for layer in self.block.dense_layers:
            bottleneck = layer.conv_1 is not None
            count = 6 if bottleneck else 3
            values = params[position : position + count]
            position += count
            if bottleneck:
                gamma0, beta0, kernel1, gamma1, beta1, kernel2 = values
            else:
                gamma0, beta0, kernel2 = values
                kernel1 = gamma1 = beta1 = None
            per_layer.append((gamma0, beta0, kernel1, gamma1, beta1, kernel2))
        return per_layer

    def _dropout(self, x, index):
        layer = self.block.dense_layers[index]
        if layer.dropout is None:
            return x
        # Drawn in the layout the plain block's Dropout sees, so that the
        # same seed gives the same mask.
        rank = len(x.shape)
        to_last, to_first = _permutations(rank)
        if self.channels_first:
            x = tf.transpose(x, to_first)
        x = tf.nn.experimental.stateless_dropout(
            x, rate=layer.dropout.rate, seed=self.seeds[index]
        )
        return tf.transpose(x, to_last) if self.channels_first else x

    def _forward(self, x, params):
        per_layer = self._unpack(params)
        layers = self.block.dense_layers
        features = [x]
        bottlenecks = []
        moments = []
        for index, layer in enumerate(layers):
            gamma0, beta0, kernel1, gamma1, beta1, kernel2 = per_layer[index]
            c = tf.concat(features, axis=-1) if index else x
            h, mean, variance = _keras_bn_relu(c, gamma0, beta0, layer.bn_0)
            moments += [mean, variance]
            if kernel1 is not None:
                b = _conv(h, kernel1)
                if self.policy == "concat_bn":
                    bottlenecks.append(b)
                h, mean, variance = _keras_bn_relu(b, gamma1, beta1, layer.bn_1)
                moments += [mean, variance]
            f = _conv(h, kernel2)
            features.append(self._dropout(f, index))
        outputs = tf.concat(features, axis=-1)

        def grad_fn(d_outputs, *unused_moment_gradients):
            return self._backward(
                d_outputs, features, bottlenecks, moments, per_layer
            )

        return outputs, moments, grad_fn

    def _backward(self, d_outputs, features, bottlenecks, moments, per_layer):
        layers = self.block.dense_layers
        growth = self.block.growth_rate
        grads = []
        gradient = d_outputs
        # Where each layer's batch statistics start in `moments`.
        position = [0]
        for layer in layers[:-1]:
            position.append(position[-1] + (4 if layer.bn_1 else 2))
        for index in reversed(range(len(layers))):
            layer = layers[index]
            gamma0, beta0, kernel1, gamma1, beta1, kernel2 = per_layer[index]
            width = features[0].shape[-1] + index * growth
            d_f = gradient[..., width:]
            gradient = gradient[..., :width]
            d_f = self._dropout(d_f, index)
            # The control dependency holds the recomputation back until this
            # layer's gradient exists, so that only one layer's recomputed
            # tensors are alive at a time (as tf.recompute_grad does).
            with tf.control_dependencies([d_f]):
                inputs = [tf.identity(t) for t in features[: index + 1]]
                if self.policy == "concat_bn" and kernel1 is not None:
                    stored_b = tf.identity(bottlenecks[index])
            self.block._recompute_count += 1
            c = tf.concat(inputs, axis=-1) if index else inputs[0]
            stats = moments[position[index] : position[index] + 4]
            bn0 = _BatchNormReLU(c, gamma0, beta0, *stats[:2], layer.bn_0)
            if kernel1 is not None:
                b = (
                    stored_b
                    if self.policy == "concat_bn"
                    else (_conv(bn0.outputs, kernel1))
                )
                bn1 = _BatchNormReLU(b, gamma1, beta1, *stats[2:], layer.bn_1)
                h2 = bn1.outputs
            else:
                h2 = bn0.outputs
            d_kernel2 = _conv_backprop_filter(h2, d_f, kernel2.shape)
            d_h2 = _conv_backprop_input(tf.shape(h2), kernel2, d_f)
            if kernel1 is None:
                d_c, d_gamma0, d_beta0 = bn0.backward(d_h2)
                layer_grads = [d_gamma0, d_beta0, d_kernel2]
            else:
                d_b, d_gamma1, d_beta1 = bn1.backward(d_h2)
                h1 = bn0.outputs
                d_kernel1 = _conv_backprop_filter(h1, d_b, kernel1.shape)
                d_h1 = _conv_backprop_input(tf.shape(h1), kernel1, d_b)
                d_c, d_gamma0, d_beta0 = bn0.backward(d_h1)
                layer_grads = [
                    d_gamma0,
                    d_beta0,
                    d_kernel1,
                    d_gamma1,
                    d_beta1,
                    d_kernel2,
                ]
            gradient = gradient + d_c
            grads = layer_grads + grads
        return (gradient, *grads)


def _keras_bn_relu(x, gamma, beta, bn):
    """relu(BatchNorm(x)) in training mode with the ops, and so the results
    and batch statistics, of `keras.layers.BatchNormalization`."""
    dtype = x.dtype
    x = tf.cast(x, _statistics_dtype(dtype))
    mean, variance = keras.ops.moments(
        x, axes=list(range(len(x.shape) - 1)), synchronized=bn.synchronized
    )
    y = keras.ops.batch_normalization(
        x, mean, variance, axis=-1, offset=beta, scale=gamma, epsilon=bn.epsilon
    )
    return tf.nn.relu(tf.cast(y, dtype)), mean, variance


class _BatchNormReLU:
    """relu(BatchNorm(x)) recomputed in the backward pass, and its gradient.

    The recomputation runs the forward pass's ops on the forward pass's
    batch statistics, so it reproduces the stored activations bit for bit:
    a ReLU whose input is within rounding of zero takes the same branch as
    in the forward pass. The gradient is BatchNorm's analytic one (through
    the batch statistics too), in three element-wise passes instead of the
    dozen ops that autodiff of the forward ops runs.

    With a synchronized BatchNorm the statistics are the global batch's, and
    so are the sums in the gradient with respect to `x` (all-reduced over
    the replicas, as autodiff through the all-reduce of
    `keras.ops.moments(synchronized=True)` gives); the gradients of gamma
    and beta stay per replica, as the optimizer sums them.
    """

    def __init__(self, x, gamma, beta, mean, variance, bn):
        epsilon = bn.epsilon
        self.synchronized = bn.synchronized
        self.dtype = x.dtype
        self.x = tf.cast(x, _statistics_dtype(x.dtype))
        self.gamma = gamma
        self.mean = mean
        self.inverse_std = tf.math.rsqrt(variance + epsilon)
        y = keras.ops.batch_normalization(
            self.x,
            mean,
            variance,
            axis=-1,
            offset=beta,
            scale=gamma,
            epsilon=epsilon,
        )
        self.outputs = tf.nn.relu(tf.cast(y, self.dtype))

    def backward(self, d_outputs):
        """Gradients with respect to x, gamma and beta."""
        d_y = tf.raw_ops.ReluGrad(gradients=d_outputs, features=self.outputs)
        d_y = tf.cast(d_y, self.x.dtype)
        axes = list(range(len(self.x.shape) - 1))
        count = tf.cast(tf.size(d_y) // tf.shape(d_y)[-1], self.x.dtype)
        x_hat = (self.x - self.mean) * self.inverse_std
        d_beta = tf.reduce_sum(d_y, axes)
        d_gamma = tf.reduce_sum(d_y * x_hat, axes)
        sum_d_y, sum_d_y_x_hat = d_beta, d_gamma
        replica = tf.distribute.get_replica_context()
        if self.synchronized and replica is not None:
            total = tf.distribute.ReduceOp.SUM
            sum_d_y = replica.all_reduce(total, d_beta)
            sum_d_y_x_hat = replica.all_reduce(total, d_gamma)
            count = replica.all_reduce(total, count)
        d_x = (self.gamma * self.inverse_std) * (
            d_y - (sum_d_y + x_hat * sum_d_y_x_hat) / count
        )
        return tf.cast(d_x, self.dtype), d_gamma, d_beta


def _statistics_dtype(dtype):
    """BatchNorm's statistics dtype for inputs of `dtype`: float32 for
    float16/bfloat16 (as `keras.layers.BatchNormalization` computes them),
    float64 for float64."""
    return keras.backend.result_type(dtype, "float32")


def _update_moving_statistics(block, batch_moments):
    bns = []
    for layer in block.dense_layers:
        bns.append(layer.bn_0)
        if layer.bn_1 is not None:
            bns.append(layer.bn_1)
    for bn, (mean, variance) in zip(bns, batch_moments, strict=True):
        moving_mean = tf.cast(bn.moving_mean.value, mean.dtype)
        moving_variance = tf.cast(bn.moving_variance.value, mean.dtype)
        bn.moving_mean.assign(
            moving_mean * bn.momentum + mean * (1.0 - bn.momentum)
        )
        bn.moving_variance.assign(
            moving_variance * bn.momentum + variance * (1.0 - bn.momentum)
        )


def _permutations(rank):
    to_last = [0, *range(2, rank), 1]
    to_first = [0, rank - 1, *range(1, rank - 1)]
    return to_last, to_first


def _cast_seed(seed):
    # As keras's TensorFlow backend does before every stateless draw.
    if keras.backend.standardize_dtype(seed.dtype) == "int32":
        return seed
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")


def _padding(kernel_shape):
    # A 1x1 kernel pads nothing, and TensorFlow's CPU kernels run 'VALID'
    # 1x1 backprops about twice as fast as 'SAME' ones.
    return "VALID" if all(k == 1 for k in kernel_shape[:-2]) else "SAME"


def _conv_backprop_input(input_shape, kernel, d_outputs):
    """Gradient of a stride-1 'same' convolution with respect to its input."""
    return tf.nn.conv_transpose(
        d_outputs,
        kernel,
        output_shape=input_shape,
        strides=1,
        padding=_padding(kernel.shape),
    )


def _conv_backprop_filter(inputs, d_outputs, kernel_shape):
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
            padding=_padding(kernel_shape),
        )
        return d_kernel[0]
    if rank == 4:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=inputs,
            filter_sizes=list(kernel_shape),
            out_backprop=d_outputs,
            strides=[1, 1, 1, 1],
            padding=_padding(kernel_shape),
        )
    return tf.raw_ops.Conv3DBackpropFilterV2(
        input=inputs,
        filter_sizes=list(kernel_shape),
        out_backprop=d_outputs,
        strides=[1, 1, 1, 1, 1],
        padding=_padding(kernel_shape),
    )


def _conv(inputs, kernel):
    # The op keras.layers.Conv*D runs, with the block's paddings.
    return keras.ops.conv(
        inputs,
        kernel,
        padding=_padding(kernel.shape).lower(),
        data_format="channels_last",
    )
