"""The input and the classification head every model builder shares.

The arguments and layer names follow `keras.applications`: a builder takes
`input_tensor` and `input_shape` for its input, and `include_top`,
`pooling`, `classes` and `classifier_activation` for its head, whose layers
are named `avg_pool`, `max_pool` and `predictions`.
"""

import numbers

import keras

from keras_fusion.layers._input_size_check import InputSizeCheck


def image_input_shape(input_shape, default, data_format):
    """An image model's `input_shape`, checked, or its default.

    Args:
        input_shape: the user's `input_shape` (batch axis excluded), or
            `None`.
        default: the default `(height, width, channels)`, reordered to
            `(channels, height, width)` for `"channels_first"`.
        data_format: `"channels_last"` or `"channels_first"`.

    Returns:
        The input shape as a tuple.
    """
    if input_shape is None:
        if data_format == "channels_first":
            return (default[-1], *default[:-1])
        return tuple(default)
    order = (
        "(channels, height, width)"
        if data_format == "channels_first"
        else "(height, width, channels)"
    )
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` should have 3 entries, {order} for "
            f"data_format='{data_format}'. Received: "
            f"input_shape={input_shape!r}"
        )
    input_shape = tuple(input_shape)
    channels = input_shape[0 if data_format == "channels_first" else -1]
    spatial = spatial_sizes(input_shape, data_format)
    if not is_positive_int(channels) or not all(
        size is None or is_positive_int(size) for size in spatial
    ):
        raise ValueError(
            f"`input_shape` should be {order} for data_format="
            f"'{data_format}', with a positive int for the channels and a "
            "positive int or None for each spatial size. Received: "
            f"input_shape={input_shape!r}"
        )
    return tuple(None if s is None else int(s) for s in input_shape)


def is_positive_int(value):
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value > 0
    )


def spatial_sizes(input_shape, data_format):
    """The (height, width) of an image `input_shape`."""
    if data_format == "channels_first":
        return tuple(input_shape[1:])
    return tuple(input_shape[:2])


def model_input(input_tensor, input_shape):
    """The model's input: `input_tensor` if it is a Keras tensor, else a
    `keras.Input` of `input_shape` (wrapping `input_tensor` if given)."""
    if input_tensor is None:
        return keras.Input(shape=input_shape)
    if not keras.backend.is_keras_tensor(input_tensor):
        return keras.Input(tensor=input_tensor, shape=input_shape)
    return input_tensor


def check_input_size(inputs, minimum_size, model_name, data_format):
    """`inputs` as the model's layers take them: checked against the
    model's smallest spatial size `minimum_size` (one int per spatial
    dimension) by an `InputSizeCheck` layer named `input_size_check`,
    where a spatial size is `None`. The builder checks static sizes itself
    when it builds the model, with a message naming its argument."""
    if None not in spatial_sizes(tuple(inputs.shape[1:]), data_format):
        return inputs
    return InputSizeCheck(
        minimum_size,
        model_name,
        data_format=data_format,
        name="input_size_check",
    )(inputs)


def source_inputs(input_tensor, inputs):
    """The inputs of the `keras.Model`: those `input_tensor` comes from, so
    that layers before it stay part of the model. One source is returned
    as a tensor, not a list, so that the model takes a tensor without
    Keras's warning about the structure of its inputs."""
    if input_tensor is None:
        return inputs
    sources = source_tensors([input_tensor])
    return sources[0] if len(sources) == 1 else sources


def source_tensors(tensors):
    """The source inputs of `tensors`, each once, in the order
    `keras.utils.get_source_inputs` gives them.

    `keras.utils.get_source_inputs` follows every path of the graph back to
    the inputs, and a graph of residual blocks has 2**blocks of them
    (ResNet101's 33 blocks take hours); this walk visits each tensor once.
    """
    sources = {}
    seen = set()
    stack = list(reversed(tensors))
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation, node_index, _ = tensor._keras_history
        if not operation or not operation._inbound_nodes:
            sources.setdefault(id(tensor), tensor)
            continue
        node = operation._inbound_nodes[node_index]
        if node.is_input:
            for source in node.output_tensors:
                sources.setdefault(id(source), source)
        else:
            stack.extend(reversed(node.input_tensors))
    return list(sources.values())


def check_pooling(pooling):
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            "`pooling` should be None, 'avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )
    return pooling


def classification_head(
    x, include_top, pooling, classes, classifier_activation, data_format
):
    """Global average pooling and a `classes`-way `Dense` layer with
    `include_top`; else the global pooling `pooling` names, if any."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(
            data_format=data_format, name="avg_pool"
        )(x)
        return keras.layers.Dense(
            classes, activation=classifier_activation, name="predictions"
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


def pixel_classifier(
    x,
    classes,
    classifier_activation,
    data_format,
    name="output_conv",
    **kwargs,
):
    """The 1x1 convolution to `classes` channels, named `name`, that ends a
    segmentation model, with `classifier_activation` on the channel axis.

    A `Conv2D`'s activation runs on the last axis, which is the channel
    axis only with `"channels_last"`: with `"channels_first"` a softmax is
    a `keras.layers.Softmax(axis=1)` named `output_softmax` (for `name`
    `output_conv`; else `{name}_softmax`) after a linear
    convolution, and the other activations across channels (log-softmax)
    are refused.
    """
    across_channels = _softmax_across_channels(
        classifier_activation, data_format
    )
    x = keras.layers.Conv2D(
        classes,
        1,
        activation=None if across_channels else classifier_activation,
        data_format=data_format,
        name=name,
        **kwargs,
    )(x)
    if across_channels:
        softmax_name = (
            "output_softmax" if name == "output_conv" else f"{name}_softmax"
        )
        x = keras.layers.Softmax(axis=1, name=softmax_name)(x)
    return x


def class_activation(x, classifier_activation, data_format):
    """`classifier_activation` on the channel axis of class logits `x`,
    as `pixel_classifier` applies it: a layer named `output_activation`,
    or `output_softmax` for a softmax over `"channels_first"` channels;
    `None` returns `x`."""
    if classifier_activation is None:
        return x
    if _softmax_across_channels(classifier_activation, data_format):
        return keras.layers.Softmax(axis=1, name="output_softmax")(x)
    return keras.layers.Activation(
        classifier_activation, name="output_activation"
    )(x)


def _softmax_across_channels(classifier_activation, data_format):
    """Whether `classifier_activation` is a softmax that a layer's last
    axis would get wrong (`"channels_first"`); a log-softmax there is
    refused."""
    activation = keras.activations.get(classifier_activation)
    across_channels = data_format == "channels_first" and activation in (
        keras.activations.softmax,
        keras.activations.log_softmax,
    )
    if across_channels and activation is keras.activations.log_softmax:
        raise ValueError(
            "`classifier_activation='log_softmax'` is not supported with "
            "data_format='channels_first'; pass classifier_activation=None "
            "and a loss with `from_logits=True`. Received: "
            f"classifier_activation={classifier_activation!r}"
        )
    return across_channels
