"""FC-DenseNet, "The One Hundred Layers Tiramisu" (Jégou et al., 2017).

A U-Net made of dense blocks: `MemoryEfficientDenseBlock`s on the way
down, concatenated skips (`CropAndConcat`) on the way up, and in the up
path blocks that pass on only their new feature maps.

Reference:
- [The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for
    Semantic Segmentation](https://arxiv.org/abs/1611.09326) (Jégou et al.,
    CVPR Workshops 2017)
"""

import keras

from keras_fusion._internal.checks import channel_axis
from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import check_real
from keras_fusion._internal.checks import check_synchronized
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.layers.crop_and_concat import CropAndConcat
from keras_fusion.layers.dense_block import MemoryEfficientDenseBlock
from keras_fusion.models._inputs_and_heads import check_input_size
from keras_fusion.models._inputs_and_heads import image_input_shape
from keras_fusion.models._inputs_and_heads import model_input
from keras_fusion.models._inputs_and_heads import pixel_classifier
from keras_fusion.models._inputs_and_heads import source_inputs
from keras_fusion.models._inputs_and_heads import spatial_sizes
from keras_fusion.models._recomputed_levels import recomputed_level


def FCDenseNet(
    blocks,
    growth_rate=16,
    filters=48,
    input_tensor=None,
    input_shape=None,
    classes=11,
    classifier_activation="softmax",
    recompute=False,
    dropout_rate=0.2,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="fc_densenet",
):
    """A fully convolutional DenseNet for semantic segmentation.

    The "One Hundred Layers Tiramisu" of Jégou et al. (2017): a 3x3
    convolution with `filters` channels, then `n` levels down, each a dense
    block (BatchNorm -> ReLU -> 3x3 convolution -> dropout per layer, each
    layer adding `growth_rate` channels to the concatenation) and a
    transition down (BatchNorm -> ReLU -> 1x1 convolution keeping the
    channel count -> dropout -> 2x2 max pooling); a bottleneck dense block;
    then `n` levels up, each a transition up (a 3x3 transposed convolution
    with stride 2 of only the new feature maps of the block below) whose
    output is concatenated with the skip of the same level (the down
    block's output) and fed to a dense block. The bottleneck and the up
    blocks pass on only their new feature maps (the paper's remedy for
    the up path's growth), the last up block its whole concatenation,
    which a 1x1 convolution maps to `classes` channels.

    Any input size of at least `2**n` works and the output has the input's
    spatial size: the pooling rounds down, the transposed convolution
    ('valid' padding) gives `2 * s + 1` rows from `s`, and `CropAndConcat`
    centre-crops that up-sampled map to the skip's size (the difference is
    0 or 1 row, cropped from the end: the paper's code, Lasagne's
    `ConcatLayer(cropping=[None, None, "center", "center"])`, does the
    same); the skip is never cropped. So CamVid's 360x480 needs no padding.

    With `recompute=True` the dense blocks recompute in the backward pass
    (`MemoryEfficientDenseBlock(recompute="full")`) and each transition
    down is a sub-model wrapped in `keras_fusion.Recompute`, so that a
    training step keeps only the feature maps the model concatenates and
    the poolings' outputs, not the BatchNorm, ReLU, convolution and
    dropout outputs of every layer (see
    `benchmarks/results/fcdensenet_memory.md`). Outputs, gradients and
    BatchNorm moving statistics equal those of `recompute=False`, whose
    weights it takes in the same order.

    Only the last convolution has a bias: every other convolution's output
    reaches the output through BatchNorm, which would normalize a bias
    away, or (the first convolution's and the last transition up's, in the
    final concatenation) through the last convolution, whose bias absorbs
    it. Kernels start from He uniform, as in the paper's code. The
    BatchNorm settings default to the library's (`keras.applications`'
    DenseNet values); the paper's code (Lasagne's defaults) uses
    `batch_norm_momentum=0.9, batch_norm_epsilon=1e-4`.

    Example:

    >>> from keras_fusion.models import FCDenseNet, FCDenseNet103
    >>> FCDenseNet103().count_params()
    9421147
    >>> model = FCDenseNet(
    ...     blocks=(2, 2, 2, 2, 2), growth_rate=4, filters=8, classes=3,
    ...     input_shape=(36, 44, 3),
    ... )
    >>> model.output_shape
    (None, 36, 44, 3)
    >>> model.get_layer("up1_dense_block").return_new_features
    True

    Args:
        blocks: the number of dense layers of each dense block, in order:
            the `n` down blocks, the bottleneck and the `n` up blocks
            (`2 * n + 1` entries, `n >= 1`), e.g. FC-DenseNet103's
            `(4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4)`.
        growth_rate: channels each dense layer adds (`k`; 16 in
            FC-DenseNet67 and 103, 12 in FC-DenseNet56).
        filters: the first 3x3 convolution's channels (48 in the paper).
        input_tensor: optional tensor to use as the model's input.
        input_shape: the input shape without the batch axis, channels where
            `data_format` puts them; spatial sizes may be `None`. Defaults
            to `input_tensor`'s shape if it is given, else to RGB images of
            any size: `(None, None, 3)`, or `(3, None, None)` with
            `"channels_first"`.
        classes: the number of classes: channels of the output (11 for
            CamVid, as in the paper).
        classifier_activation: the activation of the final 1x1
            convolution; `None` gives logits.
        recompute: whether the dense blocks and transitions down recompute
            their activations in the backward pass (see above); `True` or
            `False`.
        dropout_rate: the rate of the dropout after each dense layer's
            convolution and each transition down's; 0.2 in the paper, a
            float in [0, 1).
        batch_norm_momentum: the momentum of every BatchNorm's moving
            statistics.
        batch_norm_epsilon: the epsilon of every BatchNorm.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend), on every
            BatchNorm of the model.
        name: the model's name.

    Input shape:
        `(batch, height, width, channels)` with `"channels_last"`,
        `(batch, channels, height, width)` with `"channels_first"`, each
        spatial size at least `2**n`. Masks are not supported.

    Output shape:
        `(batch, height, width, classes)` with `"channels_last"`,
        `(batch, classes, height, width)` with `"channels_first"`: the
        input's spatial size.

    Returns:
        A `keras.Model`, with level `i = 0` the shallowest. Its layers are
        named `stem_conv`; `down{i}_dense_block` and
        `transition_down{i}_bn`, `_relu`, `_conv`, `_dropout` (with
        `dropout_rate`) and `_pool`; `bottleneck_dense_block`;
        `transition_up{i}`, `up{i}_crop_and_concat` (the up-sampled map,
        then the skip) and `up{i}_dense_block`; `output_conv` (with
        `"channels_first"`, a softmax is a layer of its own,
        `output_softmax`). With
        `recompute`, the layers of transition down `i` sit, under the
        same names, in a sub-model `transition_down{i}` wrapped
        in a `Recompute` layer named `transition_down{i}_recompute`.

    Reference:
    - [The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for
        Semantic Segmentation](https://arxiv.org/abs/1611.09326) (Jégou et
        al., CVPR Workshops 2017)
    """
    data_format = standardize_data_format(data_format)
    blocks = _check_blocks(blocks)
    growth_rate = check_positive_int(growth_rate, "growth_rate")
    filters = check_positive_int(filters, "filters")
    classes = check_positive_int(classes, "classes")
    dropout_rate = check_real(
        dropout_rate, "dropout_rate", "a float in [0, 1)", lambda v: 0 <= v < 1
    )
    recompute = check_bool(recompute, "recompute")
    batch_norm_momentum, batch_norm_epsilon = check_batch_norm_arguments(
        batch_norm_momentum, batch_norm_epsilon
    )
    synchronized = check_synchronized(synchronized)
    num_pools = len(blocks) // 2
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    input_shape = image_input_shape(input_shape, (None, None, 3), data_format)
    smallest = 2**num_pools
    for size in spatial_sizes(input_shape, data_format):
        if size is not None and size < smallest:
            raise ValueError(
                f"`input_shape` should have spatial sizes of at least "
                f"{smallest} (2 ** {num_pools} poolings) for "
                f"blocks={blocks!r}. Received: input_shape={input_shape!r}"
            )

    batch_norm = {
        "axis": channel_axis(4, data_format),
        "momentum": batch_norm_momentum,
        "epsilon": batch_norm_epsilon,
        "synchronized": synchronized,
    }

    def dense_block(x, num_layers, name, return_new_features):
        return MemoryEfficientDenseBlock(
            num_layers,
            growth_rate,
            bottleneck_factor=None,
            dropout_rate=dropout_rate,
            recompute="full" if recompute else False,
            batch_norm_momentum=batch_norm_momentum,
            batch_norm_epsilon=batch_norm_epsilon,
            data_format=data_format,
            kernel_initializer="he_uniform",
            synchronized=synchronized,
            return_new_features=return_new_features,
            name=name,
        )(x)

    def transition_down(x, channels, prefix):
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn", **batch_norm)(
            x
        )
        x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        x = keras.layers.Conv2D(
            channels,
            1,
            use_bias=False,
            kernel_initializer="he_uniform",
            data_format=data_format,
            name=f"{prefix}_conv",
        )(x)
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, name=f"{prefix}_dropout")(x)
        return keras.layers.MaxPooling2D(
            2, data_format=data_format, name=f"{prefix}_pool"
        )(x)

    inputs = model_input(input_tensor, input_shape)
    x = check_input_size(
        inputs, (smallest, smallest), "FCDenseNet", data_format
    )
    x = keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        kernel_initializer="he_uniform",
        data_format=data_format,
        use_bias=False,
        name="stem_conv",
    )(x)
    channels = filters
    skips = []
    for i in range(num_pools):
        x = dense_block(x, blocks[i], f"down{i}_dense_block", False)
        channels += blocks[i] * growth_rate
        skips.append(x)
        prefix = f"transition_down{i}"
        if recompute:
            x = recomputed_level(
                lambda y, c=channels, p=prefix: transition_down(y, c, p),
                x,
                prefix,
                data_format,
            )
        else:
            x = transition_down(x, channels, prefix)
    x = dense_block(x, blocks[num_pools], "bottleneck_dense_block", True)
    for i in reversed(range(num_pools)):
        below = blocks[len(blocks) - 2 - i]
        x = keras.layers.Conv2DTranspose(
            below * growth_rate,
            3,
            strides=2,
            padding="valid",
            use_bias=False,
            kernel_initializer="he_uniform",
            data_format=data_format,
            name=f"transition_up{i}",
        )(x)
        x = CropAndConcat(
            data_format=data_format, name=f"up{i}_crop_and_concat"
        )([x, skips[i]])
        x = dense_block(
            x, blocks[len(blocks) - 1 - i], f"up{i}_dense_block", i > 0
        )
    outputs = pixel_classifier(
        x,
        classes,
        classifier_activation,
        data_format,
        kernel_initializer="he_uniform",
    )
    return keras.Model(source_inputs(input_tensor, inputs), outputs, name=name)


def _check_blocks(blocks):
    try:
        counts = tuple(blocks)
    except TypeError:
        counts = ()
    if len(counts) < 3 or len(counts) % 2 == 0:
        raise ValueError(
            "`blocks` should list the number of layers of the 2 * n + 1 "
            "dense blocks (n down, the bottleneck, n up; n >= 1), e.g. "
            "(4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4) for FC-DenseNet103. "
            f"Received: blocks={blocks!r}"
        )
    return tuple(check_positive_int(count, "blocks") for count in counts)


_VARIANT_DOCSTRING = """{title} of Jégou et al. (2017), Table 2.

    `FCDenseNet(blocks={blocks}, growth_rate={growth_rate}, ...)`:
    {pools} levels down and up. With the paper's 11 CamVid classes and RGB
    input it has {parameters} parameters, BatchNorm moving statistics
    included, as the paper's code counts them. See `FCDenseNet` for the
    architecture, the arguments and the layer names.

    Example:

    >>> from keras_fusion.models import {variant}
    >>> model = {variant}(input_shape=(64, 96, 3), classes=4)
    >>> model.output_shape
    (None, 64, 96, 4)

    Args:
        filters: the first 3x3 convolution's channels (48 in the paper).
        input_tensor: optional tensor to use as the model's input.
        input_shape: the input shape without the batch axis; spatial sizes
            may be `None` (the default: RGB of any size at least 32).
        classes: the number of classes: channels of the output.
        classifier_activation: the final 1x1 convolution's activation;
            `None` gives logits.
        recompute: whether the model recomputes activations in the
            backward pass instead of keeping them (the same results).
        dropout_rate: the rate of every dropout (0.2 in the paper).
        batch_norm_momentum: the momentum of every BatchNorm.
        batch_norm_epsilon: the epsilon of every BatchNorm.
        data_format: `"channels_last"` or `"channels_first"`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy.
        name: the model's name.

    Returns:
        A `keras.Model`.

    Reference:
    - [The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for
        Semantic Segmentation](https://arxiv.org/abs/1611.09326) (Jégou et
        al., CVPR Workshops 2017)
    """


def FCDenseNet56(
    filters=48,
    input_tensor=None,
    input_shape=None,
    classes=11,
    classifier_activation="softmax",
    recompute=False,
    dropout_rate=0.2,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="fc_densenet56",
):
    return FCDenseNet(
        (4,) * 11,
        growth_rate=12,
        filters=filters,
        input_tensor=input_tensor,
        input_shape=input_shape,
        classes=classes,
        classifier_activation=classifier_activation,
        recompute=recompute,
        dropout_rate=dropout_rate,
        batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon,
        data_format=data_format,
        synchronized=synchronized,
        name=name,
    )


def FCDenseNet67(
    filters=48,
    input_tensor=None,
    input_shape=None,
    classes=11,
    classifier_activation="softmax",
    recompute=False,
    dropout_rate=0.2,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="fc_densenet67",
):
    return FCDenseNet(
        (5,) * 11,
        growth_rate=16,
        filters=filters,
        input_tensor=input_tensor,
        input_shape=input_shape,
        classes=classes,
        classifier_activation=classifier_activation,
        recompute=recompute,
        dropout_rate=dropout_rate,
        batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon,
        data_format=data_format,
        synchronized=synchronized,
        name=name,
    )


def FCDenseNet103(
    filters=48,
    input_tensor=None,
    input_shape=None,
    classes=11,
    classifier_activation="softmax",
    recompute=False,
    dropout_rate=0.2,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="fc_densenet103",
):
    return FCDenseNet(
        (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4),
        growth_rate=16,
        filters=filters,
        input_tensor=input_tensor,
        input_shape=input_shape,
        classes=classes,
        classifier_activation=classifier_activation,
        recompute=recompute,
        dropout_rate=dropout_rate,
        batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon,
        data_format=data_format,
        synchronized=synchronized,
        name=name,
    )


FCDenseNet56.__doc__ = _VARIANT_DOCSTRING.format(
    title="FC-DenseNet56",
    variant="FCDenseNet56",
    blocks=(4,) * 11,
    growth_rate=12,
    pools=5,
    parameters="1,396,187 (1.4M; the paper\n    reports 1.5M, but the "
    "architecture of its Table 2 has 1.4M\n    however counted)",
)
FCDenseNet67.__doc__ = _VARIANT_DOCSTRING.format(
    title="FC-DenseNet67",
    variant="FCDenseNet67",
    blocks=(5,) * 11,
    growth_rate=16,
    pools=5,
    parameters="3,500,155 (3.5M)",
)
FCDenseNet103.__doc__ = _VARIANT_DOCSTRING.format(
    title="FC-DenseNet103",
    variant="FCDenseNet103",
    blocks=(4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4),
    growth_rate=16,
    pools=5,
    parameters="9,421,147 (9.4M)",
)
