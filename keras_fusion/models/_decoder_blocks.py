"""The pieces the decoders on pretrained encoders (`UNet(encoder=...)`,
`UNetPlusPlus`, `FPN`) share: their arguments, their input, the encoder
applied to it (whole, or stage by stage in `Recompute`), the 3x3
convolution blocks and the decoder levels."""

import keras

from keras_fusion._internal.checks import channel_axis
from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_synchronized
from keras_fusion.layers._align_to import AlignTo
from keras_fusion.layers.recompute import Recompute
from keras_fusion.models._encoder_levels import encoder_stages
from keras_fusion.models._inputs_and_heads import check_input_size
from keras_fusion.models._inputs_and_heads import image_input_shape
from keras_fusion.models._inputs_and_heads import is_positive_int
from keras_fusion.models._inputs_and_heads import spatial_sizes
from keras_fusion.models._recomputed_levels import recomputed_level


def check_decoder_filters(decoder_filters, count, model_name):
    """`decoder_filters` as a tuple of `count` positive ints, deepest
    first; `None` gives `16 * 2**i` down to 16 (segmentation_models'
    `(256, 128, 64, 32, 16)` for five levels)."""
    if decoder_filters is None:
        return tuple(16 * 2**i for i in reversed(range(count)))
    widths = decoder_filters
    if is_positive_int(widths):
        widths = (widths,) * count
    if (
        not isinstance(widths, (list, tuple))
        or len(widths) != count
        or not all(is_positive_int(f) for f in widths)
    ):
        raise ValueError(
            f"`decoder_filters` should be a positive int or a list of "
            f"{count} positive ints for `{model_name}` on this encoder "
            f"(one per 2x upsampling, deepest first). Received: "
            f"decoder_filters={decoder_filters!r}"
        )
    return tuple(int(f) for f in widths)


def decoder_input(info, input_shape, model_name):
    """The model's input: the encoder's input shape, or `input_shape` with
    the encoder's channels; static sizes checked against the encoder's
    smallest size now, `None` sizes by an `InputSizeCheck` when it runs.

    Returns:
        `(inputs, checked)`: the `keras.Input` and the tensor the encoder
        takes.
    """
    data_format = info.data_format
    if input_shape is None:
        input_shape = info.input_shape
    input_shape = image_input_shape(input_shape, None, data_format)
    axis = channel_axis(4, data_format) - 1
    if input_shape[axis] != info.input_shape[axis]:
        raise ValueError(
            f"`input_shape` should have the encoder's {info.input_shape[axis]}"
            " channels. Received: input_shape="
            f"{input_shape!r}"
        )
    for size in spatial_sizes(input_shape, data_format):
        if size is not None and size < min(info.minimum_size):
            raise ValueError(
                f"`input_shape` is too small for `{model_name}` on this "
                "encoder: its deepest level would be empty; the smallest "
                f"spatial size is {info.minimum_size}. Received: "
                f"input_shape={input_shape!r}"
            )
    inputs = keras.Input(shape=input_shape, dtype=info.inputs.dtype)
    checked = check_input_size(
        inputs, info.minimum_size, model_name, data_format
    )
    return inputs, checked


def encoder_features(info, x, recompute):
    """The encoder's levels computed from `x`, as a dict like
    `info.levels`: a functional sub-model named `encoder` sharing the
    encoder's layers, or with `recompute` one sub-model per stage,
    `encoder_stage{k}` for level `Pk`, each in a `Recompute` layer named
    `encoder_stage{k}_recompute`."""
    keys = list(info.levels)
    if not recompute:
        encoder = keras.Model(info.inputs, list(info.levels.values()))
        encoder.name = "encoder"
        outputs = encoder(x)
        if len(keys) == 1:
            outputs = [outputs]
        return dict(zip(keys, outputs, strict=True))
    tensors = {id(info.inputs): x}
    stages = encoder_stages(info.inputs, list(info.levels.values()))
    for key, (stage_inputs, stage_outputs) in zip(keys, stages, strict=True):
        name = f"encoder_stage{key[1:]}"
        stage = keras.Model(
            _one_or_list(stage_inputs), _one_or_list(stage_outputs)
        )
        stage.name = name
        results = Recompute(stage, name=f"{name}_recompute")(
            _one_or_list([tensors[id(t)] for t in stage_inputs])
        )
        if len(stage_outputs) == 1:
            results = [results]
        for tensor, result in zip(stage_outputs, results, strict=True):
            tensors[id(tensor)] = result
    return {key: tensors[id(level)] for key, level in info.levels.items()}


def _one_or_list(tensors):
    return tensors[0] if len(tensors) == 1 else list(tensors)


class Blocks:
    """The decoder's layers, with the arguments every block shares,
    checked: `batch_norm`, `recompute`, the BatchNorm settings."""

    def __init__(
        self,
        batch_norm,
        batch_norm_momentum,
        batch_norm_epsilon,
        synchronized,
        data_format,
        recompute,
    ):
        self.batch_norm = check_bool(batch_norm, "batch_norm")
        self.recompute = check_bool(recompute, "recompute")
        (
            self.batch_norm_momentum,
            self.batch_norm_epsilon,
        ) = check_batch_norm_arguments(batch_norm_momentum, batch_norm_epsilon)
        self.synchronized = check_synchronized(synchronized)
        self.data_format = data_format

    def conv(self, x, filters, prefix, k, kernel_size=3):
        """A `kernel_size` "same" convolution, BatchNorm (with
        `batch_norm`, the convolution then without bias) and ReLU."""
        x = keras.layers.Conv2D(
            filters,
            kernel_size,
            padding="same",
            use_bias=not self.batch_norm,
            kernel_initializer="he_uniform",
            data_format=self.data_format,
            name=f"{prefix}_conv{k}",
        )(x)
        if self.batch_norm:
            x = keras.layers.BatchNormalization(
                axis=channel_axis(4, self.data_format),
                momentum=self.batch_norm_momentum,
                epsilon=self.batch_norm_epsilon,
                synchronized=self.synchronized,
                name=f"{prefix}_bn{k}",
            )(x)
        return keras.layers.ReLU(name=f"{prefix}_relu{k}")(x)

    def two_convs(self, x, filters, prefix):
        return self.conv(self.conv(x, filters, prefix, 1), filters, prefix, 2)

    def upsample(self, x, factor, prefix, interpolation="nearest"):
        return keras.layers.UpSampling2D(
            factor,
            interpolation=interpolation,
            data_format=self.data_format,
            name=f"{prefix}_upsample",
        )(x)

    def align(self, x, reference, method, prefix):
        return AlignTo(
            method, data_format=self.data_format, name=f"{prefix}_align"
        )([x, reference])

    def to_input_size(self, x, row, info, features, image, prefix):
        """`x`, at stride `2**row`, upsampled 2x row by row to the input's
        size, aligned to each row's level (`features`) and at last to
        `image`; layers `{prefix}{r}_upsample` and `{prefix}{r}_align`."""
        for r in reversed(range(row)):
            x = self.upsample(x, 2, f"{prefix}{r}")
            reference = image if r == 0 else features.get(f"P{r}")
            if reference is not None:
                x = self.align(x, reference, info.methods[r], f"{prefix}{r}")
        return x

    def level(self, build, inputs, name):
        """`build(inputs)`: in the model's graph, or with `recompute` in a
        sub-model named `name` wrapped in `Recompute`."""
        if not self.recompute:
            return build(inputs)
        return recomputed_level(build, inputs, name, self.data_format)
