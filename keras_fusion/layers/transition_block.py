import math

import keras
from keras import ops

from keras_fusion import backend
from keras_fusion._internal.checks import channel_axis
from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_feature_map_shape
from keras_fusion._internal.checks import check_real
from keras_fusion._internal.checks import check_synchronized
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.backend.batch_norm_relu import update_moving_statistics
from keras_fusion.backend.dense_block_spec import BatchNormSpec

_CONV_CLASSES = {3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}
_POOL_CLASSES = {
    3: "AveragePooling1D",
    4: "AveragePooling2D",
    5: "AveragePooling3D",
}


@keras.saving.register_keras_serializable(package="keras_fusion")
class TransitionBlock(keras.layers.Layer):
    """The DenseNet transition between dense blocks (DenseNet-C).

    BatchNorm -> ReLU -> 1x1 convolution to `floor(C * compression_ratio)`
    channels -> 2x2 average pooling with stride 2, as
    `keras.applications.densenet.transition_block` runs it;
    `compression_ratio` is the paper's compression factor `theta` (0.5 in
    DenseNet-BC).

    With `recompute=True`, a training step keeps only the input (which the
    dense block before a transition keeps anyway) and BatchNorm's batch
    statistics for the backward pass, instead of the BatchNorm, ReLU and
    convolution outputs, and recomputes BatchNorm and ReLU there from the
    saved statistics, as `MemoryEfficientDenseBlock` does (Pleiss et al.
    2017, "Memory-Efficient Implementation of DenseNets"). Outputs,
    gradients and moving statistics (updated once per step) are those of
    `recompute=False`. Recomputation happens only in training mode, with
    every backend (TensorFlow: a custom gradient; JAX and PyTorch:
    `keras.remat` around a pure function); inference (and so
    `model.export()`) runs the plain layers.

    Example:

    >>> import numpy as np
    >>> from keras_fusion import TransitionBlock
    >>> x = np.random.rand(2, 16, 16, 72).astype("float32")
    >>> tuple(TransitionBlock(compression_ratio=0.5)(x).shape)
    (2, 8, 8, 36)

    Args:
        compression_ratio: the fraction of channels kept, in `(0, 1]`.
        batch_norm_momentum: momentum of the BatchNorm's moving statistics
            (`keras.layers.BatchNormalization(momentum=...)`).
        batch_norm_epsilon: epsilon of the BatchNorm; the default is
            `keras.applications.DenseNet*`'s.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        kernel_initializer: initializer of the convolution kernel.
        kernel_regularizer: regularizer of the convolution kernel.
        synchronized: with the TensorFlow backend under a `tf.distribute`
            strategy, compute BatchNorm's batch statistics over the global
            batch, as `keras.layers.BatchNormalization(synchronized=True)`.
        recompute: `True` to recompute BatchNorm and ReLU in the backward
            pass instead of keeping their outputs; `False` (the default)
            for the plain layers.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A 3D, 4D or 5D feature map with a known channel count `C`.

    Output shape:
        `floor(C * compression_ratio)` channels, each spatial size halved
        (rounded down).

    Masking: not supported; an input mask is neither used nor propagated.

    Sublayers, for `keras.applications` weight mapping: `bn` and `conv`
    (`{name}_bn`, `{name}_conv` in `keras.applications`).

    Reference:
        - [Huang et al., 2017, "Densely Connected Convolutional
          Networks"](https://arxiv.org/abs/1608.06993)
        - [Pleiss et al., 2017, "Memory-Efficient Implementation of
          DenseNets"](https://arxiv.org/abs/1707.06990)
    """

    def __init__(
        self,
        compression_ratio=0.5,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1.001e-5,
        data_format=None,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        synchronized=False,
        recompute=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.compression_ratio = check_real(
            compression_ratio,
            "compression_ratio",
            "a float in (0, 1]",
            lambda v: 0 < v <= 1,
        )
        self.batch_norm_momentum, self.batch_norm_epsilon = (
            check_batch_norm_arguments(batch_norm_momentum, batch_norm_epsilon)
        )
        self.data_format = standardize_data_format(data_format)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.synchronized = check_synchronized(synchronized)
        self.recompute = check_bool(recompute, "recompute")

    def build(self, input_shape):
        rank, axis, channels = check_feature_map_shape(
            input_shape, self.data_format, self.__class__.__name__
        )
        self.filters = self._filters(channels)
        self.bn = keras.layers.BatchNormalization(
            axis=axis,
            epsilon=self.batch_norm_epsilon,
            momentum=self.batch_norm_momentum,
            synchronized=self.synchronized,
            dtype=self.dtype_policy,
            name="bn",
        )
        self.conv = getattr(keras.layers, _CONV_CLASSES[rank])(
            self.filters,
            1,
            use_bias=False,
            data_format=self.data_format,
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name="conv",
        )
        self.pool = getattr(keras.layers, _POOL_CLASSES[rank])(
            2, strides=2, data_format=self.data_format, dtype=self.dtype_policy
        )
        self.bn.build(input_shape)
        self.conv.build(input_shape)

    def call(self, inputs, training=None):
        # A frozen BatchNorm normalizes with its moving statistics, as in
        # Keras: that is the plain path's work.
        if training and self.recompute and self.trainable and self.bn.trainable:
            return _recomputing_training_step(self, inputs)
        x = ops.relu(self.bn(inputs, training=training))
        return self.pool(self.conv(x))

    def compute_output_shape(self, input_shape):
        axis = channel_axis(len(input_shape), self.data_format)
        output_shape = list(input_shape)
        for i in range(1, len(input_shape)):
            if i == axis:
                channels = input_shape[i]
                output_shape[i] = (
                    None if channels is None else self._filters(channels)
                )
            elif input_shape[i] is not None:
                output_shape[i] = input_shape[i] // 2
        return tuple(output_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "compression_ratio": self.compression_ratio,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
                "data_format": self.data_format,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "synchronized": self.synchronized,
                "recompute": self.recompute,
            }
        )
        return config

    def _filters(self, channels):
        # keras.applications.densenet.transition_block takes
        # int(channels * compression_ratio), the floor for positive values; at
        # least one channel is kept where that would give none.
        return max(1, math.floor(channels * self.compression_ratio))


def _recomputing_training_step(block, inputs):
    """`block`'s training step through a recomputing kernel, which receives
    the weights as tensors and returns the output and BatchNorm's batch
    statistics; the moving statistics are updated here, once."""
    # In the compute dtype, as the Keras sublayers cast them (also where
    # `stateless_call` runs `call` without `__call__`'s cast).
    compute_dtype = block.compute_dtype
    outputs, (mean, variance) = backend.recomputing_transition(
        ops.cast(inputs, compute_dtype),
        block.bn.gamma.value,
        block.bn.beta.value,
        ops.cast(block.conv.kernel.value, compute_dtype),
        BatchNormSpec(
            epsilon=block.batch_norm_epsilon, synchronized=block.synchronized
        ),
        block.data_format,
    )
    update_moving_statistics(
        block.bn.moving_mean,
        block.bn.moving_variance,
        mean,
        variance,
        block.batch_norm_momentum,
    )
    return outputs
