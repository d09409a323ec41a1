"""Conversion of a `keras.applications` DenseNet into ours.

Reference:
- [Densely Connected Convolutional Networks](
    https://arxiv.org/abs/1608.06993) (Huang et al., CVPR 2017)
- [Memory-Efficient Implementation of DenseNets](
    https://arxiv.org/abs/1707.06990) (Pleiss et al., 2017)
"""

import keras

from keras_fusion.models.densenet import DenseNet
from keras_fusion.models.densenet_weights import copy_keras_application_weights


def from_keras_application(
    model,
    recompute=True,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
):
    """Convert a `keras.applications` DenseNet into ours, weights included.

    Builds the `DenseNet` of `model`'s blocks, input shape, top and
    pooling, and copies every weight by layer name (see
    `copy_keras_application_weights`). With the default BatchNorm settings,
    `keras.applications`' own, the result computes the same function as
    `model` in inference and in training.

    Example:

    >>> import keras
    >>> from keras_fusion.models import from_keras_application
    >>> source = keras.applications.DenseNet121(
    ...     weights=None, input_shape=(64, 64, 3), classes=10
    ... )
    >>> ours = from_keras_application(source)
    >>> ours.count_params() == source.count_params()
    True
    >>> ours.get_layer("conv4").recompute
    True

    Args:
        model: a `keras.applications.DenseNet121`, `DenseNet169` or
            `DenseNet201` model (any weights, top or not, any pooling),
            built with `"channels_last"`.
        recompute: the dense blocks' recomputation policy: `"full"` (same
            as `True`), `"concat_bn"` or `False` (see
            `MemoryEfficientDenseBlock`); any but `False` also recomputes
            the transitions and the stem (see `DenseNet`).
        dropout_rate: dropout after each dense layer's 3x3 convolution.
        batch_norm_momentum: the momentum of every BatchNormalization's
            moving statistics; `keras.applications`' 0.99 by default, a
            lower one (0.9) for fine-tuning.
        batch_norm_epsilon: the epsilon of every BatchNormalization;
            `keras.applications`' 1.001e-5 by default.

    Returns:
        A `keras.Model` built by `DenseNet`, with `model`'s weights and
        name.

    Raises:
        ValueError: if `model` is not a `keras.applications` DenseNet.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` should be a keras.applications DenseNet (a "
            "`keras.Model`). Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    blocks = []
    for index in range(2, 6):
        count = 0
        while _has_layer(model, f"conv{index}_block{count + 1}_0_bn"):
            count += 1
        blocks.append(count)
    if 0 in blocks:
        raise ValueError(
            "`model` should be a keras.applications DenseNet (layers "
            f"conv2_block1_0_bn ...). Received: a model named {model.name!r}"
        )
    include_top = _has_layer(model, "predictions")
    pooling = None
    if not include_top:
        if _has_layer(model, "avg_pool"):
            pooling = "avg"
        elif _has_layer(model, "max_pool"):
            pooling = "max"
    top = model.get_layer("predictions") if include_top else None
    ours = DenseNet(
        blocks,
        include_top=include_top,
        weights=None,
        input_shape=tuple(model.input_shape[1:]),
        pooling=pooling,
        classes=top.units if top is not None else 1000,
        classifier_activation=top.activation if top is not None else None,
        recompute=recompute,
        dropout_rate=dropout_rate,
        batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon,
        data_format="channels_last",
        name=model.name,
    )
    copy_keras_application_weights(model, ours)
    return ours


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)
