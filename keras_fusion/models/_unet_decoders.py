"""The decoders of `UNet(encoder=...)` and `UNetPlusPlus`: rows of nodes
by stride, from the encoder's deepest level up to the input's size.

Row `r` holds feature maps at stride `2**r`. Its first node `X(r, 0)` is
the encoder's level `Pr`, where the encoder has one; node `X(r, j)` for
`j >= 1` upsamples `X(r + 1, j - 1)` 2x (nearest), aligns it to the row's
reference (`Pr`, or the input image for `r = 0`) by an `AlignTo` crop or
pad, concatenates it with the row's earlier nodes by `CropAndConcat`, and
runs two 3x3 convolutions with BatchNorm and ReLU. The U-Net keeps, in
each row, only the level and the one node its chain passes through; the
U-Net++ keeps every node (Zhou et al. 2018, "nested dense skip
pathways").
"""

import keras

from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import check_real
from keras_fusion.layers.crop_and_concat import CropAndConcat
from keras_fusion.models._decoder_blocks import Blocks
from keras_fusion.models._decoder_blocks import check_decoder_filters
from keras_fusion.models._decoder_blocks import decoder_input
from keras_fusion.models._decoder_blocks import encoder_features
from keras_fusion.models._encoder_levels import EncoderLevels
from keras_fusion.models._inputs_and_heads import pixel_classifier


def unet_on_encoder(
    encoder,
    decoder_filters,
    batch_norm,
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
):
    """`UNet(encoder=...)`: the arguments as `UNet` documents them."""
    classes = check_positive_int(classes, "classes")
    dropout_rate = check_real(
        dropout_rate, "dropout_rate", "a float in [0, 1)", lambda v: 0 <= v < 1
    )
    blocks = Blocks(
        batch_norm,
        batch_norm_momentum,
        batch_norm_epsilon,
        synchronized,
        data_format,
        recompute,
    )
    info = EncoderLevels(encoder, data_format, "UNet")
    widths = check_decoder_filters(decoder_filters, info.deepest, "UNet")
    inputs, x = decoder_input(info, input_shape, "UNet")
    features = encoder_features(info, x, blocks.recompute)
    if dropout_rate:
        deepest = list(features)[-1]
        features[deepest] = keras.layers.Dropout(
            dropout_rate, name="bottleneck_dropout"
        )(features[deepest])
    tops = build_rows(info, features, x, blocks, widths, nested=False)
    outputs = pixel_classifier(
        tops[-1][1], classes, classifier_activation, data_format
    )
    return keras.Model(inputs, outputs, name=name)


def build_rows(info, features, image, blocks, widths, nested):
    """The decoder's nodes.

    Args:
        info: the `EncoderLevels`.
        features: the levels computed in the model, `{"Pk": tensor}`.
        image: the model's (checked) input, row 0's reference.
        blocks: the `Blocks` of the model.
        widths: the filters of rows `deepest - 1 .. 0`, deepest first.
        nested: U-Net++ (every node) rather than U-Net (one per row).

    Returns:
        The top row's nodes as `(j, X(0, j))` pairs, `j >= 1`, in order.
    """
    deepest = info.deepest
    nodes = {(int(key[1:]), 0): value for key, value in features.items()}
    for j in range(1, deepest + 1):
        for r in range(deepest - j + 1):
            if (r + 1, j - 1) not in nodes:
                continue
            if not nested and r + j != deepest:
                continue
            same_row = [nodes[(r, c)] for c in range(j) if (r, c) in nodes]
            if not nested:
                same_row = same_row[:1] if (r, 0) in nodes else []
            nodes[(r, j)] = _node(
                info,
                blocks,
                nodes[(r + 1, j - 1)],
                same_row,
                image if r == 0 and (r, 0) not in nodes else None,
                r,
                widths[deepest - 1 - r],
                f"decoder_x{r}_{j}" if nested else f"decoder_stage{r}",
            )
    return [
        (j, nodes[(0, j)]) for j in range(1, deepest + 1) if (0, j) in nodes
    ]


def _node(info, blocks, below, same_row, image, r, filters, name):
    """Node `X(r, j)` from the node below and the row's earlier nodes
    (the row's level first, where it has one); `image` is the reference
    of row 0 when it has no level. Rows without a level or the image hold
    maps twice the size of the row below: nothing to align."""
    inputs = [below, *same_row] + ([image] if image is not None else [])
    if image is not None:
        reference = len(inputs) - 1
    elif info.has_level(r):
        reference = 1
    else:
        reference = None

    def build(level_inputs):
        level_inputs = (
            level_inputs if isinstance(level_inputs, list) else [level_inputs]
        )
        x = blocks.upsample(level_inputs[0], 2, name)
        if reference is not None:
            x = blocks.align(x, level_inputs[reference], info.methods[r], name)
        if same_row:
            x = CropAndConcat(
                data_format=blocks.data_format, name=f"{name}_concat"
            )([*level_inputs[1 : 1 + len(same_row)], x])
        return blocks.two_convs(x, filters, name)

    return blocks.level(build, inputs if len(inputs) > 1 else below, name)


def heads(tops, classes, classifier_activation, data_format, deep_supervision):
    """The class maps: one 1x1 convolution `output_conv` on the last top
    node, or with `deep_supervision` one `output_conv_x0_{j}` per top node,
    averaged (`"average"`) or returned as a list (`"outputs"`)."""
    if deep_supervision is None:
        return pixel_classifier(
            tops[-1][1], classes, classifier_activation, data_format
        )
    outputs = [
        pixel_classifier(
            top,
            classes,
            classifier_activation,
            data_format,
            name=f"output_conv_x0_{j}",
        )
        for j, top in tops
    ]
    if deep_supervision == "outputs":
        return outputs
    return keras.layers.Average(name="output_average")(outputs)
