"""DenseNet as `keras.applications.densenet` builds it, with public layers.

The plain Keras wiring that the tests and benchmarks compare keras_fusion
against: a `Concatenate` after every dense layer, each output kept for the
backward pass. `conv_block`, `transition_block`, `dense_block` and `DenseNet`
build the same layers, with the same names, arguments and connections, as
the functions of the same names in Keras's `keras/src/applications/
densenet.py` (Keras 3), written here with `keras.layers` only, since Keras
exports the builders (`keras.applications.DenseNet121`) but not the blocks.
`tests/test_reference_densenet.py` checks the equivalence against
`keras.applications.DenseNet121`.

Reference:
- [Densely Connected Convolutional Networks](
    https://arxiv.org/abs/1608.06993) (CVPR 2017)
"""

import os

import keras
from keras import layers

# keras.applications' BatchNormalization epsilon.
BATCH_NORM_EPSILON = 1.001e-5
# keras.applications' growth rate: `dense_block` fixes it.
GROWTH_RATE = 32


def _channel_axis():
    return 3 if keras.config.image_data_format() == "channels_last" else 1


def conv_block(x, growth_rate, name):
    """One dense layer: BN-ReLU-Conv(1x1)-BN-ReLU-Conv(3x3), concatenated.

    Args:
        x: input tensor.
        growth_rate: int, the channels this layer adds.
        name: string, block label: the layers are `{name}_0_bn`,
            `{name}_0_relu`, `{name}_1_conv`, `{name}_1_bn`, `{name}_1_relu`,
            `{name}_2_conv` and `{name}_concat`.

    Returns:
        `x` concatenated with the layer's `growth_rate` new channels.
    """
    axis = _channel_axis()
    x1 = layers.BatchNormalization(
        axis=axis, epsilon=BATCH_NORM_EPSILON, name=f"{name}_0_bn"
    )(x)
    x1 = layers.Activation("relu", name=f"{name}_0_relu")(x1)
    x1 = layers.Conv2D(
        4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv"
    )(x1)
    x1 = layers.BatchNormalization(
        axis=axis, epsilon=BATCH_NORM_EPSILON, name=f"{name}_1_bn"
    )(x1)
    x1 = layers.Activation("relu", name=f"{name}_1_relu")(x1)
    x1 = layers.Conv2D(
        growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv"
    )(x1)
    return layers.Concatenate(axis=axis, name=f"{name}_concat")([x, x1])


def transition_block(x, reduction, name):
    """BN-ReLU-Conv(1x1)-AveragePooling(2x2) between two dense blocks.

    Args:
        x: input tensor.
        reduction: float, the fraction of the channels kept (the
            compression ratio), rounded down.
        name: string, block label: the layers are `{name}_bn`,
            `{name}_relu`, `{name}_conv` and `{name}_pool`.

    Returns:
        The output tensor, with half the spatial size.
    """
    axis = _channel_axis()
    x = layers.BatchNormalization(
        axis=axis, epsilon=BATCH_NORM_EPSILON, name=f"{name}_bn"
    )(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(
        int(x.shape[axis] * reduction), 1, use_bias=False, name=f"{name}_conv"
    )(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def dense_block(x, blocks, name):
    """`blocks` dense layers of growth rate 32, named `{name}_block{i}`.

    Args:
        x: input tensor.
        blocks: int, the number of dense layers.
        name: string, block label.

    Returns:
        The output tensor, with `32 * blocks` more channels.
    """
    for i in range(blocks):
        x = conv_block(x, GROWTH_RATE, name=f"{name}_block{i + 1}")
    return x


def DenseNet(
    blocks,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="densenet",
):
    """A DenseNet with ImageNet's stem, as `keras.applications` builds it.

    `keras.applications.DenseNet121(weights=None)` is
    `DenseNet([6, 12, 24, 16], name="densenet121")`; other `blocks` give the
    other depths (DenseNet-264: `[6, 12, 64, 48]`). Only random
    initialization or a weights file: no ImageNet download.

    Args:
        blocks: the number of dense layers in each of the four dense
            blocks.
        include_top: whether to end with global average pooling and a
            `Dense(classes)` layer named `predictions`.
        weights: `None` (random initialization) or the path of a weights
            file to load.
        input_tensor: optional Keras tensor to use as the model's input.
        input_shape: the input shape without the batch axis; defaults to
            `(224, 224, 3)` with `include_top`, else `(None, None, 3)`.
        pooling: without the top, `None` (4D output), `"avg"` or `"max"`
            (global pooling, 2D output).
        classes: the number of classes, with `include_top`.
        classifier_activation: the activation of the `predictions` layer.
        name: the model's name.

    Returns:
        A `keras.Model`.
    """
    if keras.config.image_data_format() == "channels_first":
        raise ValueError(
            "DenseNet does not support the `channels_first` image data "
            "format. Switch to `channels_last` by editing your local "
            "config file at ~/.keras/keras.json"
        )
    if not (weights is None or os.path.exists(weights)):
        raise ValueError(
            "`weights` should be `None` (random initialization) or the "
            f"path of a weights file. Received: weights={weights!r}"
        )
    if input_shape is None:
        input_shape = (224, 224, 3) if include_top else (None, None, 3)
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor

    axis = _channel_axis()
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)))(img_input)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(
        axis=axis, epsilon=BATCH_NORM_EPSILON, name="conv1_bn"
    )(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)))(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)

    x = dense_block(x, blocks[0], name="conv2")
    x = transition_block(x, 0.5, name="pool2")
    x = dense_block(x, blocks[1], name="conv3")
    x = transition_block(x, 0.5, name="pool3")
    x = dense_block(x, blocks[2], name="conv4")
    x = transition_block(x, 0.5, name="pool4")
    x = dense_block(x, blocks[3], name="conv5")

    x = layers.BatchNormalization(
        axis=axis, epsilon=BATCH_NORM_EPSILON, name="bn"
    )(x)
    x = layers.Activation("relu", name="relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(
            classes, activation=classifier_activation, name="predictions"
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        inputs = img_input
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
