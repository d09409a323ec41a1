r"""An image encoder's feature maps by level: the input of decoders and necks.

`pyramid_outputs` follows KerasHub's `FeaturePyramidBackbone.pyramid_outputs`
convention: level `Pk` is the map of stride `2**k` relative to the
encoder's input ("P0" is stride 1). Every level it returns is a tensor of
the encoder's own functional graph, so that a model on those tensors shares
the encoder's weights.

Where the levels come from:
- a KerasHub `FeaturePyramidBackbone` (recognized by its `pyramid_outputs`
  dict, without importing KerasHub): its maps, re-keyed by their measured
  strides, since not every backbone's keys are strides (MiT labels its
  stride-4 map "P1");
- a keras_fusion DenseNet: its stem's stride-2 output and the outputs of
  its dense blocks `conv2` ... `conv4` and of `relu`;
- a `keras.applications` model: the layers the table below names;
- a dict `{"P2": tensor, ...}` the user writes.

Each level's stride is measured on the encoder's graph (its input's static
sizes, or a probe size where they are `None`) and checked: a wrong level
never leaves this module silently.

`keras.applications` families: the table in `pyramid_outputs`'s
docstring, which is where the layer names are documented for users.

The EfficientNets, MobileNets and VGGs take the last map before each
stride-2 block (segmentation_models' choice for EfficientNet, MobileNetV2
and VGG);
the ResNets, DenseNets and ConvNeXts a stage's output (ResNetV2's is
normalised by the pre-activation of the stage's last block, which holds
the stride-2 convolution, so the level is that block's `preact_relu`: the
stage's output after BatchNorm and ReLU, at the stage's stride and
width). EfficientNetV2 comes before EfficientNet,
which shares its layer names with other strides; MobileNetV3's maps before
each stride-2 block, and the last one, are made by layers Keras names
(`activation_11`, `re_lu_2`) with counters that depend on what else was
built, hence "input of" a named layer and a pattern for the last one;
ConvNeXt's stage outputs are sums (`x + y`), not layers. Families whose
maps are not at strides `2**k` (Xception, Inception, NASNet: valid
paddings) are not in the table: pass their levels as a dict.
"""

import math
import re
from typing import NamedTuple

import keras

from keras_fusion._internal.checks import spatial_axes
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.layers._densenet_stem import DenseNetStem
from keras_fusion.layers.dense_block import MemoryEfficientDenseBlock
from keras_fusion.models._inputs_and_heads import source_tensors

# The spatial size of the probe input where the encoder's is `None`: a
# multiple of the largest stride checked, at least 8 times it.
_PROBE_SIZE = 256
_LEVEL_KEY = re.compile(r"P(\d+)")
_BY_HAND = (
    "Pass the levels by hand as a dict {'P2': "
    "encoder.get_layer(...).output, ...} of rank-4 feature maps of one "
    "functional graph, 'Pk' being the map of stride 2**k relative to the "
    "input."
)


class _InputOf(NamedTuple):
    """A level that is the tensor a layer is called on, not its output."""

    pattern: str


# The table of the module docstring, in the order the families are tried.
_KERAS_APPLICATIONS = (
    (
        "ResNet50V2, ResNet101V2, ResNet152V2",
        {
            1: "conv1_conv",
            2: r"conv2_block\d+_preact_relu",
            3: r"conv3_block\d+_preact_relu",
            4: r"conv4_block\d+_preact_relu",
            5: "post_relu",
        },
    ),
    (
        "ResNet50, ResNet101, ResNet152",
        {
            1: "conv1_relu",
            2: r"conv2_block\d+_out",
            3: r"conv3_block\d+_out",
            4: r"conv4_block\d+_out",
            5: r"conv5_block\d+_out",
        },
    ),
    (
        "DenseNet121, DenseNet169, DenseNet201",
        {
            1: "conv1_relu",
            2: r"conv2_block\d+_concat",
            3: r"conv3_block\d+_concat",
            4: r"conv4_block\d+_concat",
            5: "relu",
        },
    ),
    (
        "EfficientNetV2B0-B3, EfficientNetV2S, M, L",
        {
            1: _InputOf("block2a_expand_conv"),
            2: _InputOf("block3a_expand_conv"),
            3: _InputOf("block4a_dwconv2"),
            4: _InputOf("block6a_dwconv2"),
            5: "top_activation",
        },
    ),
    (
        "EfficientNetB0-B7",
        {
            1: "block2a_expand_activation",
            2: "block3a_expand_activation",
            3: "block4a_expand_activation",
            4: "block6a_expand_activation",
            5: "top_activation",
        },
    ),
    (
        "MobileNetV2",
        {
            1: "block_1_expand_relu",
            2: "block_3_expand_relu",
            3: "block_6_expand_relu",
            4: "block_13_expand_relu",
            5: "out_relu",
        },
    ),
    (
        "MobileNetV3Small",
        {
            1: _InputOf("expanded_conv_depthwise_pad"),
            2: _InputOf("expanded_conv_1_depthwise_pad"),
            3: _InputOf("expanded_conv_3_depthwise_pad"),
            4: _InputOf("expanded_conv_8_depthwise_pad"),
            5: r"(activation|re_lu)(_\d+)?",
        },
    ),
    (
        "MobileNetV3Large",
        {
            1: _InputOf("expanded_conv_1_depthwise_pad"),
            2: _InputOf("expanded_conv_3_depthwise_pad"),
            3: _InputOf("expanded_conv_6_depthwise_pad"),
            4: _InputOf("expanded_conv_12_depthwise_pad"),
            5: r"(activation|re_lu)(_\d+)?",
        },
    ),
    (
        "ConvNeXtTiny ... ConvNeXtXLarge",
        {
            2: _InputOf(r".*_downsampling_block_0"),
            3: _InputOf(r".*_downsampling_block_1"),
            4: _InputOf(r".*_downsampling_block_2"),
            5: _InputOf(r"layer_normalization(_\d+)?"),
        },
    ),
    (
        "VGG16, VGG19",
        {
            0: "block1_conv2",
            1: "block2_conv2",
            2: r"block3_conv\d+",
            3: r"block4_conv\d+",
            4: r"block5_conv\d+",
            5: "block5_pool",
        },
    ),
)
_SUPPORTED = (
    "a KerasHub FeaturePyramidBackbone, a keras_fusion DenseNet, or a "
    "keras.applications model of one of these families: "
    + "; ".join(family for family, _ in _KERAS_APPLICATIONS)
)


def pyramid_outputs(encoder, data_format=None):
    r"""An image encoder's feature maps by level, `{"P1": ..., "P5": ...}`.

    Level `Pk` is the map of stride `2**k` relative to the encoder's input
    (KerasHub's `pyramid_outputs` convention; `"P0"` is stride 1). The maps
    are tensors of the encoder's own functional graph: a
    `keras.Model(encoder.input, list(levels.values()))` computes them
    with the encoder's weights.

    The encoder can be:
    - a KerasHub `FeaturePyramidBackbone` (any object with a non-empty dict
      `pyramid_outputs` of Keras tensors; KerasHub is not imported): its
      maps, re-keyed by their measured strides (MiT's "P1" ... "P4" come
      out as "P2" ... "P5");
    - a keras_fusion `DenseNet121` ... `DenseNet264` (any `recompute`):
      "P1" the stem `conv1`'s second output, "P2" ... "P4" the outputs of
      the dense blocks `conv2` ... `conv4`, "P5" the layer `relu`;
    - a `keras.applications` model of a family in the table below, built
      with `include_top=False`;
    - a dict `{"P2": tensor, ...}` of rank-4 Keras tensors of one
      functional graph, such as `encoder.get_layer(name).output`.

    `keras.applications` families, tried in this order: a family is
    recognized when each of its patterns fullmatches a layer name; a level
    is the output of the last layer (in `encoder.layers` order) whose name
    fullmatches its pattern or, for "input of", the tensor that layer is
    called on. `k` stands for the level.

    | Family | Level | Layer |
    |---|---|---|
    | ResNet50V2, ResNet101V2, ResNet152V2 | P1 | `conv1_conv` |
    | | P2-P4 | `conv{k}_block\d+_preact_relu` |
    | | P5 | `post_relu` |
    | ResNet50, ResNet101, ResNet152 | P1 | `conv1_relu` |
    | | P2-P5 | `conv{k}_block\d+_out` |
    | DenseNet121, DenseNet169, DenseNet201 | P1 | `conv1_relu` |
    | | P2-P4 | `conv{k}_block\d+_concat` |
    | | P5 | `relu` |
    | EfficientNetV2B0-B3, S, M, L | P1 | input of `block2a_expand_conv` |
    | | P2 | input of `block3a_expand_conv` |
    | | P3 | input of `block4a_dwconv2` |
    | | P4 | input of `block6a_dwconv2` |
    | | P5 | `top_activation` |
    | EfficientNetB0-B7 | P1 | `block2a_expand_activation` |
    | | P2 | `block3a_expand_activation` |
    | | P3 | `block4a_expand_activation` |
    | | P4 | `block6a_expand_activation` |
    | | P5 | `top_activation` |
    | MobileNetV2 | P1 | `block_1_expand_relu` |
    | | P2 | `block_3_expand_relu` |
    | | P3 | `block_6_expand_relu` |
    | | P4 | `block_13_expand_relu` |
    | | P5 | `out_relu` |
    | MobileNetV3Small | P1 | input of `expanded_conv_depthwise_pad` |
    | | P2 | input of `expanded_conv_1_depthwise_pad` |
    | | P3 | input of `expanded_conv_3_depthwise_pad` |
    | | P4 | input of `expanded_conv_8_depthwise_pad` |
    | | P5 | `(activation\|re_lu)(_\d+)?` |
    | MobileNetV3Large | P1 | input of `expanded_conv_1_depthwise_pad` |
    | | P2 | input of `expanded_conv_3_depthwise_pad` |
    | | P3 | input of `expanded_conv_6_depthwise_pad` |
    | | P4 | input of `expanded_conv_12_depthwise_pad` |
    | | P5 | `(activation\|re_lu)(_\d+)?` |
    | ConvNeXtTiny-XLarge | P2-P4 | input of `.*_downsampling_block_{k-2}` |
    | | P5 | input of `layer_normalization(_\d+)?` |
    | VGG16, VGG19 | P0 | `block1_conv2` |
    | | P1 | `block2_conv2` |
    | | P2-P4 | `block{k+1}_conv\d+` |
    | | P5 | `block5_pool` |

    Every level's stride is measured: the encoder's graph is run on
    shapes alone, on its input's spatial sizes where they are static and
    256 (or more, for levels above "P5") where they are `None`. A map
    whose size is not the input's divided by `2**k` is an error, so build
    a `keras.applications` model with `None` spatial sizes or sizes
    divisible by 32.

    Example:

    >>> import keras
    >>> from keras_fusion.models import pyramid_outputs
    >>> encoder = keras.applications.MobileNetV2(
    ...     weights=None, include_top=False, input_shape=(None, None, 3)
    ... )
    >>> levels = pyramid_outputs(encoder)
    >>> {key: level.shape[-1] for key, level in levels.items()}
    {'P1': 96, 'P2': 144, 'P3': 192, 'P4': 576, 'P5': 1280}
    >>> features = keras.Model(encoder.input, list(levels.values()))
    >>> [shape[1] for shape in features.compute_output_shape((1, 64, 64, 3))]
    [32, 16, 8, 4, 2]
    >>> by_hand = pyramid_outputs(
    ...     {
    ...         "P3": encoder.get_layer("block_6_expand_relu").output,
    ...         "P2": encoder.get_layer("block_3_expand_relu").output,
    ...     }
    ... )
    >>> list(by_hand)
    ['P2', 'P3']

    Args:
        encoder: a KerasHub `FeaturePyramidBackbone`, a keras_fusion
            DenseNet, a `keras.applications` model of a family above, or a
            dict of levels (see above).
        data_format: `"channels_last"` or `"channels_first"`, the layout of
            the encoder's input and maps; defaults to
            `keras.config.image_data_format()`.

    Returns:
        A dict from `"Pk"` to the Keras tensor of stride `2**k`, sorted by
        level.

    Raises:
        TypeError: if a value of a dict `encoder` is not a Keras tensor.
        ValueError: if `encoder` is none of the above, if a dict's keys are
            not `"Pk"` or its maps not rank-4 maps of one graph, if the
            maps of a KerasHub backbone are not one map per power-of-two
            stride (DINOv2's token sequences), if a level's measured
            stride is not `2**k`, or if `data_format` is neither
            `"channels_last"` nor `"channels_first"`.
    """
    data_format = standardize_data_format(data_format)
    if isinstance(encoder, dict):
        return _levels_by_hand(encoder, data_format)
    hub_maps = _feature_pyramid_maps(encoder)
    if hub_maps is not None:
        return _rekeyed_by_stride(encoder, hub_maps, data_format)
    if isinstance(encoder, keras.Model):
        found = _keras_fusion_densenet_levels(encoder)
        if found is None:
            found = _keras_applications_levels(encoder)
        if found is not None:
            family, levels = found
            _check_strides(levels, data_format, f"{family} `encoder`")
            return _sorted(levels)
        received = (
            f"a model named {encoder.name!r} whose layer names match none "
            "of the families"
        )
    else:
        received = f"encoder={encoder!r} of type {type(encoder).__name__}"
    raise ValueError(
        f"`encoder` should be {_SUPPORTED}, or a dict of levels. {_BY_HAND} "
        f"Received: {received}"
    )


def pyramid_source_inputs(levels):
    """The source input(s) of a dict of levels: one tensor if there is one,
    else a list (`keras.utils.get_source_inputs` over every level, in
    order), for a `keras.Model` on those levels."""
    sources = source_tensors(list(levels.values()))
    return sources[0] if len(sources) == 1 else sources


def _levels_by_hand(levels, data_format):
    if not levels:
        raise ValueError(
            "`encoder` should be a non-empty dict of levels. "
            f"{_BY_HAND} Received: encoder={{}}"
        )
    for key, value in levels.items():
        if not isinstance(key, str) or not _LEVEL_KEY.fullmatch(key):
            raise ValueError(
                "`encoder` should be a dict whose keys are 'P<k>' (as 'P2'), "
                f"k the level. {_BY_HAND} Received: encoder with keys "
                f"{list(levels)}"
            )
        if not isinstance(value, keras.KerasTensor):
            raise TypeError(
                "`encoder` should be a dict whose values are Keras tensors "
                f"(symbolic, of a functional graph). {_BY_HAND} Received: "
                f"encoder[{key!r}]={value!r} of type {type(value).__name__}"
            )
        if len(value.shape) != 4:
            raise ValueError(
                "`encoder` should be a dict of rank-4 feature maps (batch, "
                f"2 spatial axes, channels). {_BY_HAND} Received: "
                f"encoder[{key!r}] of shape {value.shape}"
            )
    sources = {
        key: {id(source) for source in source_tensors([value])}
        for key, value in levels.items()
    }
    first = next(iter(levels))
    for key, ids in sources.items():
        if ids != sources[first]:
            raise ValueError(
                "`encoder` should be a dict of maps of one functional graph, "
                f"computed from the same inputs. {_BY_HAND} Received: "
                f"encoder[{first!r}] and encoder[{key!r}] computed from "
                "different inputs"
            )
    _check_strides(levels, data_format, "`encoder`")
    return _sorted(levels)


def _feature_pyramid_maps(encoder):
    """A KerasHub `FeaturePyramidBackbone`'s maps, found by duck typing
    (importing keras_fusion must not import KerasHub), or `None`."""
    maps = getattr(encoder, "pyramid_outputs", None)
    if (
        isinstance(maps, dict)
        and maps
        and all(isinstance(value, keras.KerasTensor) for value in maps.values())
    ):
        return maps
    return None


def _rekeyed_by_stride(encoder, maps, data_format):
    name = getattr(encoder, "name", None)
    what = f"`encoder` ({type(encoder).__name__} {name!r})"
    not_maps = {
        key: tuple(value.shape)
        for key, value in maps.items()
        if len(value.shape) != 4
    }
    if not_maps:
        raise ValueError(
            f"{what} cannot form a feature pyramid: its `pyramid_outputs` "
            "should be rank-4 feature maps, one per stride 2**k; token "
            "sequences (a vision transformer's, all at one stride) are "
            f"not. {_BY_HAND} Received: pyramid_outputs of shapes {not_maps}"
        )
    strides, probe_shape = _measured_strides(maps, data_format)
    levels = {}
    for key, stride in strides.items():
        if stride is None:
            raise ValueError(
                f"{what} cannot form a feature pyramid: its maps should be "
                f"at strides 2**k. {_BY_HAND} Received: map {key!r} of shape "
                f"{_probe_shapes(maps, probe_shape)[key]} on an input of "
                f"shape {probe_shape}, not at a power-of-two stride with "
                f"data_format='{data_format}'"
            )
        level = int(math.log2(stride))
        if level in levels:
            raise ValueError(
                f"{what} cannot form a feature pyramid: it should have one "
                f"map per stride 2**k. {_BY_HAND} Received: maps "
                f"{levels[level][0]!r} and {key!r} both of stride {stride}"
            )
        levels[level] = (key, maps[key])
    return {f"P{level}": levels[level][1] for level in sorted(levels)}


def _keras_fusion_densenet_levels(encoder):
    """`("keras_fusion DenseNet", levels)` for a model of our DenseNet
    builders, recognized by its layers' classes and names, else `None`."""
    names = {layer.name: layer for layer in encoder.layers}
    blocks = [names.get(f"conv{index}") for index in (2, 3, 4)]
    if (
        not isinstance(names.get("conv1"), DenseNetStem)
        or not all(isinstance(b, MemoryEfficientDenseBlock) for b in blocks)
        or "relu" not in names
    ):
        return None
    # The stem's second output is the stride-2 ReLU (its first the pooled
    # map): keras.applications' `conv1_relu`.
    levels = {1: _layer_tensor(encoder, names["conv1"], False, index=1)}
    for level, block in enumerate(blocks, start=2):
        levels[level] = _layer_tensor(encoder, block, False)
    levels[5] = _layer_tensor(encoder, names["relu"], False)
    return "keras_fusion DenseNet", {f"P{k}": v for k, v in levels.items()}


def _keras_applications_levels(encoder):
    """`(family, levels)` by the first family of `_KERAS_APPLICATIONS`
    whose every pattern names a layer of `encoder`, else `None`."""
    for family, patterns in _KERAS_APPLICATIONS:
        layers = {
            level: _last_layer(encoder, pattern)
            for level, pattern in patterns.items()
        }
        if None not in layers.values():
            return family, {
                f"P{level}": _layer_tensor(
                    encoder, layer, isinstance(patterns[level], _InputOf)
                )
                for level, layer in layers.items()
            }
    return None


def _last_layer(encoder, pattern):
    """The last of `encoder.layers` whose name fullmatches `pattern` (a
    string or an `_InputOf`), or `None`."""
    if isinstance(pattern, _InputOf):
        pattern = pattern.pattern
    matches = [
        layer for layer in encoder.layers if re.fullmatch(pattern, layer.name)
    ]
    return matches[-1] if matches else None


def _layer_tensor(encoder, layer, input_of, index=None):
    """The tensor `layer` takes (`input_of`) or gives (its output `index`
    of several) in the encoder's graph. Read from the call's node: a
    nested model's `input` and `output` are those of its own graph, and a
    layer that a decoder built on the encoder has called again (a
    recomputed stage re-applies the encoder's layers) has more nodes than
    the encoder's own."""
    graph = getattr(encoder, "_nodes_by_depth", None)
    if graph is None:
        nodes = list(layer._inbound_nodes)
    else:
        in_graph = {id(node) for depth in graph.values() for node in depth}
        nodes = [n for n in layer._inbound_nodes if id(n) in in_graph]
    if len(nodes) == 1:
        node = nodes[0]
        tensors = node.input_tensors if input_of else node.output_tensors
        if index is not None and index < len(tensors):
            return tensors[index]
        if len(tensors) == 1:
            return tensors[0]
    raise ValueError(
        f"`encoder`'s layer {layer.name!r} should be called once, on one "
        f"tensor, to give a level. {_BY_HAND} Received: a layer called "
        f"{len(nodes)} times in the encoder"
    )


def _check_strides(levels, data_format, what):
    strides, probe_shape = _measured_strides(levels, data_format)
    for key, stride in strides.items():
        expected = 2 ** int(_LEVEL_KEY.fullmatch(key).group(1))
        if stride != expected:
            shape = _probe_shapes(levels, probe_shape)[key]
            measured = "not a power of two" if stride is None else stride
            raise ValueError(
                f"{what}'s level {key!r} should have stride {expected}. "
                "Build the encoder with spatial sizes that are None or "
                "multiples of its largest stride, pass the data_format of "
                f"its maps, or pass other levels. {_BY_HAND} Received: "
                f"level {key!r} of shape {shape} on an input of shape "
                f"{probe_shape}, stride {measured} with "
                f"data_format='{data_format}'"
            )


def _measured_strides(maps, data_format):
    """Each map's stride relative to the one image input it is computed
    from: an int power of two, the same on both spatial axes, or `None`.

    Returns:
        `(strides, probe_shape)`: a dict like `maps`, and the input shape
        the strides were measured on.
    """
    probe_shape = _probe_input_shape(maps, data_format)
    axes = spatial_axes(4, data_format)
    strides = {}
    try:
        shapes = _probe_shapes(maps, probe_shape)
    except ValueError as error:
        raise ValueError(
            "`encoder` could not compute its levels on an input of shape "
            f"{probe_shape} (data_format='{data_format}'): pass the "
            "`data_format` the encoder was built with. Received: "
            f"data_format='{data_format}', and the encoder raised: {error}"
        ) from error
    for key, shape in shapes.items():
        ratios = {
            _power_of_two_ratio(probe_shape[axis], shape[axis])
            for axis in axes
            if len(shape) == 4
        }
        strides[key] = ratios.pop() if len(ratios) == 1 else None
    return strides, probe_shape


def _power_of_two_ratio(size, map_size):
    """The power of two `r` with `map_size` within one pixel of
    `size / r` (an encoder rounds odd sizes up or down at each stride-2
    step; the roundings never add up to a whole pixel), or `None`."""
    if not map_size:
        return None
    ratio = 2 ** round(math.log2(size / map_size))
    if ratio < 1 or abs(map_size * ratio - size) >= ratio:
        return None
    return ratio


def _probe_input_shape(maps, data_format):
    """The concrete input shape the strides are measured on: batch 1, the
    input's static sizes, `_PROBE_SIZE` or more where they are `None`."""
    sources = source_tensors(list(maps.values()))
    if len(sources) != 1 or len(sources[0].shape) != 4:
        raise ValueError(
            "`encoder`'s maps should be computed from one image input of "
            "rank 4 to measure their strides. "
            f"{_BY_HAND} Received: maps computed from inputs of shapes "
            f"{[tuple(source.shape) for source in sources]}"
        )
    levels = [
        int(match.group(1))
        for match in map(_LEVEL_KEY.fullmatch, maps)
        if match
    ]
    size = max([_PROBE_SIZE, *(8 * 2**level for level in levels)])
    axes = spatial_axes(4, data_format)
    shape = list(sources[0].shape)
    for axis in range(1, 4):
        if shape[axis] is None:
            shape[axis] = size if axis in axes else 1
    return (1, *shape[1:])


def _probe_shapes(maps, probe_shape):
    """The shape of each map on an input of `probe_shape`, from the
    encoder's graph run on shapes alone."""
    sources = source_tensors(list(maps.values()))
    probe = keras.Model(sources[0], list(maps.values()))
    shapes = probe.compute_output_shape(probe_shape)
    return {key: tuple(shape) for key, shape in zip(maps, shapes, strict=True)}


def _sorted(levels):
    return dict(
        sorted(
            levels.items(),
            key=lambda item: int(_LEVEL_KEY.fullmatch(item[0]).group(1)),
        )
    )
