"""FPN as a detection neck: RetinaNet's feature pyramid on any backbone.

Reference:
- [Feature Pyramid Networks for Object Detection](
    https://arxiv.org/abs/1612.03144) (Lin et al., CVPR 2017)
- [Focal Loss for Dense Object Detection](
    https://arxiv.org/abs/1708.02002) (Lin et al., ICCV 2017): P6 and P7
"""

import re

import keras

from keras_fusion._internal.checks import channel_axis
from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_choice
from keras_fusion._internal.checks import check_positive_int
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.layers._align_to import AlignTo
from keras_fusion.layers.fusion_selector import FusionSelector
from keras_fusion.layers.recompute import Recompute

_LEVEL_KEY = re.compile(r"P([1-9][0-9]*)$")
_FUSIONS = ("add", "concat", "weighted_add")
_NORMALIZATIONS = ("fast", "softmax")
_ALIGNS = ("crop", "pad")


@keras.saving.register_keras_serializable(package="keras_fusion")
class FeaturePyramid(keras.layers.Layer):
    """Feature Pyramid Network (Lin et al. 2017), RetinaNet's neck.

    Takes a backbone's levels as a dict keyed by stride, `{"P3": c3,
    "P4": c4, "P5": c5}` (`Pk` has stride `2**k`, KerasHub's keys, as
    `keras_fusion.models.pyramid_outputs` returns them; levels outside
    `min_level..max_level` are ignored), and returns the pyramid
    `{"P3": p3, ..., "P7": p7}`, every level with `num_filters` channels:

    - a 1x1 lateral convolution of each backbone level;
    - the top-down path: each level's map upsampled 2x (nearest), aligned
      to the next finer lateral (`align`) and fused with it by
      `FusionSelector(mode=fusion)` (`"concat"` is followed by a 1x1
      convolution back to `num_filters` channels);
    - a 3x3 output convolution of each fused map;
    - the levels above the backbone's deepest (RetinaNet's P6 and P7): a
      3x3 stride-2 convolution of the deepest backbone level (of its
      output, `use_p5=True`), then of the ReLU of each new level;
    - with `batch_norm=True`, a BatchNorm after each output convolution.

    Odd sizes: a backbone whose stride-2 layers pad ("same") rounds odd
    sizes up, so an upsampled map is one pixel larger than the next finer
    level and is centre-cropped (`align="crop"`); one with valid poolings
    rounds down, and the map is zero-padded (`align="pad"`). A map on the
    wrong side of the level it meets fails at run time, on every backend
    and in every export, never giving a map of the wrong size.

    With `recompute=True` the whole neck runs in `keras_fusion.Recompute`:
    outside training the plain graph, in training its forward pass again
    in the backward pass instead of keeping its maps, with the plain
    neck's outputs, gradients and BatchNorm statistics.

    Example:

    >>> import numpy as np
    >>> from keras_fusion import FeaturePyramid
    >>> levels = {
    ...     "P3": np.zeros((1, 38, 38, 32), "float32"),
    ...     "P4": np.zeros((1, 19, 19, 64), "float32"),
    ...     "P5": np.zeros((1, 10, 10, 128), "float32"),
    ... }
    >>> pyramid = FeaturePyramid(num_filters=16)(levels)
    >>> {key: tuple(p.shape) for key, p in pyramid.items()}
    {'P3': (1, 38, 38, 16), 'P4': (1, 19, 19, 16), 'P5': (1, 10, 10, 16), \
'P6': (1, 5, 5, 16), 'P7': (1, 3, 3, 16)}

    Args:
        num_filters: the channels of every pyramid level.
        min_level: the finest level, `Pk` for `k = min_level`: the
            backbone must give it.
        max_level: the coarsest level; the levels from the backbone's
            deepest one up to it are made by stride-2 convolutions.
        fusion: how a lateral meets the upsampled level above:
            `"add"` (default, the paper's), `"concat"` or
            `"weighted_add"`, as `FusionSelector`'s `mode`.
        weight_per_channel: with `fusion="weighted_add"`, one weight per
            input and channel, as `FusionSelector`'s.
        normalization: with `fusion="weighted_add"`, `"fast"` (default)
            or `"softmax"`, as `FusionSelector`'s.
        use_p5: make the first new level from the deepest level's output
            rather than from the backbone's map (RetinaNet's `use_p5`).
        align: `"crop"` (default) for backbones that round odd sizes up,
            `"pad"` for those that round them down (see above).
        batch_norm: a BatchNorm after each output convolution.
        batch_norm_momentum: the BatchNorms' momentum.
        batch_norm_epsilon: the BatchNorms' epsilon.
        recompute: run the neck in `keras_fusion.Recompute`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A dict of 4D maps keyed `"Pk"`, including every level from
        `min_level` to the deepest given one (at most `max_level`).

    Output shape:
        A dict of 4D maps keyed `"P{min_level}"` to `"P{max_level}"`, each
        with its backbone level's spatial size (new levels: half the level
        below, rounded up) and `num_filters` channels.
    """

    def __init__(
        self,
        num_filters=256,
        min_level=3,
        max_level=7,
        fusion="add",
        weight_per_channel=False,
        normalization="fast",
        use_p5=False,
        align="crop",
        batch_norm=False,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1.001e-5,
        recompute=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_filters = check_positive_int(num_filters, "num_filters")
        self.min_level = check_positive_int(min_level, "min_level")
        self.max_level = check_positive_int(max_level, "max_level")
        if self.max_level < self.min_level:
            raise ValueError(
                "`max_level` should be at least `min_level`. Received: "
                f"min_level={min_level!r}, max_level={max_level!r}"
            )
        self.fusion = check_choice(fusion, "fusion", _FUSIONS)
        self.weight_per_channel = check_bool(
            weight_per_channel, "weight_per_channel"
        )
        self.normalization = check_choice(
            normalization, "normalization", _NORMALIZATIONS
        )
        if fusion != "weighted_add" and (
            normalization != "fast" or weight_per_channel
        ):
            raise ValueError(
                "`normalization` and `weight_per_channel` apply to "
                "`fusion='weighted_add'`. Received: "
                f"fusion={fusion!r}, normalization={normalization!r}, "
                f"weight_per_channel={weight_per_channel!r}"
            )
        self.use_p5 = check_bool(use_p5, "use_p5")
        self.align = check_choice(align, "align", _ALIGNS)
        self.batch_norm = check_bool(batch_norm, "batch_norm")
        (
            self.batch_norm_momentum,
            self.batch_norm_epsilon,
        ) = check_batch_norm_arguments(batch_norm_momentum, batch_norm_epsilon)
        self.recompute = check_bool(recompute, "recompute")
        self.data_format = standardize_data_format(data_format)
        self._channel_axis = channel_axis(4, self.data_format)

    def build(self, input_shape):
        self._levels = self._backbone_levels(input_shape)
        self._output_levels = list(range(self.min_level, self.max_level + 1))
        axis = self._channel_axis
        inputs = {}
        for k in self._levels:
            shape = [None, None, None]
            shape[axis - 1] = input_shape[f"P{k}"][axis]
            inputs[k] = keras.Input(
                shape=tuple(shape), dtype=self.compute_dtype, name=f"P{k}"
            )
        outputs = self._pyramid(inputs)
        network = keras.Model(
            [inputs[k] for k in self._levels],
            [outputs[k] for k in self._output_levels],
            name="feature_pyramid",
        )
        self.network = self._recomputed(network)
        self.network.build([inputs[k].shape for k in self._levels])

    def _backbone_levels(self, input_shape):
        if not isinstance(input_shape, dict):
            raise ValueError(
                "`FeaturePyramid` takes a dict of backbone levels keyed "
                "by stride, like {'P3': c3, 'P4': c4, 'P5': c5} "
                "(keras_fusion.models.pyramid_outputs). Received: "
                f"inputs of shape {input_shape!r}"
            )
        levels = {}
        for key, shape in input_shape.items():
            match = _LEVEL_KEY.match(str(key))
            if match is None or len(shape) != 4:
                raise ValueError(
                    "`FeaturePyramid` takes 4D maps keyed 'Pk' (stride "
                    f"2**k). Received: {key!r} of shape {tuple(shape)}"
                )
            levels[int(match.group(1))] = shape
        used = sorted(k for k in levels if k >= self.min_level)
        used = [k for k in used if k <= self.max_level]
        expected = list(range(self.min_level, (used or [0])[-1] + 1))
        if not used or used != expected:
            raise ValueError(
                "`FeaturePyramid` needs every backbone level from "
                f"P{self.min_level} (`min_level`) to its deepest one "
                f"(at most P{self.max_level}, `max_level`). Received: "
                f"levels {sorted(f'P{k}' for k in levels)}"
            )
        return used

    def _pyramid(self, inputs):
        """The neck's graph from the backbone's `inputs` (dict by level
        exponent): the output maps by level exponent."""
        levels = self._levels
        laterals = {
            k: self._conv(inputs[k], 1, f"lateral_p{k}") for k in levels
        }
        merged = {levels[-1]: laterals[levels[-1]]}
        for k in reversed(levels[:-1]):
            up = keras.layers.UpSampling2D(
                2,
                interpolation="nearest",
                data_format=self.data_format,
                dtype=self.dtype_policy,
                name=f"upsample_p{k + 1}",
            )(merged[k + 1])
            up = self._align(up, laterals[k], self.align, f"align_p{k + 1}")
            merged[k] = self._fuse([laterals[k], up], f"p{k}")
        outputs = {k: self._conv(merged[k], 3, f"output_p{k}") for k in levels}
        top = levels[-1]
        source = outputs[top] if self.use_p5 else inputs[top]
        for k in range(top + 1, self.max_level + 1):
            if k > top + 1:
                source = keras.layers.ReLU(
                    dtype=self.dtype_policy, name=f"relu_p{k - 1}"
                )(source)
            outputs[k] = self._conv(source, 3, f"output_p{k}", strides=2)
            source = outputs[k]
        return outputs

    def _conv(self, x, kernel_size, name, strides=1):
        """A "same" convolution to `num_filters` channels; a 3x3 one is
        followed by BatchNorm with `batch_norm` (and then has no bias)."""
        batch_norm = self.batch_norm and kernel_size == 3
        x = keras.layers.Conv2D(
            self.num_filters,
            kernel_size,
            strides=strides,
            padding="same",
            # No bias before BatchNorm, which would cancel it.
            use_bias=not batch_norm,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name=name,
        )(x)
        if batch_norm:
            x = self._batch_norm(x, f"{name}_bn")
        return x

    def _batch_norm(self, x, name):
        return keras.layers.BatchNormalization(
            axis=self._channel_axis,
            momentum=self.batch_norm_momentum,
            epsilon=self.batch_norm_epsilon,
            dtype=self.dtype_policy,
            name=name,
        )(x)

    def _recomputed(self, network):
        """The neck's network, in `Recompute` with `recompute`."""
        return Recompute(network) if self.recompute else network

    def _align(self, x, reference, method, name):
        return AlignTo(
            method,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name=name,
        )([x, reference])

    def _fuse(self, maps, suffix):
        """`maps` fused by `FusionSelector(mode=fusion)`, named
        `fusion_{suffix}`; `"concat"` projected back to `num_filters`."""
        fused = FusionSelector(
            mode=self.fusion,
            weight_per_channel=self.weight_per_channel,
            normalization=self.normalization,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name=f"fusion_{suffix}",
        )(maps)
        if self.fusion == "concat":
            fused = self._conv(fused, 1, f"projection_{suffix}")
        return fused

    def call(self, inputs, training=None):
        maps = [inputs[f"P{k}"] for k in self._levels]
        outputs = self.network(
            maps if len(maps) > 1 else maps[0], training=training
        )
        if len(self._output_levels) == 1:
            outputs = [outputs]
        return {
            f"P{k}": x
            for k, x in zip(self._output_levels, outputs, strict=True)
        }

    def compute_output_shape(self, input_shape):
        levels = self._backbone_levels(input_shape)
        axis = self._channel_axis
        shapes = {}
        for k in range(self.min_level, self.max_level + 1):
            if k in levels:
                shape = list(input_shape[f"P{k}"])
            else:
                shape = list(shapes[f"P{k - 1}"])
                for a in (1, 2, 3):
                    if a != axis and shape[a] is not None:
                        shape[a] = (shape[a] + 1) // 2
            shape[axis] = self.num_filters
            shapes[f"P{k}"] = tuple(shape)
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_filters": self.num_filters,
                "min_level": self.min_level,
                "max_level": self.max_level,
                "fusion": self.fusion,
                "weight_per_channel": self.weight_per_channel,
                "normalization": self.normalization,
                "use_p5": self.use_p5,
                "align": self.align,
                "batch_norm": self.batch_norm,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "recompute": self.recompute,
                "data_format": self.data_format,
            }
        )
        return config
