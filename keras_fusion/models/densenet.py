"""DenseNets built from `MemoryEfficientDenseBlock` and `TransitionBlock`.

`DenseNet` and its variants `DenseNet121` ... `DenseNet264` have the
layers, layer names, parameter counts and weights of
`keras.applications.densenet` (weights: `densenet_weights`; conversion of a
`keras.applications` model: `densenet_conversion`). `DenseNetBC` is the
DenseNet paper's network for CIFAR-sized images.

Reference:
- [Densely Connected Convolutional Networks](
    https://arxiv.org/abs/1608.06993) (Huang et al., CVPR 2017)
- [Memory-Efficient Implementation of DenseNets](
    https://arxiv.org/abs/1707.06990) (Pleiss et al., 2017)
"""

import keras

from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import check_real
from keras_fusion._internal.checks import check_synchronized
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.layers._densenet_stem import DenseNetStem
from keras_fusion.layers.dense_block import MemoryEfficientDenseBlock
from keras_fusion.layers.transition_block import TransitionBlock
from keras_fusion.models._inputs_and_heads import check_input_size
from keras_fusion.models._inputs_and_heads import check_pooling
from keras_fusion.models._inputs_and_heads import classification_head
from keras_fusion.models._inputs_and_heads import image_input_shape
from keras_fusion.models._inputs_and_heads import model_input
from keras_fusion.models._inputs_and_heads import source_inputs
from keras_fusion.models._inputs_and_heads import spatial_sizes
from keras_fusion.models.densenet_weights import check_weights
from keras_fusion.models.densenet_weights import load_weights


def DenseNet(
    blocks,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    growth_rate=32,
    recompute=True,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="densenet",
):
    """An ImageNet DenseNet on memory-efficient dense blocks.

    The layers of `keras.applications.densenet.DenseNet`, with the same
    names (`conv1_conv`, `conv2` ... `conv5` for the dense blocks, `pool2`
    ... `pool4` for the transitions, `bn`, `predictions`), so that its
    weights map one to one (see `from_keras_application`): a 7x7
    convolution with stride 2 and a 3x3 max pooling, four dense blocks with
    a transition halving the channels and the spatial size after each of
    the first three, then BatchNorm, ReLU and the head.

    With `recompute` on (the default), the dense blocks, the transitions
    and the stem's BatchNorm -> ReLU -> max pooling recompute in the
    backward pass instead of keeping their intermediate tensors (see
    `MemoryEfficientDenseBlock`, `TransitionBlock`); with `recompute=False`
    they run the plain Keras layers' ops. Unlike `keras.applications`, the
    stem's BatchNorm, ReLU, padding and pooling are one layer, `conv1`,
    whatever `recompute` is: its sublayer `bn` holds `conv1_bn`'s weights,
    and its second output, `model.get_layer("conv1").output[1]`, is
    `conv1_relu`'s output, the stride-2 feature (a U-Net's first skip).

    Example:

    >>> from keras_fusion.models import DenseNet
    >>> model = DenseNet(
    ...     (2, 4, 4, 2), weights=None, input_shape=(64, 64, 3), classes=10
    ... )
    >>> model.get_layer("conv3").num_layers
    4
    >>> model.output_shape
    (None, 10)
    >>> model.get_layer("conv1").output[1].shape
    (None, 32, 32, 64)

    Args:
        blocks: the number of layers of each of the four dense blocks.
        include_top: whether to end in global average pooling and a
            `classes`-way `Dense` layer named `predictions`.
        weights: `None` (random initialization), `"imagenet"` (the
            `keras.applications` ImageNet weights of DenseNet-121, -169 and
            -201, downloaded by Keras on first use) or the path to a weights
            file, told apart by its extension: `.weights.h5` or `.keras`
            (saved by Keras 3) of this model or of the `keras.applications`
            model of the same depth and top; `.h5` or `.hdf5`, a legacy HDF5
            file keyed by layer name such as those `keras.applications`
            downloads (or one of this model). Loading never changes
            `keras.config.image_data_format()`.
        input_tensor: optional tensor to use as the model's input.
        input_shape: the input shape without the batch axis; defaults to
            `(224, 224, 3)` (`(3, 224, 224)` with `"channels_first"`). With
            `include_top` and ImageNet weights it must be that; spatial
            sizes must be at least 32.
        pooling: with `include_top=False`: `None` (the 4D feature map),
            `"avg"` or `"max"` global pooling.
        classes: the number of classes, with `include_top`.
        classifier_activation: the activation of the `predictions` layer;
            `None` gives logits.
        growth_rate: channels each dense layer adds (32 in DenseNet-121 to
            -264).
        recompute: the dense blocks' recomputation policy: `"full"` (same as
            `True`), `"concat_bn"` or `False` (see
            `MemoryEfficientDenseBlock`); any but `False` also recomputes
            the transitions and the stem.
        dropout_rate: dropout after each dense layer's 3x3 convolution.
        batch_norm_momentum: the momentum of every BatchNormalization's
            moving statistics; Keras's 0.99 by default, as in
            `keras.applications`. A lower one (0.9) suits short trainings
            and fine-tuning, whose moving statistics would otherwise still
            remember the first steps.
        batch_norm_epsilon: the epsilon of every BatchNormalization;
            `keras.applications`' 1.001e-5 by default.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend), on every
            BatchNormalization of the model.
        name: the model's name.

    Input shape:
        `(batch, height, width, channels)` with `"channels_last"`,
        `(batch, channels, height, width)` with `"channels_first"`. Masks
        are not supported.

    Output shape:
        `(batch, classes)` with `include_top`; else `(batch, C)` with
        `pooling`, or the final feature map of `C` channels, 32 times
        smaller than the input, with `pooling=None`.

    Returns:
        A `keras.Model`.

    Reference:
    - [Densely Connected Convolutional Networks](
        https://arxiv.org/abs/1608.06993) (Huang et al., CVPR 2017)
    - [Memory-Efficient Implementation of DenseNets](
        https://arxiv.org/abs/1707.06990) (Pleiss et al., 2017)
    """
    data_format = standardize_data_format(data_format)
    check_synchronized(synchronized)
    if not isinstance(blocks, (list, tuple)) or len(blocks) != 4:
        raise ValueError(
            "`blocks` should list the number of layers of the 4 dense "
            f"blocks. Received: blocks={blocks!r}"
        )
    blocks = tuple(check_positive_int(count, "blocks") for count in blocks)
    growth_rate = check_positive_int(growth_rate, "growth_rate")
    classes = check_positive_int(classes, "classes")
    batch_norm_momentum, batch_norm_epsilon = check_batch_norm_arguments(
        batch_norm_momentum, batch_norm_epsilon
    )
    check_pooling(pooling)
    input_shape = image_input_shape(input_shape, (224, 224, 3), data_format)
    spatial = spatial_sizes(input_shape, data_format)
    if any(size is not None and size < 32 for size in spatial):
        raise ValueError(
            "`input_shape` should have spatial sizes of at least 32. "
            f"Received: input_shape={input_shape!r}"
        )
    check_weights(
        weights,
        blocks,
        growth_rate,
        include_top,
        classes,
        input_shape,
        data_format,
    )
    batch_norm = {
        "momentum": batch_norm_momentum,
        "epsilon": batch_norm_epsilon,
        "synchronized": synchronized,
    }
    inputs = model_input(input_tensor, input_shape)
    bn_axis = 1 if data_format == "channels_first" else -1
    x = check_input_size(inputs, (32, 32), "DenseNet", data_format)
    x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), data_format=data_format)(x)
    x = keras.layers.Conv2D(
        64,
        7,
        strides=2,
        use_bias=False,
        data_format=data_format,
        name="conv1_conv",
    )(x)
    # The stride-2 feature (keras.applications' `conv1_relu` output) is the
    # stem's second output, `model.get_layer("conv1").output[1]`: a layer
    # on a branch to no output would not be kept in the model.
    x, _ = DenseNetStem(
        batch_norm_momentum=batch_norm_momentum,
        batch_norm_epsilon=batch_norm_epsilon,
        data_format=data_format,
        synchronized=synchronized,
        recompute=bool(recompute),
        return_features=True,
        name="conv1",
    )(x)
    for index, num_layers in enumerate(blocks):
        x = MemoryEfficientDenseBlock(
            num_layers,
            growth_rate,
            dropout_rate=dropout_rate,
            recompute=recompute,
            batch_norm_momentum=batch_norm_momentum,
            batch_norm_epsilon=batch_norm_epsilon,
            data_format=data_format,
            synchronized=synchronized,
            name=f"conv{index + 2}",
        )(x)
        if index < len(blocks) - 1:
            x = TransitionBlock(
                compression_ratio=0.5,
                batch_norm_momentum=batch_norm_momentum,
                batch_norm_epsilon=batch_norm_epsilon,
                data_format=data_format,
                synchronized=synchronized,
                recompute=bool(recompute),
                name=f"pool{index + 2}",
            )(x)
    x = keras.layers.BatchNormalization(axis=bn_axis, name="bn", **batch_norm)(
        x
    )
    x = keras.layers.Activation("relu", name="relu")(x)
    x = classification_head(
        x, include_top, pooling, classes, classifier_activation, data_format
    )
    model = keras.Model(source_inputs(input_tensor, inputs), x, name=name)
    if weights is not None:
        load_weights(model, weights, blocks, include_top, classes, data_format)
    return model


_VARIANT_DOC = """{title} on memory-efficient dense blocks.

    Dense blocks of {blocks_text} layers. {keras_sentence}
    Beyond those of `keras.applications`, it takes the dense blocks'
    `recompute` and `dropout_rate`, the BatchNorm settings, `data_format`
    and `synchronized`; `DenseNet` describes the architecture.{paper}

    Example:

    >>> from keras_fusion.models import {name}
    >>> model = {name}(weights=None, input_shape=(64, 64, 3), classes=10)
    >>> [model.get_layer(f"conv{{i}}").num_layers for i in range(2, 6)]
    {blocks_list}
    >>> model.output_shape
    (None, 10)

    Args:
        include_top: whether to end in global average pooling and a
            `classes`-way `Dense` layer named `predictions`.
        weights: {weights_doc}
        input_tensor: optional tensor to use as the model's input.
        input_shape: the input shape without the batch axis; defaults to
            `(224, 224, 3)` (`(3, 224, 224)` with `"channels_first"`).
            Spatial sizes must be at least 32.
        pooling: with `include_top=False`: `None` (the 4D feature map),
            `"avg"` or `"max"` global pooling.
        classes: the number of classes, with `include_top`.
        classifier_activation: the activation of the `predictions` layer;
            `None` gives logits.
        recompute: the dense blocks' recomputation policy: `"full"` (same
            as `True`), `"concat_bn"` or `False` (see
            `MemoryEfficientDenseBlock`); any but `False` also recomputes
            the transitions and the stem (see `DenseNet`).
        dropout_rate: dropout after each dense layer's 3x3 convolution.
        batch_norm_momentum: the momentum of every BatchNormalization's
            moving statistics; 0.99 by default, as in `keras.applications`
            (0.9 suits fine-tuning and short trainings).
        batch_norm_epsilon: the epsilon of every BatchNormalization;
            `keras.applications`' 1.001e-5 by default.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend).
        name: the model's name.

    Input shape:
        `(batch, height, width, channels)` with `"channels_last"`,
        `(batch, channels, height, width)` with `"channels_first"`. Masks
        are not supported.

    Output shape:
        `(batch, classes)` with `include_top`; else `(batch, {features})`
        with `pooling`, or the final feature map of {features} channels, 32
        times smaller than the input, with `pooling=None`.

    Returns:
        A `keras.Model`.

    Reference:
    - [Densely Connected Convolutional Networks](
        https://arxiv.org/abs/1608.06993) (Huang et al., CVPR 2017)
    - [Memory-Efficient Implementation of DenseNets](
        https://arxiv.org/abs/1707.06990) (Pleiss et al., 2017)
    """
_IMAGENET_SENTENCE = """\
It has the arguments, layer
    names, parameter counts and weights of `keras.applications.{name}`."""
_NO_IMAGENET_SENTENCE = """\
`keras.applications` has no
    DenseNet of this depth; the arguments and layer names are those of
    its DenseNet-121 to -201."""
_IMAGENET_WEIGHTS_DOC = """\
`None` (random initialization), `"imagenet"` (the
            `keras.applications` ImageNet weights, downloaded by Keras on
            first use) or the path to a weights file (see `DenseNet`)."""
_NO_IMAGENET_WEIGHTS_DOC = """\
`None` (random initialization) or the path to a weights
            file of this model (see `DenseNet`): `keras.applications` has
            no ImageNet weights for this depth."""
_DENSENET264_PAPER = """

    The network Pleiss et al. trained on one 8-GPU workstation with their
    memory-efficient implementation."""


def _variant_doc(name, title, blocks, imagenet=True, paper=""):
    """`_VARIANT_DOC` for the variant `name` of these `blocks`."""
    features = 64
    for index, num_layers in enumerate(blocks):
        features += 32 * num_layers
        if index < len(blocks) - 1:
            features //= 2
    return _VARIANT_DOC.format(
        name=name,
        title=title,
        blocks_text=", ".join(map(str, blocks[:-1])) + f" and {blocks[-1]}",
        blocks_list=list(blocks),
        keras_sentence=(
            _IMAGENET_SENTENCE.format(name=name)
            if imagenet
            else _NO_IMAGENET_SENTENCE
        ),
        weights_doc=(
            _IMAGENET_WEIGHTS_DOC if imagenet else _NO_IMAGENET_WEIGHTS_DOC
        ),
        features=features,
        paper=paper,
    )


def DenseNet121(
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    recompute=True,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="densenet121",
):
    return DenseNet(
        (6, 12, 24, 16),
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
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


def DenseNet169(
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    recompute=True,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="densenet169",
):
    return DenseNet(
        (6, 12, 32, 32),
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
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


def DenseNet201(
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    recompute=True,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="densenet201",
):
    return DenseNet(
        (6, 12, 48, 32),
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
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


def DenseNet264(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    recompute=True,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="densenet264",
):
    return DenseNet(
        (6, 12, 64, 48),
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
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


DenseNet121.__doc__ = _variant_doc(
    "DenseNet121", "DenseNet-121", (6, 12, 24, 16)
)
DenseNet169.__doc__ = _variant_doc(
    "DenseNet169", "DenseNet-169", (6, 12, 32, 32)
)
DenseNet201.__doc__ = _variant_doc(
    "DenseNet201", "DenseNet-201", (6, 12, 48, 32)
)
DenseNet264.__doc__ = _variant_doc(
    "DenseNet264",
    "DenseNet-264",
    (6, 12, 64, 48),
    imagenet=False,
    paper=_DENSENET264_PAPER,
)


def DenseNetBC(
    depth=100,
    growth_rate=12,
    compression_ratio=0.5,
    bottleneck=True,
    include_top=True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=10,
    classifier_activation="softmax",
    recompute=True,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name=None,
):
    """The DenseNet of the DenseNet paper's CIFAR experiments.

    A 3x3 convolution to `2 * growth_rate` channels (`16` without
    bottleneck), three dense blocks of equal depth with a transition after
    the first two, then BatchNorm, ReLU, global average pooling and the
    classifier. `bottleneck=True` with `compression_ratio < 1` is
    DenseNet-BC (the default: DenseNet-BC-100, k=12, three blocks of 16
    layers); `compression_ratio=1.0` gives DenseNet-B, `bottleneck=False`
    with `compression_ratio < 1` DenseNet-C.

    Example:

    >>> from keras_fusion.models import DenseNetBC
    >>> model = DenseNetBC(depth=100, growth_rate=12)
    >>> [model.get_layer(f"block{i}").num_layers for i in (1, 2, 3)]
    [16, 16, 16]
    >>> model.output_shape
    (None, 10)

    Args:
        depth: the network's depth: `3 * layers_per_block * (2 if bottleneck
            else 1) + 4`, e.g. 40, 100, 190 with bottleneck.
        growth_rate: channels each dense layer adds (`k`).
        compression_ratio: the fraction of channels the transitions keep
            (`theta`), in `(0, 1]`.
        bottleneck: whether each dense layer starts with a 1x1 convolution
            to `4 * growth_rate` channels (DenseNet-B).
        include_top: whether to end in global average pooling and a
            `classes`-way `Dense` layer named `predictions`.
        input_tensor: optional tensor to use as the model's input.
        input_shape: the input shape without the batch axis; defaults to
            CIFAR's `(32, 32, 3)` (`(3, 32, 32)` with `"channels_first"`).
        pooling: with `include_top=False`: `None` (the 4D feature map),
            `"avg"` or `"max"` global pooling.
        classes: the number of classes, with `include_top`.
        classifier_activation: the activation of the `predictions` layer;
            `None` gives logits.
        recompute: the dense blocks' recomputation policy (see
            `MemoryEfficientDenseBlock`); any but `False` also recomputes
            the transitions (see `TransitionBlock`).
        dropout_rate: dropout after each dense layer's 3x3 convolution (the
            paper uses 0.2 without data augmentation).
        batch_norm_momentum: the momentum of every BatchNormalization's
            moving statistics (Keras's 0.99 by default; the paper's Torch
            momentum of 0.1 is 0.9 here, which suits short trainings).
        batch_norm_epsilon: the epsilon of every BatchNormalization;
            `keras.applications`' 1.001e-5 by default.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend), on every
            BatchNormalization of the model.
        name: the model's name; defaults to e.g. `"densenet_bc_100_k12"`.

    Input shape:
        `(batch, height, width, channels)` with `"channels_last"`,
        `(batch, channels, height, width)` with `"channels_first"`. Masks
        are not supported.

    Output shape:
        `(batch, classes)` with `include_top`; else `(batch, C)` with
        `pooling`, or the final feature map of `C` channels, 4 times
        smaller than the input, with `pooling=None`.

    Returns:
        A `keras.Model` whose dense blocks are named `block1` to `block3`
        and transitions `transition1`, `transition2`.

    Reference:
    - [Densely Connected Convolutional Networks](
        https://arxiv.org/abs/1608.06993) (Huang et al., CVPR 2017)
    - [Memory-Efficient Implementation of DenseNets](
        https://arxiv.org/abs/1707.06990) (Pleiss et al., 2017)
    """
    data_format = standardize_data_format(data_format)
    check_synchronized(synchronized)
    depth = check_positive_int(depth, "depth")
    growth_rate = check_positive_int(growth_rate, "growth_rate")
    compression_ratio = check_real(
        compression_ratio,
        "compression_ratio",
        "a float in (0, 1]",
        lambda v: 0 < v <= 1,
    )
    classes = check_positive_int(classes, "classes")
    batch_norm_momentum, batch_norm_epsilon = check_batch_norm_arguments(
        batch_norm_momentum, batch_norm_epsilon
    )
    check_pooling(pooling)
    check_bool(bottleneck, "bottleneck")
    convs_per_layer = 2 if bottleneck else 1
    if (depth - 4) % (3 * convs_per_layer) or depth < 4 + 3 * convs_per_layer:
        raise ValueError(
            f"`depth` should be 3 * n * {convs_per_layer} + 4 for a whole "
            f"number n of layers per block (bottleneck={bottleneck}), e.g. "
            f"{3 * 16 * convs_per_layer + 4}. Received: depth={depth}"
        )
    input_shape = image_input_shape(input_shape, (32, 32, 3), data_format)
    # Two 2x2 average poolings.
    smallest = 4
    if any(
        size is not None and size < smallest
        for size in spatial_sizes(input_shape, data_format)
    ):
        raise ValueError(
            f"`input_shape` should have spatial sizes of at least {smallest} "
            "(two 2x2 poolings). Received: "
            f"input_shape={input_shape!r}"
        )
    if name is None:
        kind = {
            (True, True): "bc",
            (True, False): "b",
            (False, True): "c",
            (False, False): "",
        }[(bottleneck, compression_ratio < 1)]
        name = f"densenet_{kind}_{depth}_k{growth_rate}".replace("__", "_")
    num_layers = (depth - 4) // (3 * convs_per_layer)
    inputs = model_input(input_tensor, input_shape)
    x = check_input_size(
        inputs, (smallest, smallest), "DenseNetBC", data_format
    )
    x = keras.layers.Conv2D(
        2 * growth_rate if bottleneck else 16,
        3,
        padding="same",
        use_bias=False,
        data_format=data_format,
        name="conv1",
    )(x)
    for index in range(3):
        x = MemoryEfficientDenseBlock(
            num_layers,
            growth_rate,
            bottleneck_factor=4 if bottleneck else None,
            dropout_rate=dropout_rate,
            recompute=recompute,
            batch_norm_momentum=batch_norm_momentum,
            batch_norm_epsilon=batch_norm_epsilon,
            data_format=data_format,
            synchronized=synchronized,
            name=f"block{index + 1}",
        )(x)
        if index < 2:
            x = TransitionBlock(
                compression_ratio=compression_ratio,
                batch_norm_momentum=batch_norm_momentum,
                batch_norm_epsilon=batch_norm_epsilon,
                data_format=data_format,
                synchronized=synchronized,
                recompute=bool(recompute),
                name=f"transition{index + 1}",
            )(x)
    x = keras.layers.BatchNormalization(
        axis=1 if data_format == "channels_first" else -1,
        momentum=batch_norm_momentum,
        epsilon=batch_norm_epsilon,
        synchronized=synchronized,
        name="bn",
    )(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    x = classification_head(
        x, include_top, pooling, classes, classifier_activation, data_format
    )
    return keras.Model(source_inputs(input_tensor, inputs), x, name=name)
