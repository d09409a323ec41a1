"""The U-Net of Ronneberger et al. (2015), built with `CropAndConcat`.

Reference:
- [U-Net: Convolutional Networks for Biomedical Image Segmentation](
    https://arxiv.org/abs/1505.04597) (Ronneberger et al., MICCAI 2015)
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
from keras_fusion.models._inputs_and_heads import check_input_size
from keras_fusion.models._inputs_and_heads import image_input_shape
from keras_fusion.models._inputs_and_heads import model_input
from keras_fusion.models._inputs_and_heads import pixel_classifier
from keras_fusion.models._inputs_and_heads import source_inputs
from keras_fusion.models._inputs_and_heads import spatial_sizes
from keras_fusion.models._recomputed_levels import recomputed_level
from keras_fusion.models._unet_decoders import unet_on_encoder


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
    size = check_positive_int(size, "size")
    num_levels = check_positive_int(num_levels, "num_levels")
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
    num_levels=4,
    filters=64,
    encoder=None,
    decoder_filters=None,
    batch_norm=None,
    input_tensor=None,
    input_shape=None,
    classes=2,
    classifier_activation=None,
    recompute=False,
    dropout_rate=0.0,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="unet",
):
    """The original U-Net with valid convolutions and cropped skips, or the
    U-Net decoder on a pretrained encoder.

    Each encoder level runs two 3x3 valid convolutions with ReLU and a 2x2
    max pooling; each decoder level a 2x2 up-convolution, a `CropAndConcat`
    of the encoder's feature map with the up-sampled one, and two 3x3 valid
    convolutions; a 1x1 convolution maps to `classes` channels. With the
    paper's 572x572 input the output is 388x388 (see `unet_level_sizes`).

    With `recompute=True` the model keeps only each level's inputs and
    outputs (what the skips and the next level need) for the backward
    pass, and recomputes each level's forward pass there: each level is a
    functional sub-model wrapped in `keras_fusion.Recompute`. Outputs,
    gradients and BatchNorm moving statistics equal those of the plain
    model, whose weights it takes in the same order; the price is one more
    forward pass per training step (see
    `benchmarks/results/unet_memory.md`).

    With `encoder`, the model is the U-Net decoder on that encoder's levels
    `Pk` (stride `2**k`, see `pyramid_outputs`), as segmentation_models
    builds it: from the deepest level, each decoder level upsamples 2x
    (nearest), aligns the map to the encoder's level of that stride (or to
    the input image at stride 1) by cropping or padding, concatenates it
    with that level (`CropAndConcat`) and runs two 3x3 "same" convolutions
    with BatchNorm and ReLU, up to the input's stride. The output has the
    input's spatial size for every size the encoder takes, odd ones
    included. With `recompute`, each decoder level and each stage of the
    encoder between two levels (cut out of its graph as a sub-model that
    shares its weights) runs in `Recompute`.

    Example:

    >>> from keras_fusion.models import UNet
    >>> model = UNet(input_shape=(572, 572, 1), filters=4)
    >>> model.output_shape
    (None, 388, 388, 2)
    >>> recomputing = UNet(
    ...     input_shape=(572, 572, 1),
    ...     filters=4,
    ...     batch_norm=True,
    ...     dropout_rate=0.5,
    ...     recompute=True,
    ... )
    >>> recomputing.output_shape
    (None, 388, 388, 2)
    >>> [layer.name for layer in recomputing.layers[1:4]]
    ['encoder0_recompute', 'encoder0_pool', 'encoder1_recompute']

    On a pretrained encoder (here with random weights), at an odd size:

    >>> import keras
    >>> encoder = keras.applications.ResNet50(
    ...     include_top=False, weights=None, input_shape=(None, None, 3)
    ... )
    >>> model = UNet(encoder=encoder, decoder_filters=8, classes=3)
    >>> model.predict(keras.ops.zeros((1, 97, 129, 3)), verbose=0).shape
    (1, 97, 129, 3)

    Args:
        num_levels: the number of pooling (and up-convolution) steps, the
            U-Net's depth; 4 in the paper. (Not `depth`, which is
            `DenseNetBC`'s number of layers.)
        filters: the first level's convolution width, doubled at each level
            below it; 64 in the paper, smaller for fast experiments.
        encoder: `None` (the default) for the paper's U-Net, or the
            encoder to put the U-Net decoder on: a KerasHub
            `FeaturePyramidBackbone`, a `keras.applications` model
            (`include_top=False`), a `keras_fusion.models.DenseNet121` ..
            `264`, or a dict of levels `{"Pk": tensor}` (see
            `pyramid_outputs`). Its weights are shared, not copied: freeze
            it with `encoder.trainable = False`. `num_levels`, `filters`
            and `input_tensor` are the paper's U-Net's and are refused
            with it.
        decoder_filters: with `encoder`, the width of each decoder level,
            deepest first: one positive int per 2x upsampling from the
            deepest level to the input's stride, or one int for all;
            `None` (the default) gives 16 doubled per level, `(256, 128,
            64, 32, 16)` for five levels as in segmentation_models.
        batch_norm: whether each 3x3 convolution (then without a bias) is
            followed by a `keras.layers.BatchNormalization` (with
            `batch_norm_momentum`, `batch_norm_epsilon` and
            `synchronized`) before its ReLU. `None` (the default) is
            `False` for the paper's U-Net (its convolutions with bias and
            ReLU) and `True` with `encoder`.
        input_tensor: optional tensor to use as the model's input.
        input_shape: the input shape without the batch axis, channels where
            `data_format` puts them; spatial sizes may be `None`. Defaults
            to `input_tensor`'s shape if it is given, else to the paper's
            one-channel 572x572 image: `(572, 572, 1)`, or `(1, 572, 572)`
            with `"channels_first"`; with `encoder`, to the encoder's
            input shape, whose channels it must keep.
        classes: the number of classes: channels of the output.
        classifier_activation: the activation of the final 1x1 convolution;
            `None` (the default) gives logits.
        recompute: whether each level recomputes its forward pass in the
            backward pass instead of keeping its activations (see above).
        dropout_rate: the rate of a dropout after the bottleneck's second
            convolution (with `encoder`, on the deepest level), the end of
            the contracting path, as in the paper; a float in [0, 1).
            `0.0` (the default) adds no dropout layer.
        batch_norm_momentum: the momentum of every BatchNorm's moving
            statistics (with `batch_norm=True`).
        batch_norm_epsilon: the epsilon of every BatchNorm (with
            `batch_norm=True`); the library's default, `keras.applications`'
            DenseNet value, not Keras's layer default 1e-3.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        synchronized: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy (TensorFlow backend; with
            `batch_norm=True`).
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
        A `keras.Model`, with level `i = 0` the shallowest. Its layers are
        named `encoder{i}_conv{1,2}`, `encoder{i}_pool`,
        `bottleneck_conv{1,2}`, `decoder{i}_upconv`,
        `decoder{i}_crop_and_concat`, `decoder{i}_conv{1,2}` and
        `output_conv` (a softmax with `"channels_first"` is a layer of
        its own, `output_softmax`); with `batch_norm`, each convolution
        `{level}_conv{k}` is followed by `{level}_bn{k}` and
        `{level}_relu{k}`; with `dropout_rate`, `bottleneck_conv2` (or
        `bottleneck_relu2`) by `bottleneck_dropout`. With `recompute`,
        the layers of each level (all but the poolings and `output_conv`)
        sit, under the same names, in a sub-model `encoder{i}`,
        `bottleneck` or `decoder{i}` (which takes `[skip, below]`),
        wrapped in a `Recompute` layer named `encoder{i}_recompute`,
        `bottleneck_recompute` or `decoder{i}_recompute` in the model.

    Reference:
    - [U-Net: Convolutional Networks for Biomedical Image Segmentation](
        https://arxiv.org/abs/1505.04597) (Ronneberger et al., MICCAI 2015)
    """
    data_format = standardize_data_format(data_format)
    if encoder is not None:
        paper_only = [
            (argument, value)
            for argument, value, unset in (
                ("num_levels", num_levels, num_levels == 4),
                ("filters", filters, filters == 64),
                ("input_tensor", input_tensor, input_tensor is None),
            )
            if not unset
        ]
        if paper_only:
            argument, value = paper_only[0]
            raise ValueError(
                f"`{argument}` is an argument of the paper's U-Net; with "
                "`encoder` the levels are the encoder's, `decoder_filters` "
                "sets the decoder's widths and `input_shape` the input's. "
                f"Received: {argument}={value!r} with encoder={encoder!r}"
            )
        return unet_on_encoder(
            encoder,
            decoder_filters,
            True if batch_norm is None else batch_norm,
            input_shape,
            classes,
            classifier_activation,
            recompute,
            dropout_rate,
            batch_norm_momentum,
            batch_norm_epsilon,
            data_format,
            synchronized,
            name,
        )
    if decoder_filters is not None:
        raise ValueError(
            "`decoder_filters` sets the widths of the decoder on an "
            "`encoder`; the paper's U-Net takes `filters`. Received: "
            f"decoder_filters={decoder_filters!r} without encoder"
        )
    num_levels = check_positive_int(num_levels, "num_levels")
    filters = check_positive_int(filters, "filters")
    classes = check_positive_int(classes, "classes")
    batch_norm = check_bool(
        False if batch_norm is None else batch_norm, "batch_norm"
    )
    dropout_rate = check_real(
        dropout_rate, "dropout_rate", "a float in [0, 1)", lambda v: 0 <= v < 1
    )
    recompute = check_bool(recompute, "recompute")
    batch_norm_momentum, batch_norm_epsilon = check_batch_norm_arguments(
        batch_norm_momentum, batch_norm_epsilon
    )
    synchronized = check_synchronized(synchronized)
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    input_shape = image_input_shape(input_shape, (572, 572, 1), data_format)
    smallest = _smallest_size(num_levels)
    for size in spatial_sizes(input_shape, data_format):
        if size is not None and size < smallest:
            raise ValueError(
                "`input_shape` is too small for a U-Net with "
                f"num_levels={num_levels}: a spatial size of {size} "
                "shrinks below one pixel; the smallest is "
                f"{smallest}. Received: input_shape={input_shape!r}"
            )

    def conv(x, width, prefix, k):
        # Without BatchNorm, the paper's convolution with bias and ReLU.
        x = keras.layers.Conv2D(
            width,
            3,
            padding="valid",
            activation=None if batch_norm else "relu",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            data_format=data_format,
            name=f"{prefix}_conv{k}",
        )(x)
        if not batch_norm:
            return x
        x = keras.layers.BatchNormalization(
            axis=channel_axis(4, data_format),
            momentum=batch_norm_momentum,
            epsilon=batch_norm_epsilon,
            synchronized=synchronized,
            name=f"{prefix}_bn{k}",
        )(x)
        return keras.layers.ReLU(name=f"{prefix}_relu{k}")(x)

    def two_convs(x, width, prefix):
        return conv(conv(x, width, prefix, 1), width, prefix, 2)

    def bottleneck(x, width, prefix):
        x = two_convs(x, width, prefix)
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, name=f"{prefix}_dropout")(x)
        return x

    def decoder(inputs, width, prefix):
        skip, below = inputs
        x = keras.layers.Conv2DTranspose(
            width,
            2,
            strides=2,
            data_format=data_format,
            name=f"{prefix}_upconv",
        )(below)
        x = CropAndConcat(
            data_format=data_format, name=f"{prefix}_crop_and_concat"
        )([skip, x])
        return two_convs(x, width, prefix)

    def level(build, inputs, width, prefix):
        """`build`'s layers applied to `inputs`: in the model's graph, or
        with `recompute` in a sub-model named `prefix` wrapped in
        `Recompute`."""
        if not recompute:
            return build(inputs, width, prefix)
        return recomputed_level(
            lambda level_inputs: build(level_inputs, width, prefix),
            inputs,
            prefix,
            data_format,
        )

    inputs = model_input(input_tensor, input_shape)
    x = check_input_size(inputs, (smallest, smallest), "UNet", data_format)
    skips = []
    for i in range(num_levels):
        x = level(two_convs, x, filters * 2**i, f"encoder{i}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(
            2, data_format=data_format, name=f"encoder{i}_pool"
        )(x)
    x = level(bottleneck, x, filters * 2**num_levels, "bottleneck")
    for i in reversed(range(num_levels)):
        x = level(decoder, [skips[i], x], filters * 2**i, f"decoder{i}")
    outputs = pixel_classifier(
        x,
        classes,
        classifier_activation,
        data_format,
    )
    return keras.Model(source_inputs(input_tensor, inputs), outputs, name=name)


def _smallest_size(num_levels):
    """The smallest spatial size a U-Net of `num_levels` levels takes: the
    sizes `unet_level_sizes` computes grow with the input's."""
    size = 1
    while True:
        sizes = unet_level_sizes(size, num_levels)
        if len(sizes["encoder"]) == num_levels and sizes["output"] >= 1:
            return size
        size += 1
