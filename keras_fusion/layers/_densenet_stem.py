import keras
from keras import ops

from keras_fusion import backend
from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_feature_map_shape
from keras_fusion._internal.checks import check_synchronized
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.backend.batch_norm_relu import update_moving_statistics
from keras_fusion.backend.dense_block_spec import BatchNormSpec


@keras.saving.register_keras_serializable(package="keras_fusion")
class DenseNetStem(keras.layers.Layer):
    """The ImageNet DenseNets' stem after its 7x7 convolution.

    BatchNorm -> ReLU -> zero padding by 1 -> 3x3 max pooling with stride 2,
    the `conv1_bn`, `conv1_relu`, `ZeroPadding2D` and `pool1` layers of
    `keras.applications.densenet`, in one layer. With `recompute=True` a
    training step keeps only its input (the 7x7 convolution's output,
    which the plain BatchNorm keeps too), its output (which the first dense
    block keeps) and BatchNorm's batch statistics: the backward pass
    recomputes BatchNorm and ReLU from those, as `MemoryEfficientDenseBlock`
    does. With `recompute=False` it runs the plain layers' ops. Outputs,
    gradients and moving statistics (updated once per step) are the plain
    layers' either way; inference runs the plain layers' ops.

    Private: the DenseNet builders use it, named `conv1`, for every
    `recompute`, with `return_features=True`, so that their weights map one
    to one whatever `recompute` is and `model.get_layer("conv1").output[1]`
    is `keras.applications`' `conv1_relu` output, the stride-2 feature a
    U-Net takes as its first skip. It is registered so that `.keras` files
    of those models load.

    Args:
        batch_norm_momentum: momentum of the BatchNorm's moving statistics.
        batch_norm_epsilon: epsilon of the BatchNorm.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend).
        recompute: `True` (the default: the layer was the recomputing stem
            only, and files saved before this argument existed lack it) to
            recompute BatchNorm and ReLU in the backward pass; `False` for
            the plain layers' ops.
        return_features: `False` to return the pooled feature map;
            `True` to return `[pooled, features]`, `features` being the
            ReLU's output (before the padding and the pooling). Its
            gradient, when a loss uses it, joins the pooling's in the
            backward pass; when it is unused, nothing more is kept for the
            backward pass.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A 4D feature map with a known channel count.

    Output shape:
        The same channels; each spatial size `d` becomes `(d - 1) // 2 + 1`.
        With `return_features`, `[that, the input's shape]`.

    Sublayers, for `keras.applications` weight mapping: `bn` (`conv1_bn`
    there, this layer being named `conv1`).

    Reference:
        - [Pleiss et al., 2017, "Memory-Efficient Implementation of
          DenseNets"](https://arxiv.org/abs/1707.06990)
    """

    def __init__(
        self,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1.001e-5,
        data_format=None,
        synchronized=False,
        recompute=True,
        return_features=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.batch_norm_momentum, self.batch_norm_epsilon = (
            check_batch_norm_arguments(batch_norm_momentum, batch_norm_epsilon)
        )
        self.data_format = standardize_data_format(data_format)
        self.synchronized = check_synchronized(synchronized)
        self.recompute = check_bool(recompute, "recompute")
        self.return_features = check_bool(return_features, "return_features")

    def build(self, input_shape):
        rank, axis, _ = check_feature_map_shape(
            input_shape, self.data_format, self.__class__.__name__
        )
        if rank != 4:
            raise ValueError(
                f"`{self.__class__.__name__}` expects a 2D feature map of "
                f"rank 4. Received: input_shape={tuple(input_shape)}"
            )
        self.bn = keras.layers.BatchNormalization(
            axis=axis,
            epsilon=self.batch_norm_epsilon,
            momentum=self.batch_norm_momentum,
            synchronized=self.synchronized,
            dtype=self.dtype_policy,
            name="bn",
        )
        self.bn.build(input_shape)

    def call(self, inputs, training=None):
        # A frozen BatchNorm normalizes with its moving statistics, as in
        # Keras: that is the plain path's work.
        if training and self.recompute and self.trainable and self.bn.trainable:
            return _recomputing_training_step(self, inputs)
        features = ops.relu(self.bn(inputs, training=training))
        pooled = ops.max_pool(
            ops.pad(features, _padding(self.data_format)),
            pool_size=3,
            strides=2,
            data_format=self.data_format,
        )
        return [pooled, features] if self.return_features else pooled

    def compute_output_shape(self, input_shape):
        output_shape = list(input_shape)
        spatial = (2, 3) if self.data_format == "channels_first" else (1, 2)
        for axis in spatial:
            if input_shape[axis] is not None:
                output_shape[axis] = (input_shape[axis] - 1) // 2 + 1
        if self.return_features:
            return [tuple(output_shape), tuple(input_shape)]
        return tuple(output_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "data_format": self.data_format,
                "synchronized": self.synchronized,
                "recompute": self.recompute,
                "return_features": self.return_features,
            }
        )
        return config


def _padding(data_format):
    """`ZeroPadding2D(1)`'s padding of a 4D tensor."""
    if data_format == "channels_first":
        return [[0, 0], [0, 0], [1, 1], [1, 1]]
    return [[0, 0], [1, 1], [1, 1], [0, 0]]


def _recomputing_training_step(stem, inputs):
    """`stem`'s training step through a recomputing kernel, which receives
    the weights as tensors and returns the output (with `return_features`,
    `[pooled, features]`) and BatchNorm's batch statistics; the moving
    statistics are updated here, once."""
    outputs, (mean, variance) = backend.recomputing_stem(
        # In the compute dtype, as the Keras BatchNormalization casts it
        # (also where `stateless_call` runs `call` without `__call__`).
        ops.cast(inputs, stem.compute_dtype),
        stem.bn.gamma.value,
        stem.bn.beta.value,
        BatchNormSpec(
            epsilon=stem.batch_norm_epsilon, synchronized=stem.synchronized
        ),
        stem.data_format,
        return_features=stem.return_features,
    )
    update_moving_statistics(
        stem.bn.moving_mean,
        stem.bn.moving_variance,
        mean,
        variance,
        stem.batch_norm_momentum,
    )
    return outputs
