"""U-Net++ on a pretrained encoder: nested dense skip pathways.

Reference:
- [UNet++: A Nested U-Net Architecture for Medical Image Segmentation](
    https://arxiv.org/abs/1807.10165) (Zhou et al., DLMIA 2018)
"""

import keras

from keras_fusion._internal.checks import check_choice
from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.models._decoder_blocks import Blocks
from keras_fusion.models._decoder_blocks import check_decoder_filters
from keras_fusion.models._decoder_blocks import decoder_input
from keras_fusion.models._decoder_blocks import encoder_features
from keras_fusion.models._encoder_levels import EncoderLevels
from keras_fusion.models._unet_decoders import build_rows
from keras_fusion.models._unet_decoders import heads

DEEP_SUPERVISION = (None, "average", "outputs")


def UNetPlusPlus(
    encoder,
    decoder_filters=None,
    deep_supervision=None,
    batch_norm=True,
    input_shape=None,
    classes=2,
    classifier_activation=None,
    recompute=False,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="unet_plus_plus",
):
    """U-Net++ (Zhou et al. 2018) on a pretrained encoder, at any size.

    The encoder's levels `Pk` (stride `2**k`, see `pyramid_outputs`) fill
    the first column of a grid of nodes `X(r, j)` at stride `2**r`. Each
    node `X(r, j)`, `j >= 1`, upsamples `X(r + 1, j - 1)` 2x (nearest),
    aligns it to the row's level (or, in row 0, to the input image) by
    cropping or padding, concatenates it with every earlier node of its
    row (`CropAndConcat`) and runs two 3x3 convolutions with BatchNorm and
    ReLU. The rows go up to the input's stride, so the output has the
    input's spatial size for every size the encoder takes, odd ones
    included; the last node `X(0, deepest)` gives the class map.

    With `recompute=True` every node, and every stage of the encoder
    between two levels (cut out of the encoder's graph as a sub-model
    sharing its weights), runs in `keras_fusion.Recompute`: the training
    step keeps only their inputs and outputs and recomputes the rest in
    the backward pass, with the plain model's outputs, gradients and
    BatchNorm statistics.

    Example:

    >>> import keras
    >>> from keras_fusion.models import UNetPlusPlus
    >>> encoder = keras.applications.MobileNetV2(
    ...     include_top=False, weights=None, input_shape=(None, None, 3)
    ... )
    >>> model = UNetPlusPlus(encoder, decoder_filters=8, classes=3)
    >>> model.output_shape
    (None, None, None, 3)
    >>> model.predict(keras.ops.zeros((1, 97, 129, 3)), verbose=0).shape
    (1, 97, 129, 3)

    Args:
        encoder: the encoder: a KerasHub `FeaturePyramidBackbone`, a
            `keras.applications` model (`include_top=False`), a
            `keras_fusion.models.DenseNet121`..`264`, or a dict of levels
            `{"Pk": tensor}` (see `pyramid_outputs`). Its weights are
            shared, not copied: freeze it with `encoder.trainable = False`.
        decoder_filters: the width of each row's nodes, deepest row first:
            a list of one positive int per row below the deepest level, or
            one int for all; `None` (the default) gives 16 doubled per row,
            `(256, 128, 64, 32, 16)` for five rows as in
            segmentation_models.
        deep_supervision: `None` (the default) outputs the last top node's
            class map; `"average"` the mean of one class map per top node
            `X(0, j)`; `"outputs"` returns those maps as a list (one loss
            each), the paper's deep supervision.
        batch_norm: whether each 3x3 convolution (then without bias) is
            followed by BatchNorm.
        input_shape: the input shape without the batch axis; defaults to
            the encoder's. Its channels must be the encoder's.
        classes: the number of classes: channels of the output.
        classifier_activation: the activation of the final 1x1
            convolution(s); `None` (the default) gives logits.
        recompute: whether the encoder's stages and the decoder's nodes
            recompute their forward pass in the backward pass (see above).
        batch_norm_momentum: the momentum of the decoder's BatchNorms.
        batch_norm_epsilon: the epsilon of the decoder's BatchNorms.
        data_format: `"channels_last"` or `"channels_first"`, the
            encoder's; defaults to `keras.config.image_data_format()`.
        synchronized: the decoder's BatchNorm statistics over all replicas
            of a `tf.distribute` strategy (TensorFlow backend).
        name: the model's name.

    Input shape:
        The encoder's: `(batch, height, width, channels)` with
        `"channels_last"`, spatial sizes at least the encoder's smallest
        (checked when the model is built, or when it runs for `None`
        sizes).

    Output shape:
        `(batch, height, width, classes)` (channels first with
        `"channels_first"`), the input's spatial size; a list of those with
        `deep_supervision="outputs"`.

    Returns:
        A `keras.Model`. The encoder is a sub-model named `encoder` (with
        `recompute`: `encoder_stage{k}_recompute` for each level `Pk`);
        node `X(r, j)`'s layers are `decoder_x{r}_{j}_upsample`, `_align`,
        `_concat`, `_conv{1,2}`, `_bn{1,2}`, `_relu{1,2}` (with
        `recompute`, in a sub-model `decoder_x{r}_{j}` wrapped in
        `decoder_x{r}_{j}_recompute`); the class map `output_conv` (or
        `output_conv_x0_{j}` and `output_average`).

    Reference:
    - [UNet++: A Nested U-Net Architecture for Medical Image Segmentation](
        https://arxiv.org/abs/1807.10165) (Zhou et al., DLMIA 2018)
    """
    data_format = standardize_data_format(data_format)
    classes = check_positive_int(classes, "classes")
    deep_supervision = check_choice(
        deep_supervision, "deep_supervision", DEEP_SUPERVISION
    )
    blocks = Blocks(
        batch_norm,
        batch_norm_momentum,
        batch_norm_epsilon,
        synchronized,
        data_format,
        recompute,
    )
    info = EncoderLevels(encoder, data_format, "UNetPlusPlus")
    widths = check_decoder_filters(
        decoder_filters, info.deepest, "UNetPlusPlus"
    )
    inputs, x = decoder_input(info, input_shape, "UNetPlusPlus")
    features = encoder_features(info, x, blocks.recompute)
    tops = build_rows(info, features, x, blocks, widths, nested=True)
    outputs = heads(
        tops, classes, classifier_activation, data_format, deep_supervision
    )
    return keras.Model(inputs, outputs, name=name)
