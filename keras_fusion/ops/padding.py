"""Centre zero-padding of feature maps, the counterpart of centre cropping.

A spatial size `size` padded to `target` gets `d // 2` zeros before and
`d - d // 2` after, `d = target - size`: an odd difference puts the extra
row at the end. These are the amounts `center_crop_offsets(target, size)`
removes, so `center_crop` undoes `center_pad` exactly.

Like the cropping functions, these accept backend tensors (eager, inside a
layer's `call`, inside `tf.function`) and symbolic `keras.KerasTensor`s
(functional API), and read sizes that are unknown until run time from the
run-time shape. `center_pad` checks a requested size again when it runs: a
pad to a size smaller than the input raises then (see
`keras_fusion.backend.size_checks`). `pad_to_largest` needs no such check:
the largest size is never smaller than an input.
"""

import keras
from keras import ops

from keras_fusion._internal.checks import check_feature_map
from keras_fusion._internal.checks import check_fusion_input_shapes
from keras_fusion._internal.checks import check_spatial_size
from keras_fusion._internal.checks import largest_spatial_shape
from keras_fusion._internal.checks import spatial_axes
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion._internal.shapes import is_static_size
from keras_fusion._internal.shapes import padded_shape
from keras_fusion._internal.shapes import refuse_torchscript_trace
from keras_fusion.backend.size_checks import check_traced_sizes
from keras_fusion.backend.size_checks import checked_pad
from keras_fusion.backend.size_checks import with_static_shape
from keras_fusion.backend.size_checks import zero_pad
from keras_fusion.ops.cropping import center_crop_offsets
from keras_fusion.ops.cropping import checked_batch_sizes

_PAD_TOO_SMALL = (
    "Cannot zero-pad to a size smaller than the input: `size` should be at "
    "least the spatial size of the input in every dimension. Received: "
    "input shape {shape}, size={size}"
)


def center_pad(x, size, data_format=None):
    """Zero-pad the spatial dimensions of a feature map to `size`, centred.

    For a 3x3 image padded to 5x4, the two rows of zeros are split one
    before and one after; the one column goes after. The amounts are
    `((1, 1), (0, 1))`, in the form `keras.layers.ZeroPadding2D` takes.

    Example:

    >>> import numpy as np
    >>> from keras_fusion.ops import center_pad
    >>> x = np.arange(1, 10).reshape((1, 3, 3, 1))
    >>> y = center_pad(x, (5, 4))
    >>> tuple(y.shape)
    (1, 5, 4, 1)
    >>> np.asarray(y)[0, :, :, 0].tolist()
    [[0, 0, 0, 0], [1, 2, 3, 0], [4, 5, 6, 0], [7, 8, 9, 0], [0, 0, 0, 0]]

    Args:
        x: a 3D, 4D or 5D feature map (batch, 1-3 spatial dimensions,
            channels in the position `data_format` gives).
        size: one target size per spatial dimension: an int, a scalar
            integer tensor, or `None` to leave that dimension as it is.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `x` with each spatial dimension zero-padded to `size` (amounts as in
        `center_crop_offsets(size, x_size)`).

    Raises:
        ValueError: if `x` is not of rank 3, 4 or 5, `data_format` is
            neither `"channels_last"` nor `"channels_first"`, `size` does
            not have one entry per spatial dimension, or an entry is
            negative or smaller than the input's size. Sizes known only when
            a TensorFlow graph runs are checked then, and raise
            `tf.errors.InvalidArgumentError` with the same message. With
            JAX, a size traced by `jax.jit` raises a `ValueError`: it would
            set the output shape.
        TypeError: if an entry of `size` is not an int, `None` or a scalar
            integer tensor.
    """
    data_format = standardize_data_format(data_format)
    rank = check_feature_map(x, "x")
    size = check_spatial_size(size, rank)
    if isinstance(x, keras.KerasTensor):
        return CenterPad(size, data_format).symbolic_call(x)
    return _center_pad(x, size, data_format)


def pad_to_largest(tensors, data_format=None):
    """Zero-pad every feature map, centred, to the largest size among them.

    Each spatial dimension is padded independently, to the largest size
    that dimension has in any of `tensors`.

    Example:

    >>> import numpy as np
    >>> from keras_fusion.ops import pad_to_largest
    >>> a = np.zeros((1, 10, 7, 3))
    >>> b = np.zeros((1, 8, 9, 5))
    >>> [tuple(t.shape) for t in pad_to_largest([a, b])]
    [(1, 10, 9, 3), (1, 10, 9, 5)]

    Args:
        tensors: a list of 2 or more feature maps of the same rank (3, 4 or
            5) and batch size.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        A list of the padded feature maps, in the order given.

    Raises:
        ValueError: if `tensors` is not a list of at least 2 feature maps
            of rank 3, 4 or 5, their ranks differ, or their known batch
            sizes differ.
    """
    data_format = standardize_data_format(data_format)
    if not isinstance(tensors, (list, tuple)):
        raise ValueError(
            "`tensors` should be a list of at least 2 feature maps. "
            f"Received: tensors of type {type(tensors).__name__}"
        )
    for index, t in enumerate(tensors):
        check_feature_map(t, f"tensors[{index}]")
    refuse_torchscript_trace("pad_to_largest")
    check_fusion_input_shapes(
        [tuple(t.shape) for t in tensors], data_format, "pad_to_largest"
    )
    if any(isinstance(t, keras.KerasTensor) for t in tensors):
        return PadToLargest(data_format).symbolic_call(list(tensors))
    return _pad_to_largest(tensors, data_format)


class CenterPad(keras.Operation):
    """The symbolic form of `center_pad`, for the functional API."""

    def __init__(self, size, data_format):
        super().__init__()
        self.size = size
        self.data_format = data_format

    def call(self, x):
        return _center_pad(x, self.size, self.data_format)

    def compute_output_spec(self, x):
        shape = list(x.shape)
        axes = spatial_axes(len(shape), self.data_format)
        for axis, target in zip(axes, self.size, strict=True):
            if target is None:
                continue
            if not is_static_size(target):
                shape[axis] = None
                continue
            if shape[axis] is not None and target < shape[axis]:
                _raise_pad_too_small(x.shape, self.size)
            shape[axis] = target
        return keras.KerasTensor(tuple(shape), dtype=x.dtype)


class PadToLargest(keras.Operation):
    """The symbolic form of `pad_to_largest`, for the functional API."""

    def __init__(self, data_format):
        super().__init__()
        self.data_format = data_format

    def call(self, tensors):
        return _pad_to_largest(tensors, self.data_format)

    def compute_output_spec(self, tensors):
        shapes = [tuple(t.shape) for t in tensors]
        largest = largest_spatial_shape(shapes, self.data_format)
        axes = spatial_axes(len(shapes[0]), self.data_format)
        outputs = []
        for t in tensors:
            shape = list(t.shape)
            for axis, size in zip(axes, largest, strict=True):
                shape[axis] = size
            outputs.append(keras.KerasTensor(tuple(shape), dtype=t.dtype))
        return outputs


def _center_pad(x, size, data_format):
    pad_width = _pad_width(x, size, data_format)
    if pad_width is None:
        return x
    return checked_pad(
        x,
        pad_width,
        name="center_pad_to_at_least_the_input_size",
        message=_PAD_TOO_SMALL,
        fields={"shape": ops.shape(x), "size": tuple(size)},
    )


def _pad_width(x, size, data_format):
    """`(before, after)` on every axis of `x`, or `None` if nothing is
    padded.

    Sizes known before run time are checked here; those known only at run
    time are the caller's to check.
    """
    refuse_torchscript_trace("keras_fusion.ops.center_pad")
    shape = ops.shape(x)
    axes = spatial_axes(len(shape), data_format)
    pad_width = [(0, 0)] * len(shape)
    padded = False
    for axis, target in zip(axes, size, strict=True):
        if target is None:
            continue
        current = shape[axis]
        if is_static_size(current) and is_static_size(target):
            if target < current:
                _raise_pad_too_small(x.shape, size)
            if target == current:
                continue
        pad_width[axis] = center_crop_offsets(target, current)
        padded = True
    return pad_width if padded else None


def _pad_to_largest(tensors, data_format):
    tensors = checked_batch_sizes(tensors, data_format, "pad_to_largest")
    shapes = [ops.shape(t) for t in tensors]
    largest = []
    for axis in spatial_axes(len(shapes[0]), data_format):
        sizes = [s[axis] for s in shapes]
        if all(is_static_size(s) for s in sizes):
            largest.append(max(sizes))
            continue
        # At least one size is only known at run time: take the maximum
        # in the graph so the padding follows the actual input.
        check_traced_sizes(shapes)
        size = sizes[0]
        for other in sizes[1:]:
            size = ops.maximum(size, other)
        largest.append(size)
    # The largest size is never smaller than an input's, so no amount can
    # be negative: a plain pad, without `_center_pad`'s run-time check.
    padded = []
    for t in tensors:
        pad_width = _pad_width(t, largest, data_format)
        if pad_width is not None:
            t = with_static_shape(
                zero_pad(t, pad_width), padded_shape(t, pad_width)
            )
        padded.append(t)
    return padded


def _raise_pad_too_small(shape, size):
    raise ValueError(
        _PAD_TOO_SMALL.format(shape=tuple(shape), size=tuple(size))
    )
