"""PANet's neck: FPN's top-down pyramid, then a bottom-up path.

Reference:
- [Path Aggregation Network for Instance Segmentation](
    https://arxiv.org/abs/1803.01534) (Liu et al., CVPR 2018)
"""

import keras

from keras_fusion.layers.feature_pyramid import FeaturePyramid
from keras_fusion.layers.recompute import Recompute


@keras.saving.register_keras_serializable(package="keras_fusion")
class PathAggregation(FeaturePyramid):
    """Path Aggregation Network (Liu et al. 2018): FPN, then bottom-up.

    `FeaturePyramid`'s pyramid `P{min_level}..P{max_level}` (same
    arguments, same layers), followed by the bottom-up path augmentation:
    `N{min_level}` is `P{min_level}`; each next level is

        N{k+1} = relu(conv3x3(fuse(P{k+1}, relu(conv3x3_stride2(N{k})))))

    with the fusion of `fusion` (`FusionSelector`'s modes), as in the
    paper (3x3 convolutions to `num_filters` channels, each followed by
    ReLU; with `batch_norm=True` by BatchNorm before it). A stride-2
    "same" convolution rounds odd sizes up, so a downsampled map is at
    least the size of the level it meets and is centre-cropped to it:
    the output levels keep the pyramid's sizes, odd ones included.

    The two paths are functional sub-models, `top_down` and `bottom_up`;
    with `recompute=True` each runs in `keras_fusion.Recompute`, so the
    backward pass recomputes one path at a time.

    Example:

    >>> import numpy as np
    >>> from keras_fusion import PathAggregation
    >>> levels = {
    ...     "P3": np.zeros((1, 37, 41, 32), "float32"),
    ...     "P4": np.zeros((1, 18, 20, 64), "float32"),
    ...     "P5": np.zeros((1, 9, 10, 128), "float32"),
    ... }
    >>> neck = PathAggregation(num_filters=16, max_level=5, align="pad")
    >>> {key: tuple(n.shape) for key, n in neck(levels).items()}
    {'P3': (1, 37, 41, 16), 'P4': (1, 18, 20, 16), 'P5': (1, 9, 10, 16)}

    Args: those of `FeaturePyramid`.

    Input shape:
        A dict of 4D maps keyed `"Pk"`, as `FeaturePyramid` takes.

    Output shape:
        The dict `FeaturePyramid` gives: the same keys and shapes.
    """

    def _pyramid(self, inputs):
        top_down = self._as_path("top_down", super()._pyramid, inputs)
        return self._as_path("bottom_up", self._bottom_up, top_down)

    def _as_path(self, name, build, maps):
        """`build(maps)` (dicts by level exponent) as a functional
        sub-model named `name`, in `Recompute` with `recompute`."""
        keys = sorted(maps)
        inputs = {
            k: keras.Input(
                shape=tuple(maps[k].shape[1:]),
                dtype=self.compute_dtype,
                name=f"{name}_p{k}",
            )
            for k in keys
        }
        outputs = build(inputs)
        levels = sorted(outputs)
        path = keras.Model(
            [inputs[k] for k in keys],
            [outputs[k] for k in levels],
            name=name,
        )
        if self.recompute:
            path = Recompute(path, name=f"{name}_recompute")
        results = path([maps[k] for k in keys])
        if not isinstance(results, (list, tuple)):
            results = [results]
        return dict(zip(levels, results, strict=True))

    def _recomputed(self, network):
        # Each path is in `Recompute` already (`_as_path`).
        return network

    def _bottom_up(self, top_down):
        levels = self._output_levels
        outputs = {levels[0]: top_down[levels[0]]}
        for k in levels[1:]:
            down = self._conv(
                outputs[k - 1], 3, f"downsample_n{k - 1}", strides=2
            )
            down = self._relu(down, f"downsample_n{k - 1}_relu")
            down = self._align(down, top_down[k], "crop", f"align_n{k - 1}")
            fused = self._fuse([top_down[k], down], f"n{k}")
            outputs[k] = self._relu(
                self._conv(fused, 3, f"output_n{k}"), f"output_n{k}_relu"
            )
        return outputs

    def _relu(self, x, name):
        return keras.layers.ReLU(dtype=self.dtype_policy, name=name)(x)
