import keras
from keras import ops

from keras_fusion import backend
from keras_fusion._internal.checks import channel_axis
from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_feature_map_shape
from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import check_real
from keras_fusion._internal.checks import check_seed
from keras_fusion._internal.checks import check_synchronized
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.backend.batch_norm_relu import update_moving_statistics
from keras_fusion.backend.dense_block_spec import BatchNormSpec
from keras_fusion.backend.dense_block_spec import DenseBlockSpec
from keras_fusion.backend.dense_block_spec import DenseLayerSpec
from keras_fusion.layers._seed_states import load_state
from keras_fusion.layers._seed_states import save_seed_states

_POLICIES = {True: "full", "full": "full", "concat_bn": "concat_bn"}
_CONV_CLASSES = {3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}


@keras.saving.register_keras_serializable(package="keras_fusion")
class MemoryEfficientDenseBlock(keras.layers.Layer):
    """A DenseNet dense block whose training memory grows linearly in depth.

    Each of the `num_layers` layers computes BatchNorm -> ReLU -> 1x1
    convolution to `bottleneck_factor * growth_rate` channels (DenseNet-B)
    -> BatchNorm -> ReLU -> 3x3 convolution to `growth_rate` channels ->
    dropout, on the concatenation of the block's input and every earlier
    layer's output; the block returns the concatenation of its input and all
    new features, as `keras.applications.densenet` does (Huang et al. 2017,
    "Densely Connected Convolutional Networks"), or with
    `return_new_features=True` the new features only, as the up-sampling
    path of FC-DenseNet needs (Jégou et al. 2017, "The One Hundred Layers
    Tiramisu").

    Stored naively, the concatenations and their BatchNorm/ReLU outputs make
    training memory quadratic in depth. With `recompute` the block keeps only
    what cannot be recomputed cheaply and recomputes the rest during the
    backward pass (Pleiss et al. 2017, "Memory-Efficient Implementation of
    DenseNets"), with the same results as `recompute=False`: gradients
    equal, BatchNorm moving statistics updated once per step, and the same
    dropout mask in the recomputation (which `keras.remat` and
    `tf.recompute_grad` around the layers get wrong).

    - `recompute="full"` (or `True`): keep each layer's `growth_rate` new
      channels only; recompute concatenation, BatchNorm, ReLU and the 1x1
      convolution. Least memory.
    - `recompute="concat_bn"`: Pleiss et al.'s policy: keep the convolution
      outputs too, recompute only concatenation, BatchNorm and ReLU. Least
      time added.
    - `recompute=False`: the plain block, storing everything.

    Recomputation happens only in training mode, with every backend
    (TensorFlow: a custom gradient; JAX and PyTorch: `keras.remat` around
    pure per-layer functions); inference (and so `model.export()`) runs the
    plain block.

    Example:

    >>> import numpy as np
    >>> from keras_fusion import MemoryEfficientDenseBlock
    >>> block = MemoryEfficientDenseBlock(num_layers=4, growth_rate=12)
    >>> x = np.random.rand(2, 8, 8, 24).astype("float32")
    >>> tuple(block(x, training=True).shape)
    (2, 8, 8, 72)
    >>> new_only = MemoryEfficientDenseBlock(
    ...     num_layers=4, growth_rate=12, return_new_features=True
    ... )
    >>> tuple(new_only(x, training=True).shape)
    (2, 8, 8, 48)

    Args:
        num_layers: the number of dense layers.
        growth_rate: channels each layer adds (`k` in the paper).
        bottleneck_factor: the 1x1 bottleneck convolution has
            `bottleneck_factor * growth_rate` channels (DenseNet-B); `None`
            leaves it out (BatchNorm -> ReLU -> 3x3 convolution).
        dropout_rate: dropout after each 3x3 convolution, in training.
        recompute: `"full"` (same as `True`), `"concat_bn"` or `False`.
        batch_norm_momentum: momentum of every BatchNorm's moving
            statistics (`keras.layers.BatchNormalization(momentum=...)`).
        batch_norm_epsilon: epsilon of every BatchNorm; the default is
            `keras.applications.DenseNet*`'s.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        kernel_initializer: initializer of the convolution kernels.
        kernel_regularizer: regularizer of the convolution kernels.
        seed: seed of the dropout masks.
        synchronized: with the TensorFlow backend under a `tf.distribute`
            strategy, compute BatchNorm's batch statistics over the global
            batch (all replicas), as
            `keras.layers.BatchNormalization(synchronized=True)` does.
        return_new_features: whether to return only the `num_layers *
            growth_rate` new feature maps instead of their concatenation
            with the input (`False`, the default). The new features come
            in the order of the layers either way.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A 3D, 4D or 5D feature map with a known channel count `C`:
        `(batch, *spatial, C)` with `"channels_last"`, `(batch, C,
        *spatial)` with `"channels_first"`. Spatial sizes may be `None`.

    Output shape:
        The input's shape with `C + num_layers * growth_rate` channels
        (`num_layers * growth_rate` with `return_new_features`).

    Masking: not supported; the convolutions mix neighbouring positions,
    so an input mask is neither used nor propagated.

    Sublayers, for `keras.applications` weight mapping: layer `i`
    (1-based) owns `block{i}_0_bn`, `block{i}_1_conv`, `block{i}_1_bn`,
    `block{i}_2_conv` (and `block{i}_dropout`), as
    `keras.applications.densenet.conv_block` names them.

    Reference:
        - [Huang et al., 2017, "Densely Connected Convolutional
          Networks"](https://arxiv.org/abs/1608.06993)
        - [Pleiss et al., 2017, "Memory-Efficient Implementation of
          DenseNets"](https://arxiv.org/abs/1707.06990)
    """

    def __init__(
        self,
        num_layers,
        growth_rate,
        bottleneck_factor=4,
        dropout_rate=0.0,
        recompute=True,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1.001e-5,
        data_format=None,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        seed=None,
        synchronized=False,
        return_new_features=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_layers = check_positive_int(num_layers, "num_layers")
        growth_rate = check_positive_int(growth_rate, "growth_rate")
        if bottleneck_factor is not None:
            bottleneck_factor = check_positive_int(
                bottleneck_factor, "bottleneck_factor"
            )
        dropout_rate = check_real(
            dropout_rate,
            "dropout_rate",
            "a float in [0, 1)",
            lambda v: 0 <= v < 1,
        )
        # A bool or a policy name: 1, 1.0 and np.True_ equal True, and
        # would otherwise be taken for it.
        if recompute is not False and (
            not isinstance(recompute, (bool, str)) or recompute not in _POLICIES
        ):
            raise ValueError(
                "`recompute` should be one of 'full' (or True), 'concat_bn' "
                f"or False. Received: recompute={recompute!r}"
            )
        batch_norm_momentum, batch_norm_epsilon = check_batch_norm_arguments(
            batch_norm_momentum, batch_norm_epsilon
        )
        self.num_layers = num_layers
        self.growth_rate = growth_rate
        self.bottleneck_factor = bottleneck_factor
        self.dropout_rate = dropout_rate
        self.recompute = recompute
        self.recompute_policy = _POLICIES.get(recompute, False)
        self.batch_norm_epsilon = batch_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        self.data_format = standardize_data_format(data_format)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.seed = check_seed(seed)
        self.synchronized = check_synchronized(synchronized)
        self.return_new_features = check_bool(
            return_new_features, "return_new_features"
        )

    def build(self, input_shape):
        rank, axis, channels = check_feature_map_shape(
            input_shape, self.data_format, self.__class__.__name__
        )
        conv_class = getattr(keras.layers, _CONV_CLASSES[rank])
        shape = list(input_shape)
        self.dense_layers = []
        self._sublayers = []
        for index in range(self.num_layers):
            shape[axis] = channels + index * self.growth_rate
            parts = _DenseLayerParts(self, index + 1, conv_class, axis)
            parts.build(tuple(shape))
            self.dense_layers.append(parts)
            self._sublayers.extend(parts.layers())

    def call(self, inputs, training=None):
        if training and self.recompute_policy and self.trainable:
            return _recomputing_training_step(self, inputs)
        axis = channel_axis(len(inputs.shape), self.data_format)
        features = [inputs]
        for parts in self.dense_layers:
            x = (
                ops.concatenate(features, axis=axis)
                if parts.index > 1
                else inputs
            )
            x = ops.relu(parts.bn_0(x, training=training))
            if parts.conv_1 is not None:
                x = parts.conv_1(x)
                x = ops.relu(parts.bn_1(x, training=training))
            x = parts.conv_2(x)
            if parts.dropout is not None:
                x = parts.dropout(x, training=training)
            features.append(x)
        if self.return_new_features:
            features = features[1:]
        if len(features) == 1:
            return features[0]
        return ops.concatenate(features, axis=axis)

    def compute_output_shape(self, input_shape):
        axis = channel_axis(len(input_shape), self.data_format)
        output_shape = list(input_shape)
        new_channels = self.num_layers * self.growth_rate
        if self.return_new_features:
            output_shape[axis] = new_channels
        elif output_shape[axis] is not None:
            output_shape[axis] += new_channels
        return tuple(output_shape)

    def save_own_variables(self, store):
        # With the dropout seed states, which Keras leaves out (see
        # `_seed_states`): a training resumed from a backup draws on.
        super().save_own_variables(store)
        save_seed_states(self, store)

    def load_own_variables(self, store):
        load_state(self, store)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "growth_rate": self.growth_rate,
                "bottleneck_factor": self.bottleneck_factor,
                "dropout_rate": self.dropout_rate,
                "recompute": self.recompute,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
                "data_format": self.data_format,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "seed": self.seed,
                "synchronized": self.synchronized,
                "return_new_features": self.return_new_features,
            }
        )
        return config


def _recomputing_training_step(block, inputs):
    """`block`'s training step through a recomputing kernel, which receives
    the block as a `DenseBlockSpec` (weights, BatchNorm settings, dropout
    rates and seed generators; no Layer) and returns the output and the
    batch statistics; the moving statistics are updated here, once."""
    compute_dtype = keras.backend.standardize_dtype(inputs.dtype)
    spec = DenseBlockSpec(
        layers=tuple(parts.spec(compute_dtype) for parts in block.dense_layers),
        batch_norm=BatchNormSpec(
            epsilon=block.batch_norm_epsilon,
            synchronized=block.synchronized,
        ),
        policy=block.recompute_policy,
        data_format=block.data_format,
        return_new_features=block.return_new_features,
    )
    outputs, statistics = backend.recomputing_dense_block(spec, inputs)
    batch_norms = [
        bn for parts in block.dense_layers for bn in parts.batch_norms()
    ]
    for bn, (mean, variance) in zip(batch_norms, statistics, strict=True):
        update_moving_statistics(
            bn.moving_mean,
            bn.moving_variance,
            mean,
            variance,
            block.batch_norm_momentum,
        )
    return outputs


class _DenseLayerParts:
    """The sublayers of one dense layer, named as keras.applications does."""

    def __init__(self, block, index, conv_class, axis):
        self.index = index
        common = {"dtype": block.dtype_policy}
        conv_args = {
            "use_bias": False,
            "data_format": block.data_format,
            **common,
        }
        bn_args = {
            "axis": axis,
            "epsilon": block.batch_norm_epsilon,
            "momentum": block.batch_norm_momentum,
            "synchronized": block.synchronized,
            **common,
        }
        prefix = f"block{index}"
        self.bn_0 = keras.layers.BatchNormalization(
            name=f"{prefix}_0_bn", **bn_args
        )
        self.conv_1 = self.bn_1 = None
        if block.bottleneck_factor is not None:
            self.conv_1 = conv_class(
                block.bottleneck_factor * block.growth_rate,
                1,
                name=f"{prefix}_1_conv",
                **conv_args,
                **_own_kernel_initializer_and_regularizer(block),
            )
            self.bn_1 = keras.layers.BatchNormalization(
                name=f"{prefix}_1_bn", **bn_args
            )
        self.conv_2 = conv_class(
            block.growth_rate,
            3,
            padding="same",
            name=f"{prefix}_2_conv",
            **conv_args,
            **_own_kernel_initializer_and_regularizer(block),
        )
        self.dropout = None
        if block.dropout_rate:
            seed = None if block.seed is None else block.seed + index
            self.dropout = keras.layers.Dropout(
                block.dropout_rate,
                seed=seed,
                name=f"{prefix}_dropout",
                **common,
            )

    def layers(self):
        parts = [self.bn_0, self.conv_1, self.bn_1, self.conv_2, self.dropout]
        return [layer for layer in parts if layer is not None]

    def batch_norms(self):
        return [self.bn_0] if self.bn_1 is None else [self.bn_0, self.bn_1]

    def spec(self, compute_dtype):
        """This layer's weights (kernels in `compute_dtype`, as the Keras
        convolutions cast them), dropout rate and seed generator."""

        def kernel(conv):
            return ops.cast(conv.kernel.value, compute_dtype)

        bottleneck = self.conv_1 is not None
        return DenseLayerSpec(
            gamma0=self.bn_0.gamma.value,
            beta0=self.bn_0.beta.value,
            kernel1=kernel(self.conv_1) if bottleneck else None,
            gamma1=self.bn_1.gamma.value if bottleneck else None,
            beta1=self.bn_1.beta.value if bottleneck else None,
            kernel2=kernel(self.conv_2),
            dropout_rate=self.dropout.rate if self.dropout else 0.0,
            dropout_seed=self.dropout.seed_generator if self.dropout else None,
        )

    def build(self, input_shape):
        self.bn_0.build(input_shape)
        shape = input_shape
        if self.conv_1 is not None:
            self.conv_1.build(shape)
            shape = self.conv_1.compute_output_shape(shape)
            self.bn_1.build(shape)
        self.conv_2.build(shape)


def _own_kernel_initializer_and_regularizer(block):
    """A new initializer and regularizer, from the block's configs, for one
    convolution: a Keras 3 initializer without a seed fixes its seed when
    it is created, so one object shared by the convolutions would start
    every same-shaped kernel equal (Keras's own layers with sublayers, such
    as `MultiHeadAttention`, clone them the same way)."""
    return {
        "kernel_initializer": keras.initializers.get(
            keras.initializers.serialize(block.kernel_initializer)
        ),
        "kernel_regularizer": keras.regularizers.get(
            keras.regularizers.serialize(block.kernel_regularizer)
        ),
    }
