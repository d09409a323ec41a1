"""EfficientDet's BiFPN: repeated bidirectional cells of weighted fusion.

Reference:
- [EfficientDet: Scalable and Efficient Object Detection](
    https://arxiv.org/abs/1911.09070) (Tan, Pang, Le, CVPR 2020), and
  google/automl's `efficientdet` (`fuse_features`, `resample_feature_map`,
  `OpAfterCombine`)
"""

import keras

from keras_fusion._internal.checks import check_positive_int
from keras_fusion.layers.feature_pyramid import FeaturePyramid
from keras_fusion.layers.recompute import Recompute

# EfficientDet D0-D7's BiFPN width (W_bifpn) and depth (D_bifpn), Table 1.
EFFICIENTDET = {
    "d0": (64, 3),
    "d1": (88, 4),
    "d2": (112, 5),
    "d3": (160, 6),
    "d4": (224, 7),
    "d5": (288, 7),
    "d6": (384, 8),
    "d7": (384, 8),
}


@keras.saving.register_keras_serializable(package="keras_fusion")
class BiFPN(FeaturePyramid):
    """EfficientDet's bidirectional feature pyramid (Tan, Pang, Le 2020).

    Takes a backbone's levels as `FeaturePyramid` does (a dict keyed
    `"Pk"`) and returns `P{min_level}..P{max_level}` with `num_filters`
    channels after `num_repeats` BiFPN cells:

    - the levels above the backbone's deepest: its map through a 1x1
      convolution and BatchNorm (where its channels are not
      `num_filters`), then 3x3 stride-2 max pooling ("same"), level by
      level;
    - each cell, for levels `min_level..max_level`: a top-down pass, each
      intermediate level fusing its input with the upsampled (nearest)
      node above; then a bottom-up pass, each level fusing its input, its
      top-down node (intermediate levels) and the max-pooled (3x3,
      stride 2, "same") node below. Each fusion is followed by swish, a
      3x3 depthwise-separable convolution and BatchNorm (EfficientDet's
      order);
    - where a cell's input has other than `num_filters` channels (the
      backbone's levels in the first cell), each use of it first goes
      through its own 1x1 convolution and BatchNorm, as google/automl's
      `resample_feature_map` does.

    No convolution followed by BatchNorm has a bias (BatchNorm would
    cancel it; google/automl's have one, which never trains), so a cell
    has `num_filters` parameters per node and resampling fewer than
    EfficientDet's.

    Fusion (`fusion`, `weight_per_channel`, `normalization`, as
    `FusionSelector`'s) defaults to EfficientDet's: `"weighted_add"` with
    the fast normalization (`fastattn`); the README maps EfficientDet's
    five names. Odd sizes: an upsampled backbone level is cropped or
    padded to the level it meets (`align`, as `FeaturePyramid`'s); the
    levels made by pooling, which rounds up, and every pooled node are
    cropped.

    With `recompute=True` each cell runs in `keras_fusion.Recompute`; the
    1x1 resampling of its inputs stays outside the cell, so that the
    backward pass does not run it again (on ResNet50's levels its 1x1
    convolutions take three quarters as many multiply-adds as the six
    cells of a D3 neck).

    Widths and depths of EfficientDet D0-D7 (`BiFPN.efficientdet`):

    | variant | `num_filters` | `num_repeats` |
    |---|---|---|
    | D0 | 64 | 3 |
    | D1 | 88 | 4 |
    | D2 | 112 | 5 |
    | D3 | 160 | 6 |
    | D4 | 224 | 7 |
    | D5 | 288 | 7 |
    | D6 | 384 | 8 |
    | D7 | 384 | 8 |

    Example:

    >>> import numpy as np
    >>> from keras_fusion import BiFPN
    >>> levels = {
    ...     "P3": np.zeros((1, 38, 42, 24), "float32"),
    ...     "P4": np.zeros((1, 19, 21, 40), "float32"),
    ...     "P5": np.zeros((1, 10, 11, 112), "float32"),
    ... }
    >>> neck = BiFPN(num_filters=16, num_repeats=2)
    >>> {key: tuple(p.shape) for key, p in neck(levels).items()}
    {'P3': (1, 38, 42, 16), 'P4': (1, 19, 21, 16), 'P5': (1, 10, 11, 16), \
'P6': (1, 5, 6, 16), 'P7': (1, 3, 3, 16)}

    Args:
        num_filters: `W_bifpn`, the channels of every level.
        num_repeats: `D_bifpn`, the number of cells.
        fusion: `"weighted_add"` (default), `"add"` or `"concat"`, as
            `FusionSelector`'s `mode` (`"concat"` is projected back to
            `num_filters` by a 1x1 convolution).
        weight_per_channel: one fusion weight per input and channel
            (EfficientDet's `channel_*` modes).
        normalization: `"fast"` (default, `fastattn`) or `"softmax"`
            (`attn`).
        **kwargs: the other arguments of `FeaturePyramid` (`min_level`,
            `max_level`, `align`, `batch_norm_momentum`,
            `batch_norm_epsilon`, `recompute`, `data_format`) and base
            layer keyword arguments. BatchNorm is part of every cell
            (`batch_norm` is always `True`); `use_p5` does not apply.
    """

    def __init__(
        self,
        num_filters=64,
        num_repeats=3,
        fusion="weighted_add",
        weight_per_channel=False,
        normalization="fast",
        **kwargs,
    ):
        for name in ("batch_norm", "use_p5"):
            if name in kwargs:
                raise ValueError(
                    f"`{name}` does not apply to `BiFPN`, whose cells always "
                    f"use BatchNorm. Received: {name}={kwargs[name]!r}"
                )
        super().__init__(
            num_filters=num_filters,
            fusion=fusion,
            weight_per_channel=weight_per_channel,
            normalization=normalization,
            batch_norm=True,
            **kwargs,
        )
        self.num_repeats = check_positive_int(num_repeats, "num_repeats")

    @classmethod
    def efficientdet(cls, variant, **kwargs):
        """The BiFPN of EfficientDet `variant` (`"d0"` ... `"d7"`): its
        `num_filters` and `num_repeats` from the table above."""
        key = str(variant).lower()
        if key not in EFFICIENTDET:
            raise ValueError(
                "`variant` should be one of "
                f"{[k.upper() for k in EFFICIENTDET]}. Received: "
                f"variant={variant!r}"
            )
        num_filters, num_repeats = EFFICIENTDET[key]
        return cls(num_filters=num_filters, num_repeats=num_repeats, **kwargs)

    def _pyramid(self, inputs):
        levels = list(range(self.min_level, self.max_level + 1))
        nodes = dict(inputs)
        top = self._levels[-1]
        source = inputs[top]
        for k in range(top + 1, self.max_level + 1):
            source = self._resample(source, f"p{k}_input")
            source = self._max_pool(source, f"p{k}_input_pool")
            nodes[k] = source
        for repeat in range(self.num_repeats):
            nodes = self._cell({k: nodes[k] for k in levels}, repeat)
        return {k: nodes[k] for k in levels}

    def _cell(self, nodes, repeat):
        """One BiFPN cell on `nodes` (by level exponent), as a functional
        sub-model named `cell{repeat}`, in `Recompute` with `recompute`.

        The cell's inputs are its edges from `nodes`, each resampled to
        `num_filters` channels where it has others (the backbone's levels,
        in the first cell): the resampling is outside the cell, so
        `recompute=True` does not run its 1x1 convolutions, the costliest
        of a cell on wide backbone levels, a second time."""
        levels = sorted(nodes)
        prefix = f"cell{repeat}"
        # (role, level) -> the map on that edge: each level's input to its
        # top-down node and its output node, and the top level's input to
        # the top-down path.
        edges = {("up", levels[-1]): (nodes[levels[-1]], "up_input")}
        for k in levels[:-1]:
            edges["td", k] = (nodes[k], "td_input")
        for k in levels[1:]:
            edges["out", k] = (nodes[k], "out_input")
        maps = {
            edge: self._resample(x, f"{prefix}_p{edge[1]}_{suffix}")
            for edge, (x, suffix) in edges.items()
        }
        inputs = {
            edge: keras.Input(
                shape=tuple(x.shape[1:]),
                dtype=self.compute_dtype,
                name=f"{prefix}_p{edge[1]}_{edge[0]}",
            )
            for edge, x in maps.items()
        }
        top_down = {levels[-1]: inputs["up", levels[-1]]}
        for k in reversed(levels[:-1]):
            up = keras.layers.UpSampling2D(
                2,
                interpolation="nearest",
                data_format=self.data_format,
                dtype=self.dtype_policy,
                name=f"{prefix}_p{k + 1}_upsample",
            )(top_down[k + 1])
            lateral = inputs["td", k]
            # A level made here by pooling rounds up, whatever the
            # backbone's levels do.
            method = self.align if k + 1 <= self._levels[-1] else "crop"
            up = self._align(up, lateral, method, f"{prefix}_p{k + 1}_align")
            top_down[k] = self._combine([lateral, up], f"{prefix}_p{k}_td")
        outputs = {levels[0]: top_down[levels[0]]}
        for k in levels[1:]:
            fused = [inputs["out", k]]
            if k != levels[-1]:
                fused.append(top_down[k])
            down = self._max_pool(outputs[k - 1], f"{prefix}_p{k - 1}_pool")
            fused.append(
                self._align(down, fused[0], "crop", f"{prefix}_p{k - 1}_crop")
            )
            outputs[k] = self._combine(fused, f"{prefix}_p{k}_out")
        cell = keras.Model(
            list(inputs.values()),
            [outputs[k] for k in levels],
            name=prefix,
        )
        if self.recompute:
            cell = Recompute(cell, name=f"{prefix}_recompute")
        results = cell(list(maps.values()))
        return dict(zip(levels, results, strict=True))

    def _resample(self, x, name):
        """`x` with `num_filters` channels: itself, or through a 1x1
        convolution and BatchNorm."""
        if x.shape[self._channel_axis] == self.num_filters:
            return x
        x = keras.layers.Conv2D(
            self.num_filters,
            1,
            use_bias=False,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name=f"{name}_conv",
        )(x)
        return self._batch_norm(x, f"{name}_bn")

    def _max_pool(self, x, name):
        return keras.layers.MaxPooling2D(
            3,
            strides=2,
            padding="same",
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name=name,
        )(x)

    def _combine(self, maps, name):
        """EfficientDet's node: fusion, swish, a 3x3 depthwise-separable
        convolution, BatchNorm."""
        x = self._fuse(maps, name)
        x = keras.layers.Activation(
            "swish", dtype=self.dtype_policy, name=f"{name}_swish"
        )(x)
        x = keras.layers.SeparableConv2D(
            self.num_filters,
            3,
            padding="same",
            use_bias=False,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name=f"{name}_conv",
        )(x)
        return self._batch_norm(x, f"{name}_bn")

    def _recomputed(self, network):
        # Each cell is in `Recompute` already (`_cell`).
        return network

    def get_config(self):
        config = super().get_config()
        del config["batch_norm"], config["use_p5"]
        config["num_repeats"] = self.num_repeats
        return config
