"""The feature-pyramid segmentation head on a pretrained encoder.

Reference:
- [Panoptic Feature Pyramid Networks](https://arxiv.org/abs/1901.02446)
    (Kirillov et al., CVPR 2019)
- [Feature Pyramid Networks for Object Detection](
    https://arxiv.org/abs/1612.03144) (Lin et al., CVPR 2017)
"""

import keras

from keras_fusion._internal.checks import channel_axis
from keras_fusion._internal.checks import check_choice
from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import check_real
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.layers.fusion_selector import FusionSelector
from keras_fusion.models._decoder_blocks import Blocks
from keras_fusion.models._decoder_blocks import decoder_input
from keras_fusion.models._decoder_blocks import encoder_features
from keras_fusion.models._encoder_levels import EncoderLevels
from keras_fusion.models._inputs_and_heads import class_activation

FUSIONS = ("add", "concat", "weighted_add")
MERGES = ("add", "concat")


def FPN(
    encoder,
    decoder_filters=256,
    segmentation_filters=128,
    fusion="add",
    merge="add",
    batch_norm=True,
    input_shape=None,
    classes=2,
    classifier_activation=None,
    recompute=False,
    dropout_rate=0.2,
    batch_norm_momentum=0.99,
    batch_norm_epsilon=1.001e-5,
    data_format=None,
    synchronized=False,
    name="fpn",
):
    """The Panoptic FPN segmentation head (Kirillov et al. 2019) on a
    pretrained encoder, at any size.

    The encoder's levels from `P2` (stride 4) down (see `pyramid_outputs`)
    get a 1x1 lateral convolution to `decoder_filters` channels; the
    top-down path upsamples each pyramid level 2x (nearest), aligns it to
    the next shallower lateral by cropping or padding and fuses the two
    with `FusionSelector(mode=fusion)` (`"add"` as in the paper;
    `"concat"` is followed by a 1x1 convolution back to `decoder_filters`
    channels; `"weighted_add"` learns a normalized weight per input).
    Each pyramid level then runs 3x3 convolutions with BatchNorm and ReLU
    to `segmentation_filters` channels, upsampled 2x after each until
    stride 4 (one convolution for `P2`); the maps are merged (`merge`:
    summed or concatenated), dropped out (`dropout_rate`), mapped to
    `classes` by a 1x1 convolution and upsampled 2x at a time (nearest:
    Keras's bilinear `UpSampling2D` fails on TensorFlow for sizes known
    only at run time) to the input's spatial size, aligned on the way to
    the encoder's shallower levels and the input: for every size the
    encoder takes, odd ones included.

    With `recompute=True` every level of the head (its lateral, fusion
    and segmentation branch), and every stage of the encoder between two
    levels (cut out of the encoder's graph as a sub-model sharing its
    weights), runs in `keras_fusion.Recompute`, with the plain model's
    outputs, gradients and BatchNorm statistics.

    Example:

    >>> import keras
    >>> from keras_fusion.models import FPN
    >>> encoder = keras.applications.ResNet50(
    ...     include_top=False, weights=None, input_shape=(None, None, 3)
    ... )
    >>> model = FPN(encoder, decoder_filters=16, segmentation_filters=8)
    >>> model.predict(keras.ops.zeros((1, 97, 129, 3)), verbose=0).shape
    (1, 97, 129, 2)

    Args:
        encoder: the encoder: a KerasHub `FeaturePyramidBackbone`, a
            `keras.applications` model (`include_top=False`), a
            `keras_fusion.models.DenseNet121`..`264`, or a dict of levels
            `{"Pk": tensor}` (see `pyramid_outputs`); levels shallower
            than `P2` are not used. Its weights are shared, not copied:
            freeze it with `encoder.trainable = False`.
        decoder_filters: the pyramid's channels (256 in the paper).
        segmentation_filters: the segmentation branches' channels (128 in
            the paper).
        fusion: how the top-down path fuses a lateral with the upsampled
            level: `"add"` (the default), `"concat"` or `"weighted_add"`
            (`keras_fusion.FusionSelector`'s modes).
        merge: how the branches are merged at stride 4: `"add"` (the
            default, as in the paper) or `"concat"`.
        batch_norm: whether each 3x3 convolution (then without bias) is
            followed by BatchNorm.
        input_shape: the input shape without the batch axis; defaults to
            the encoder's. Its channels must be the encoder's.
        classes: the number of classes: channels of the output.
        classifier_activation: the activation of the final 1x1
            convolution; `None` (the default) gives logits.
        recompute: whether the encoder's stages and the head's levels
            recompute their forward pass in the backward pass (see above).
        dropout_rate: the rate of the dropout after the merge, a float in
            [0, 1); 0.2 by default, as segmentation_models.
        batch_norm_momentum: the momentum of the head's BatchNorms.
        batch_norm_epsilon: the epsilon of the head's BatchNorms.
        data_format: `"channels_last"` or `"channels_first"`, the
            encoder's; defaults to `keras.config.image_data_format()`.
        synchronized: the head's BatchNorm statistics over all replicas
            of a `tf.distribute` strategy (TensorFlow backend).
        name: the model's name.

    Input shape:
        The encoder's: `(batch, height, width, channels)` with
        `"channels_last"`, spatial sizes at least the encoder's smallest
        (checked when the model is built, or when it runs for `None`
        sizes).

    Output shape:
        `(batch, height, width, classes)` (channels first with
        `"channels_first"`), the input's spatial size.

    Returns:
        A `keras.Model`. The encoder is a sub-model named `encoder` (with
        `recompute`: `encoder_stage{k}_recompute` for each level `Pk`);
        level `k`'s layers are `fpn_p{k}_lateral`, `fpn_p{k}_upsample`,
        `fpn_p{k}_align`, `fpn_p{k}_fusion` (and `fpn_p{k}_projection`
        with `"concat"`) and its branch's `fpn_p{k}_segmentation{i}_conv1`,
        `_bn1`, `_relu1`, `_upsample`, `_align` (with `recompute`, in a
        sub-model `fpn_p{k}` wrapped in `fpn_p{k}_recompute`); then
        `fpn_merge`, `fpn_dropout`, `output_conv`, and for each row `r`
        from the pyramid's stride to the input's, `output_row{r}_upsample`
        and `output_row{r}_align`.

    Reference:
    - [Panoptic Feature Pyramid Networks](https://arxiv.org/abs/1901.02446)
        (Kirillov et al., CVPR 2019)
    """
    data_format = standardize_data_format(data_format)
    decoder_filters = check_positive_int(decoder_filters, "decoder_filters")
    segmentation_filters = check_positive_int(
        segmentation_filters, "segmentation_filters"
    )
    fusion = check_choice(fusion, "fusion", FUSIONS)
    merge = check_choice(merge, "merge", MERGES)
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
    info = EncoderLevels(encoder, data_format, "FPN")
    inputs, image = decoder_input(info, input_shape, "FPN")
    features = encoder_features(info, image, blocks.recompute)
    # The pyramid starts at stride 4; shallower levels only set the sizes
    # the class map is aligned to on its way to the input's.
    exponents = [k for k in info.exponents if k >= 2] or info.exponents[-1:]

    def branch(p, k, references, prefix):
        """`P{k}`'s segmentation branch: a 3x3 convolution, then, until the
        shallowest level's stride, a 2x upsampling aligned to the next
        shallower level and another convolution's worth of steps."""
        x = p
        rows = [r for r in reversed(exponents) if r < k]
        steps = list(zip(rows, references, strict=True))
        for i, step in enumerate(steps or [None], start=1):
            name = f"{prefix}_segmentation{i}"
            x = blocks.conv(x, segmentation_filters, name, 1)
            if step is not None:
                row, reference = step
                x = blocks.upsample(x, 2 ** (k - row), name)
                x = blocks.align(x, reference, info.methods[row], name)
                k = row
        return x

    def level(level_inputs, k, upper_exponent):
        """`P{k}`'s lateral, its fusion with the level above (exponent
        `upper_exponent`, or `None` at the top) and its branch."""
        if not isinstance(level_inputs, list):
            level_inputs = [level_inputs]
        feature, *rest = level_inputs
        upper = rest.pop(0) if upper_exponent is not None else None
        prefix = f"fpn_p{k}"
        p = keras.layers.Conv2D(
            decoder_filters,
            1,
            data_format=data_format,
            name=f"{prefix}_lateral",
        )(feature)
        if upper is not None:
            up = blocks.upsample(upper, 2 ** (upper_exponent - k), prefix)
            up = blocks.align(up, p, info.methods[k], prefix)
            p = FusionSelector(
                mode=fusion, data_format=data_format, name=f"{prefix}_fusion"
            )([p, up])
            if fusion == "concat":
                p = keras.layers.Conv2D(
                    decoder_filters,
                    1,
                    data_format=data_format,
                    name=f"{prefix}_projection",
                )(p)
        return [p, branch(p, k, rest, prefix)]

    pyramid, upper_exponent, branches = None, None, []
    for k in reversed(exponents):
        level_inputs = [features[f"P{k}"]]
        if pyramid is not None:
            level_inputs.append(pyramid)
        level_inputs += [
            features[f"P{r}"] for r in reversed(exponents) if r < k
        ]
        pyramid, segmentation = blocks.level(
            lambda level_inputs, k=k, upper=upper_exponent: level(
                level_inputs, k, upper
            ),
            level_inputs if len(level_inputs) > 1 else level_inputs[0],
            f"fpn_p{k}",
        )
        branches.append(segmentation)
        upper_exponent = k
    if merge == "add" or len(branches) == 1:
        x = branches[0]
        if len(branches) > 1:
            x = keras.layers.Add(name="fpn_merge")(branches)
    else:
        x = keras.layers.Concatenate(
            axis=channel_axis(4, data_format), name="fpn_merge"
        )(branches)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name="fpn_dropout")(x)
    x = keras.layers.Conv2D(
        classes, 1, data_format=data_format, name="output_conv"
    )(x)
    x = blocks.to_input_size(
        x, exponents[0], info, features, image, "output_row"
    )
    x = class_activation(x, classifier_activation, data_format)
    return keras.Model(inputs, x, name=name)
