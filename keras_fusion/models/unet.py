"""The U-Net of Ronneberger et al. (2015), built with `CropAndConcat`.

Reference:
- [U-Net: Convolutional Networks for Biomedical Image Segmentation](
    https://arxiv.org/abs/1505.04597) (Ronneberger et al., MICCAI 2015)
"""

import keras

from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.layers.crop_and_concat import CropAndConcat
from keras_fusion.models._inputs_and_heads import image_input_shape
from keras_fusion.models._inputs_and_heads import model_input
from keras_fusion.models._inputs_and_heads import source_inputs
from keras_fusion.models._inputs_and_heads import spatial_sizes


def unet_level_sizes(size, num_levels=4):
    """Spatial sizes through a valid-convolution U-Net, level by level.

    Each 3x3 valid convolution removes one pixel from each side (a
    convolution's output size is `(N - F + 2 * pad) / stride + 1`, here with
    `F=3`, `pad=0`, `stride=1`), each level runs two of them, a 2x2 max
    pooling halves the size and a 2x2 up-convolution doubles it.

    Example:

    >>> from keras_fusion.models import unet_level_sizes
    >>> sizes = unet_level_sizes(572)
    >>> sizes["encoder"][0], sizes["bottleneck"], sizes["output"]
    ((572, 568), (32, 28), 388)

    Args:
        size: the input's spatial size along one axis.
        num_levels: the number of pooling steps.

    Returns:
        A dict with, per level, `"encoder"`: `(input size, size after the
        two convolutions)`; `"bottleneck"`: the same at the bottom;
        `"decoder"` (deepest first): `(size after up-convolution, size after
        the two convolutions)`; `"crop"`: the size each skip connection is
        cropped from and to; `"output"`: the output size.

    Reference:
    - [U-Net: Convolutional Networks for Biomedical Image Segmentation](
        https://arxiv.org/abs/1505.04597) (Ronneberger et al., MICCAI 2015),
        Fig. 1
    """
    encoder, crop, decoder = [], [], []
    current = size
    for _ in range(num_levels):
        encoder.append((current, current - 4))
        if current - 4 < 2:
            break
        current = (current - 4) // 2
    bottleneck = (current, current - 4)
    current -= 4
    for level in reversed(encoder):
        upsampled = current * 2
        crop.append((level[1], upsampled))
        decoder.append((upsampled, upsampled - 4))
        current = upsampled - 4
    return {
        "encoder": encoder,
        "bottleneck": bottleneck,
        "decoder": decoder,
        "crop": crop,
        "output": current,
    }


def UNet(
    input_shape=None,
    classes=2,
    num_levels=4,
    filters=64,
    classifier_activation=None,
    data_format=None,
    input_tensor=None,
    name="unet",
):
    """The original U-Net with valid convolutions and cropped skips.

    Each encoder level runs two 3x3 valid convolutions with ReLU and a 2x2
    max pooling; each decoder level a 2x2 up-convolution, a `CropAndConcat`
    of the encoder's feature map with the up-sampled one, and two 3x3 valid
    convolutions; a 1x1 convolution maps to `classes` channels. With the
    paper's 572x572 input the output is 388x388 (see `unet_level_sizes`).

    Example:

    >>> from keras_fusion.models import UNet
    >>> model = UNet(input_shape=(572, 572, 1), filters=4)
    >>> model.output_shape
    (None, 388, 388, 2)

    Args:
        input_shape: the input shape without the batch axis, channels where
            `data_format` puts them; spatial sizes may be `None`. Defaults
            to `input_tensor`'s shape if it is given, else to the paper's
            one-channel 572x572 image: `(572, 572, 1)`, or `(1, 572, 572)`
            with `"channels_first"`.
        classes: the number of classes: channels of the output.
        num_levels: the number of pooling (and up-convolution) steps, the
            U-Net's depth; 4 in the paper. (Not `depth`, which is
            `DenseNetBC`'s number of layers.)
        filters: the first level's convolution width, doubled at each level
            below it; 64 in the paper, smaller for fast experiments.
        classifier_activation: the activation of the final 1x1 convolution;
            `None` (the default) gives logits.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        input_tensor: optional tensor to use as the model's input.
        name: the model's name.

    Input shape:
        `(batch, height, width, channels)` with `"channels_last"`,
        `(batch, channels, height, width)` with `"channels_first"`. Masks
        are not supported.

    Output shape:
        `(batch, out_height, out_width, classes)` with `"channels_last"`,
        `(batch, classes, out_height, out_width)` with `"channels_first"`:
        each spatial size shrinks as `unet_level_sizes` computes.

    Returns:
        A `keras.Model`. Its layers are named `encoder{i}_conv{1,2}`,
        `encoder{i}_pool`, `bottleneck_conv{1,2}`, `decoder{i}_upconv`,
        `decoder{i}_crop_and_concat`, `decoder{i}_conv{1,2}` and
        `output_conv`, with level `i = 0` the shallowest.

    Reference:
    - [U-Net: Convolutional Networks for Biomedical Image Segmentation](
        https://arxiv.org/abs/1505.04597) (Ronneberger et al., MICCAI 2015)
    """
    data_format = standardize_data_format(data_format)
    num_levels = check_positive_int(num_levels, "num_levels")
    filters = check_positive_int(filters, "filters")
    classes = check_positive_int(classes, "classes")
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    input_shape = image_input_shape(input_shape, (572, 572, 1), data_format)
    for size in spatial_sizes(input_shape, data_format):
        if size is None:
            continue
        sizes = unet_level_sizes(size, num_levels)
        if len(sizes["encoder"]) < num_levels or sizes["output"] < 1:
            raise ValueError(
                "`input_shape` is too small for a U-Net with "
                f"num_levels={num_levels}: "
                f"a spatial size of {size} shrinks below one pixel. "
                f"Received: input_shape={input_shape!r}"
            )

    def conv(x, width, name):
        return keras.layers.Conv2D(
            width,
            3,
            padding="valid",
            activation="relu",
            kernel_initializer="he_normal",
            data_format=data_format,
            name=name,
        )(x)

    inputs = model_input(input_tensor, input_shape)
    x = inputs
    skips = []
    for level in range(num_levels):
        width = filters * 2**level
        x = conv(x, width, f"encoder{level}_conv1")
        x = conv(x, width, f"encoder{level}_conv2")
        skips.append(x)
        x = keras.layers.MaxPooling2D(
            2, data_format=data_format, name=f"encoder{level}_pool"
        )(x)
    x = conv(x, filters * 2**num_levels, "bottleneck_conv1")
    x = conv(x, filters * 2**num_levels, "bottleneck_conv2")
    for level in reversed(range(num_levels)):
        width = filters * 2**level
        x = keras.layers.Conv2DTranspose(
            width,
            2,
            strides=2,
            data_format=data_format,
            name=f"decoder{level}_upconv",
        )(x)
        x = CropAndConcat(
            data_format=data_format, name=f"decoder{level}_crop_and_concat"
        )([skips[level], x])
        x = conv(x, width, f"decoder{level}_conv1")
        x = conv(x, width, f"decoder{level}_conv2")
    outputs = keras.layers.Conv2D(
        classes,
        1,
        activation=classifier_activation,
        data_format=data_format,
        name="output_conv",
    )(x)
    return keras.Model(source_inputs(input_tensor, inputs), outputs, name=name)
