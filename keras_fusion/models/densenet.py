"""DenseNets built from `MemoryEfficientDenseBlock`, weight-compatible with
`keras.applications.densenet` (Huang et al. 2017, "Densely Connected
Convolutional Networks"; Pleiss et al. 2017, "Memory-Efficient
Implementation of DenseNets")."""

import contextlib
import os
import zipfile

import keras
import numpy as np

from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import check_synchronized
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.layers.dense_block import MemoryEfficientDenseBlock
from keras_fusion.layers.transition_block import TransitionBlock

_BN_EPSILON = 1.001e-5
_WEIGHTS_FORMS = (
    "None, 'imagenet', or the path to a weights file: a Keras `.weights.h5` "
    "or `.keras` file of this model or of the keras.applications DenseNet "
    "of the same depth and top, or a legacy HDF5 file (`.h5`, `.hdf5`) of "
    "that keras.applications model (the files it downloads) or of this one"
)
_IMAGENET_BLOCKS = {
    (6, 12, 24, 16): "DenseNet121",
    (6, 12, 32, 32): "DenseNet169",
    (6, 12, 48, 32): "DenseNet201",
}


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
    data_format=None,
    synchronized=False,
    name="densenet121",
):
    """DenseNet-121 on memory-efficient dense blocks.

    The arguments and weights of `keras.applications.DenseNet121`, plus
    `recompute`, `dropout_rate` and `synchronized` (see `DenseNet`).

    Example:

    >>> from keras_fusion.models import DenseNet121
    >>> model = DenseNet121(weights=None, input_shape=(64, 64, 3), classes=10)
    >>> model.output_shape
    (None, 10)
    """
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
    data_format=None,
    synchronized=False,
    name="densenet169",
):
    """DenseNet-169 on memory-efficient dense blocks; see `DenseNet121`."""
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
    data_format=None,
    synchronized=False,
    name="densenet201",
):
    """DenseNet-201 on memory-efficient dense blocks; see `DenseNet121`."""
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
    data_format=None,
    synchronized=False,
    name="densenet264",
):
    """DenseNet-264 (blocks of 6, 12, 64 and 48 layers), the depth Pleiss et
    al. trained on one GPU thanks to recomputation; see `DenseNet121`.
    There are no ImageNet weights for it in `keras.applications`, so
    `weights` is `None` or a path to a weights file of this model."""
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
        data_format=data_format,
        synchronized=synchronized,
        name=name,
    )


def DenseNet(
    blocks,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    recompute=True,
    dropout_rate=0.0,
    growth_rate=32,
    data_format=None,
    synchronized=False,
    name="densenet",
):
    """An ImageNet DenseNet on memory-efficient dense blocks.

    The layers of `keras.applications.densenet.DenseNet`, with the same
    names (`conv1_conv`, `conv2` ... `conv5` for the dense blocks, `pool2`
    ... `pool4` for the transitions, `bn`, `predictions`), so that its
    weights map one to one (see `from_keras_application`).

    Args:
        blocks: the number of layers of each of the four dense blocks.
        include_top: whether to end in global average pooling and a
            `classes`-way `Dense` layer.
        weights: `None` (random initialization), `"imagenet"` (the
            `keras.applications` ImageNet weights, downloaded by Keras on
            first use) or the path to a weights file, told apart by its
            extension: `.weights.h5` or `.keras` (saved by Keras 3) of this
            model or of the `keras.applications` model of the same depth
            and top; `.h5` or `.hdf5`, a legacy HDF5 file keyed by layer
            name such as those `keras.applications` downloads (or one of
            this model). Loading never changes
            `keras.config.image_data_format()`.
        input_tensor: optional Keras tensor to use as the model's input.
        input_shape: the input shape without the batch axis; defaults to
            224x224x3. With `include_top` and ImageNet weights it must be
            224x224x3; spatial sizes must be at least 32.
        pooling: with `include_top=False`: `None` (the 4D feature map),
            `"avg"` or `"max"` global pooling.
        classes: the number of classes, with `include_top`.
        classifier_activation: the activation of the `predictions` layer.
        recompute: the dense blocks' recomputation policy: `"full"` (same as
            `True`), `"concat_bn"` or `False` (see
            `MemoryEfficientDenseBlock`).
        dropout_rate: dropout after each dense layer's 3x3 convolution.
        growth_rate: channels each dense layer adds (32 in DenseNet-121 to
            -264).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend), on every
            BatchNormalization of the model.
        name: the model's name.

    Returns:
        A `keras.Model`.
    """
    data_format = standardize_data_format(data_format)
    check_synchronized(synchronized)
    blocks = tuple(blocks)
    if len(blocks) != 4:
        raise ValueError(
            "`blocks` should list the number of layers of the 4 dense "
            f"blocks. Received: blocks={blocks!r}"
        )
    blocks = tuple(check_positive_int(count, "blocks") for count in blocks)
    growth_rate = check_positive_int(growth_rate, "growth_rate")
    classes = check_positive_int(classes, "classes")
    input_shape = _check_weights_and_input_shape(
        weights,
        blocks,
        growth_rate,
        include_top,
        classes,
        input_shape,
        data_format,
    )
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            "`pooling` should be None, 'avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )
    inputs = _model_input(input_tensor, input_shape)
    bn_axis = 1 if data_format == "channels_first" else -1

    x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), data_format=data_format)(
        inputs
    )
    x = keras.layers.Conv2D(
        64,
        7,
        strides=2,
        use_bias=False,
        data_format=data_format,
        name="conv1_conv",
    )(x)
    x = keras.layers.BatchNormalization(
        axis=bn_axis,
        epsilon=_BN_EPSILON,
        synchronized=synchronized,
        name="conv1_bn",
    )(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), data_format=data_format)(x)
    x = keras.layers.MaxPooling2D(
        3, strides=2, data_format=data_format, name="pool1"
    )(x)
    for index, num_layers in enumerate(blocks):
        x = MemoryEfficientDenseBlock(
            num_layers,
            growth_rate,
            dropout_rate=dropout_rate,
            recompute=recompute,
            batch_norm_epsilon=_BN_EPSILON,
            data_format=data_format,
            synchronized=synchronized,
            name=f"conv{index + 2}",
        )(x)
        if index < len(blocks) - 1:
            x = TransitionBlock(
                0.5,
                batch_norm_epsilon=_BN_EPSILON,
                data_format=data_format,
                synchronized=synchronized,
                name=f"pool{index + 2}",
            )(x)
    x = keras.layers.BatchNormalization(
        axis=bn_axis, epsilon=_BN_EPSILON, synchronized=synchronized, name="bn"
    )(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    x = _head(
        x, include_top, pooling, classes, classifier_activation, data_format
    )
    model = keras.Model(_source_inputs(input_tensor, inputs), x, name=name)
    if weights is not None:
        _load_weights(model, weights, blocks, include_top, classes, data_format)
    return model


def DenseNetBC(
    depth=100,
    growth_rate=12,
    compression=0.5,
    bottleneck=True,
    include_top=True,
    input_tensor=None,
    input_shape=(32, 32, 3),
    pooling=None,
    classes=10,
    classifier_activation="softmax",
    recompute=True,
    dropout_rate=0.0,
    bn_momentum=0.99,
    data_format=None,
    synchronized=False,
    name=None,
):
    """The DenseNet of the DenseNet paper's CIFAR experiments.

    A 3x3 convolution to `2 * growth_rate` channels (`16` without
    bottleneck), three dense blocks of equal depth with a transition after
    the first two, then BatchNorm, ReLU, global average pooling and the
    classifier. `bottleneck=True` with `compression < 1` is DenseNet-BC
    (the default: DenseNet-BC-100, k=12, three blocks of 16 layers);
    `compression=1.0` gives DenseNet-B, `bottleneck=False` with
    `compression < 1` DenseNet-C.

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
        compression: the fraction of channels the transitions keep
            (`theta`).
        bottleneck: whether each dense layer starts with a 1x1 convolution
            to `4 * growth_rate` channels (DenseNet-B).
        include_top, input_tensor, input_shape, pooling, classes,
            classifier_activation: as in `DenseNet121`, for 32x32 inputs by
            default.
        recompute: the dense blocks' recomputation policy.
        dropout_rate: dropout after each dense layer's 3x3 convolution (the
            paper uses 0.2 without data augmentation).
        bn_momentum: the momentum of every BatchNormalization's moving
            statistics (Keras's 0.99 by default; the paper's Torch
            momentum of 0.1 is 0.9 here, which suits short trainings).
        data_format: `"channels_last"` or `"channels_first"`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend), on every
            BatchNormalization of the model.
        name: the model's name; defaults to e.g. `"densenet_bc_100_k12"`.

    Returns:
        A `keras.Model` whose dense blocks are named `block1` to `block3`
        and transitions `transition1`, `transition2`.
    """
    data_format = standardize_data_format(data_format)
    check_synchronized(synchronized)
    depth = check_positive_int(depth, "depth")
    growth_rate = check_positive_int(growth_rate, "growth_rate")
    classes = check_positive_int(classes, "classes")
    if not isinstance(bottleneck, bool):
        raise TypeError(
            "`bottleneck` should be a bool. "
            f"Received: bottleneck={bottleneck!r}"
        )
    convs_per_layer = 2 if bottleneck else 1
    if (depth - 4) % (3 * convs_per_layer) or depth < 4 + 3 * convs_per_layer:
        raise ValueError(
            f"`depth` should be 3 * n * {convs_per_layer} + 4 for a whole "
            f"number n of layers per block (bottleneck={bottleneck}), e.g. "
            f"{3 * 16 * convs_per_layer + 4}. Received: depth={depth}"
        )
    if name is None:
        kind = {
            (True, True): "bc",
            (True, False): "b",
            (False, True): "c",
            (False, False): "",
        }[(bottleneck, compression < 1)]
        name = f"densenet_{kind}_{depth}_k{growth_rate}".replace("__", "_")
    num_layers = (depth - 4) // (3 * convs_per_layer)
    inputs = _model_input(input_tensor, input_shape)
    x = keras.layers.Conv2D(
        2 * growth_rate if bottleneck else 16,
        3,
        padding="same",
        use_bias=False,
        data_format=data_format,
        name="conv1",
    )(inputs)
    for index in range(3):
        x = MemoryEfficientDenseBlock(
            num_layers,
            growth_rate,
            bottleneck_factor=4 if bottleneck else None,
            dropout_rate=dropout_rate,
            recompute=recompute,
            batch_norm_momentum=bn_momentum,
            data_format=data_format,
            synchronized=synchronized,
            name=f"block{index + 1}",
        )(x)
        if index < 2:
            x = TransitionBlock(
                compression,
                batch_norm_momentum=bn_momentum,
                data_format=data_format,
                synchronized=synchronized,
                name=f"transition{index + 1}",
            )(x)
    x = keras.layers.BatchNormalization(
        axis=1 if data_format == "channels_first" else -1,
        momentum=bn_momentum,
        epsilon=_BN_EPSILON,
        synchronized=synchronized,
        name="bn",
    )(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    x = _head(
        x, include_top, pooling, classes, classifier_activation, data_format
    )
    return keras.Model(_source_inputs(input_tensor, inputs), x, name=name)


def from_keras_application(model, recompute=True, dropout_rate=0.0):
    """Convert a `keras.applications` DenseNet into ours, weights included.

    Every weight is copied by layer name: `conv2_block1_0_bn` to sublayer
    `block1_0_bn` of our dense block `conv2`, `pool2_conv` to sublayer
    `conv` of our transition `pool2`, and the stem, final BatchNorm and
    classifier to the layers of the same name. The result computes the same
    function in inference and in training.

    Example:

    >>> import keras
    >>> from keras_fusion.models import from_keras_application
    >>> source = keras.applications.DenseNet121(
    ...     weights=None, input_shape=(64, 64, 3), classes=10
    ... )
    >>> ours = from_keras_application(source)
    >>> ours.count_params() == source.count_params()
    True

    Args:
        model: a `keras.applications.DenseNet121`, `DenseNet169` or
            `DenseNet201` model (any weights, top or not, any pooling).
        recompute: the dense blocks' recomputation policy.
        dropout_rate: dropout after each dense layer's 3x3 convolution.

    Returns:
        A `keras.Model` built by `DenseNet`, with `model`'s weights.
    """
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
        data_format="channels_last",
        name=model.name,
    )
    copy_keras_application_weights(model, ours)
    return ours


def copy_keras_application_weights(source, target):
    """Copy a `keras.applications` DenseNet's weights into our `target`.

    `target` is a model built by `DenseNet` with the same blocks and top.
    Raises a `ValueError` naming the first weight with no counterpart.
    """
    _copy_weights_by_name(
        {layer.name: layer.get_weights() for layer in source.layers},
        target,
        f"a model named {source.name!r}",
    )


def _copy_weights_by_name(weights, target, source):
    """Copy `weights` ({keras.applications layer name: arrays}) into
    `target`; `source` describes where they come from, for errors."""
    for layer in target.layers:
        for ours, source_name in _weight_sources(layer):
            if source_name not in weights:
                raise ValueError(
                    f"The source has no layer {source_name!r} for "
                    f"{layer.name}/{ours.name}: it should be the "
                    "keras.applications DenseNet of the same depth. "
                    f"Received: {source}"
                )
            values = weights[source_name]
            expected = [tuple(w.shape) for w in ours.get_weights()]
            received = [tuple(v.shape) for v in values]
            if expected != received:
                raise ValueError(
                    f"Weights of {source_name!r} have shapes {received}, "
                    f"{layer.name}/{ours.name} expects {expected}: the "
                    "source should have the same input channels and "
                    f"classes. Received: {source}"
                )
            ours.set_weights(values)


def _weight_sources(layer):
    """(our layer with weights, keras.applications layer name) pairs."""
    if isinstance(layer, MemoryEfficientDenseBlock):
        return [
            (sublayer, f"{layer.name}_{sublayer.name}")
            for parts in layer.dense_layers
            for sublayer in parts.layers()
            if sublayer.weights
        ]
    if isinstance(layer, TransitionBlock):
        return [
            (layer.bn, f"{layer.name}_bn"),
            (layer.conv, f"{layer.name}_conv"),
        ]
    if layer.weights:
        return [(layer, layer.name)]
    return []


def _load_weights(model, weights, blocks, include_top, classes, data_format):
    if weights == "imagenet":
        path = _download_imagenet_weights(blocks, include_top)
        _copy_weights_by_name(
            _legacy_h5_weights(path), model, f"weights={weights!r}"
        )
        return
    path = str(weights)
    if path.endswith((".weights.h5", ".keras")):
        _load_keras_weights_file(
            model, path, blocks, include_top, classes, data_format
        )
        return
    legacy = _legacy_h5_weights(path)
    if legacy is not None:
        _copy_weights_by_name(legacy, model, f"weights={weights!r}")
        return
    # A legacy HDF5 file of this model (`save_weights("x.h5")` in Keras 2).
    model.load_weights(path)


def _load_keras_weights_file(
    model, path, blocks, include_top, classes, data_format
):
    """Load a Keras 3 `.weights.h5` or `.keras` file: of this model, or of
    the `keras.applications` DenseNet of the same depth and top."""
    if _holds_memory_efficient_blocks(path) or blocks not in _IMAGENET_BLOCKS:
        model.load_weights(path)
        return
    # Keras 3 files are keyed by the model's structure, not by layer names:
    # a keras.applications model's file loads into that model only, and is
    # mapped from there.
    name = _IMAGENET_BLOCKS[blocks]
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            f"`weights` is a file of keras.applications.{name}, which can "
            "only be read by building that model, and keras.applications "
            "builds DenseNet only with keras.config.image_data_format() == "
            f"'channels_last' (it is {keras.config.image_data_format()!r}). "
            "Set that format, or convert the model with "
            f"`from_keras_application`. Received: weights={path!r}"
        )
    input_shape = tuple(model.input_shape[1:])
    if data_format == "channels_first":
        input_shape = (*input_shape[1:], input_shape[0])
    try:
        source = getattr(keras.applications, name)(
            include_top=include_top,
            weights=path,
            input_shape=input_shape,
            classes=classes,
            classifier_activation=None,
        )
    except ValueError as error:
        raise ValueError(
            f"`weights` should be a weights file of this model or of "
            f"keras.applications.{name} with the same top. Received: "
            f"weights={path!r}, which fits neither"
        ) from error
    copy_keras_application_weights(source, model)


def _holds_memory_efficient_blocks(path):
    """Whether a Keras 3 `.weights.h5` or `.keras` file is of a model made
    of `MemoryEfficientDenseBlock`s: Keras 3 files key each layer's weights
    by its class (`layers/memory_efficient_dense_block_1/...`)."""
    import h5py

    try:
        with contextlib.ExitStack() as stack:
            weights = path
            if path.endswith(".keras"):
                archive = stack.enter_context(zipfile.ZipFile(path))
                weights = stack.enter_context(archive.open("model.weights.h5"))
            layers = stack.enter_context(h5py.File(weights, "r")).get("layers")
            return layers is not None and any(
                key.startswith("memory_efficient_dense_block") for key in layers
            )
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"`weights` should be {_WEIGHTS_FORMS}. Received: "
            f"weights={path!r}, which is not a Keras 3 weights file "
            f"({error})"
        ) from error


# The ImageNet weights keras.applications.densenet downloads (its file
# names and hashes): legacy HDF5 files keyed by layer name.
_IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
)
_IMAGENET_FILES = {
    ("DenseNet121", True): "9d60b8095a5708f2dcce2bca79d332c7",
    ("DenseNet121", False): "30ee3e1110167f948a6b9946edeeb738",
    ("DenseNet169", True): "d699b8f76981ab1b30698df4c175e90b",
    ("DenseNet169", False): "b8c4d4c20dd625c148057b9ff1c1176b",
    ("DenseNet201", True): "1ceb130c1ea1b78c3bf6114dbdfd8807",
    ("DenseNet201", False): "c13680b51ded0fb44dff2d8f86ac8bb1",
}


def _download_imagenet_weights(blocks, include_top):
    """The path of keras.applications' ImageNet weights file for `blocks`,
    downloaded by Keras into its cache on first use."""
    name = _IMAGENET_BLOCKS[blocks]
    file_name = (
        f"{name.lower()}_weights_tf_dim_ordering_tf_kernels"
        f"{'' if include_top else '_notop'}.h5"
    )
    return keras.utils.get_file(
        file_name,
        _IMAGENET_WEIGHTS_URL + file_name,
        cache_subdir="models",
        file_hash=_IMAGENET_FILES[(name, include_top)],
    )


def _legacy_h5_weights(path):
    """{layer name: arrays} of a legacy HDF5 weights file keyed by layer
    name, as keras.applications' downloads are, if `path` is one of a
    keras.applications DenseNet; `None` for another HDF5 file."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"`weights` should be {_WEIGHTS_FORMS}. Received: "
            f"weights={path!r}, which is not an HDF5 file ({error})"
        ) from error
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "conv2_block1_0_bn" not in group:
            return None
        weights = {}
        for layer_name in group.attrs["layer_names"]:
            layer = group[_text(layer_name)]
            weights[_text(layer_name)] = [
                np.asarray(layer[_text(weight_name)])
                for weight_name in layer.attrs["weight_names"]
            ]
        return weights


def _text(name):
    return name.decode("utf8") if isinstance(name, bytes) else name


def _check_weights_and_input_shape(
    weights,
    blocks,
    growth_rate,
    include_top,
    classes,
    input_shape,
    data_format,
):
    imagenet = weights == "imagenet"
    if imagenet and (blocks not in _IMAGENET_BLOCKS or growth_rate != 32):
        raise ValueError(
            "`weights='imagenet'` exists for DenseNet-121, -169 and -201 "
            f"only. Received: weights='imagenet' with blocks={blocks}, "
            f"growth_rate={growth_rate}"
        )
    if imagenet and include_top and classes != 1000:
        raise ValueError(
            "`weights='imagenet'` with `include_top=True` has 1000 classes. "
            f"Received: classes={classes}"
        )
    if weights is not None and not imagenet:
        if not str(weights).endswith((".weights.h5", ".keras", ".h5", ".hdf5")):
            raise ValueError(
                f"`weights` should be {_WEIGHTS_FORMS}. Received: "
                f"weights={weights!r}"
            )
        if not os.path.isfile(str(weights)):
            raise ValueError(
                f"`weights` should be {_WEIGHTS_FORMS}. Received: "
                f"weights={weights!r} (no such file)"
            )
    default = (
        (3, 224, 224) if data_format == "channels_first" else (224, 224, 3)
    )
    if input_shape is None:
        return default
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` should have 3 entries (height, width, channels "
            f"for {data_format}). Received: input_shape={input_shape!r}"
        )
    if data_format == "channels_first":
        channels, spatial = input_shape[0], input_shape[1:]
    else:
        channels, spatial = input_shape[-1], input_shape[:2]
    if any(s is not None and s < 32 for s in spatial):
        raise ValueError(
            "`input_shape` should have spatial sizes of at least 32. "
            f"Received: input_shape={input_shape!r}"
        )
    if imagenet and channels != 3:
        raise ValueError(
            "`weights='imagenet'` needs 3 input channels. "
            f"Received: input_shape={input_shape!r}"
        )
    if imagenet and include_top and input_shape != default:
        raise ValueError(
            f"`weights='imagenet'` with `include_top=True` needs "
            f"input_shape={default}. Received: input_shape={input_shape!r}"
        )
    return input_shape


def _model_input(input_tensor, input_shape):
    if input_tensor is None:
        return keras.Input(shape=input_shape)
    if not keras.backend.is_keras_tensor(input_tensor):
        return keras.Input(tensor=input_tensor, shape=input_shape)
    return input_tensor


def _source_inputs(input_tensor, inputs):
    if input_tensor is None:
        return inputs
    return keras.utils.get_source_inputs(input_tensor)


def _head(x, include_top, pooling, classes, activation, data_format):
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(
            data_format=data_format, name="avg_pool"
        )(x)
        return keras.layers.Dense(
            classes, activation=activation, name="predictions"
        )(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(
            data_format=data_format, name="avg_pool"
        )(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(
            data_format=data_format, name="max_pool"
        )(x)
    return x


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)
