"""Centre cropping of feature maps.

The one place where keras_fusion computes crop offsets. For a spatial size
`size` cropped to `target`, the difference `d = size - target` is removed as
`d // 2` before and `d - d // 2` after: an odd difference drops the extra row
at the end. This is the convention of `keras.layers.CenterCrop` and of
`tf.image.resize_with_crop_or_pad`.

The functions accept backend tensors (eager, inside a layer's `call`, inside
`tf.function`) and symbolic `keras.KerasTensor`s (functional API). Sizes that
are unknown until run time are read from the run-time shape. A requested
size (`center_crop`, `center_crop_to`) is checked again when the crop runs:
a crop to a size larger than the input raises then, with the sizes in the
message (see `keras_fusion.backend.size_checks`). `crop_to_smallest` needs
no such check: the smallest size is never larger than an input.
"""

import keras
from keras import ops

from keras_fusion._internal.checks import check_feature_map
from keras_fusion._internal.checks import check_fusion_input_shapes
from keras_fusion._internal.checks import check_size_argument
from keras_fusion._internal.checks import check_spatial_size
from keras_fusion._internal.checks import smallest_spatial_shape
from keras_fusion._internal.checks import spatial_axes
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion._internal.shapes import is_static_size
from keras_fusion._internal.shapes import refuse_torchscript_trace
from keras_fusion._internal.shapes import sliced_shape
from keras_fusion.backend.size_checks import check_traced_sizes
from keras_fusion.backend.size_checks import checked_equal_shapes
from keras_fusion.backend.size_checks import checked_slice
from keras_fusion.backend.size_checks import with_static_shape

_CROP_TOO_LARGE = (
    "Cannot centre-crop to a size larger than the input: `size` should be "
    "at most the spatial size of the input, and at least 0, in every "
    "dimension. Received: input shape {shape}, size={size}"
)


def center_crop_offsets(size, target):
    """Amounts to remove before and after to centre-crop `size` to `target`.

    The difference `size - target` is split as `keras.layers.CenterCrop`
    splits it: half before, rounded down, and the rest after.

    Example:

    >>> from keras_fusion.ops import center_crop_offsets
    >>> center_crop_offsets(61, 52)
    (4, 5)
    >>> center_crop_offsets(64, 56)
    (4, 4)

    Args:
        size: the current size, an int or a scalar integer tensor.
        target: the size after cropping, an int or a scalar integer tensor.

    Returns:
        A tuple `(before, after)` with `before + target + after == size`:
        ints if both sizes are known before run time (ints, eager tensors),
        else tensors, which are not checked here (`center_crop` and
        `center_pad` check them when they run).

    Raises:
        ValueError: if both sizes are known and `target` is not between 0
            and `size`.
        TypeError: if a size is not an int or a scalar integer tensor.
    """
    size = check_size_argument(size, "size")
    target = check_size_argument(target, "target")
    if is_static_size(size) and is_static_size(target):
        if not 0 <= target <= size:
            raise ValueError(
                "`target` should be between 0 and `size` to crop. "
                f"Received: size={size}, target={target}"
            )
        size, target = int(size), int(target)
    difference = size - target
    before = difference // 2
    return before, difference - before


def center_crop(x, size, data_format=None):
    """Centre-crop the spatial dimensions of a feature map to `size`.

    Example:

    >>> import numpy as np
    >>> from keras_fusion.ops import center_crop
    >>> x = np.arange(6 * 6).reshape((1, 6, 6, 1))
    >>> y = center_crop(x, (3, 4))
    >>> tuple(y.shape)
    (1, 3, 4, 1)
    >>> np.asarray(y)[0, :, :, 0]
    array([[ 7,  8,  9, 10],
           [13, 14, 15, 16],
           [19, 20, 21, 22]])

    Args:
        x: a 3D, 4D or 5D feature map (batch, 1-3 spatial dimensions,
            channels in the position `data_format` gives).
        size: one target size per spatial dimension: an int, a scalar
            integer tensor, or `None` to leave that dimension as it is.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `x` with each spatial dimension cropped to `size` (offsets as in
        `center_crop_offsets`).

    Raises:
        ValueError: if `x` is not of rank 3, 4 or 5, `data_format` is
            neither `"channels_last"` nor `"channels_first"`, `size` does
            not have one entry per spatial dimension, or an entry is
            negative or larger than the input's size. Sizes known only when
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
        return CenterCrop(size, data_format).symbolic_call(x)
    return _center_crop(x, size, data_format)


def center_crop_to(x, reference, data_format=None):
    """Centre-crop `x` to the spatial size of `reference`.

    Example:

    >>> import numpy as np
    >>> from keras_fusion.ops import center_crop_to
    >>> skip = np.zeros((2, 64, 64, 8))
    >>> upsampled = np.zeros((2, 56, 56, 16))
    >>> tuple(center_crop_to(skip, upsampled).shape)
    (2, 56, 56, 8)

    Args:
        x: the feature map to crop (rank 3, 4 or 5).
        reference: a feature map of the same rank whose spatial size `x` is
            cropped to; its channels and batch size are not used.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `x` cropped to the spatial size of `reference`.

    Raises:
        ValueError: if `x` or `reference` is not of rank 3, 4 or 5, their
            ranks differ, or `reference` is larger than `x` in a spatial
            dimension (checked when the crop runs if a size is known only
            then, as in `center_crop`).
    """
    data_format = standardize_data_format(data_format)
    rank = check_feature_map(x, "x")
    reference_rank = check_feature_map(reference, "reference")
    if reference_rank != rank:
        raise ValueError(
            "`x` and `reference` should have the same rank. Received: "
            f"x.shape={tuple(x.shape)}, reference.shape="
            f"{tuple(reference.shape)}"
        )
    if isinstance(x, keras.KerasTensor) or isinstance(
        reference, keras.KerasTensor
    ):
        return CenterCropTo(data_format).symbolic_call(x, reference)
    return _center_crop_to(x, reference, data_format)


def crop_to_smallest(tensors, data_format=None):
    """Centre-crop every feature map to the smallest size among them.

    Each spatial dimension is cropped independently, to the smallest size
    that dimension has in any of `tensors`.

    Example:

    >>> import numpy as np
    >>> from keras_fusion.ops import crop_to_smallest
    >>> a = np.zeros((1, 10, 7, 3))
    >>> b = np.zeros((1, 8, 9, 5))
    >>> [tuple(t.shape) for t in crop_to_smallest([a, b])]
    [(1, 8, 7, 3), (1, 8, 7, 5)]

    Args:
        tensors: a list of 2 or more feature maps of the same rank (3, 4 or
            5) and batch size.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        A list of the cropped feature maps, in the order given.

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
    refuse_torchscript_trace("crop_to_smallest")
    check_fusion_input_shapes(
        [tuple(t.shape) for t in tensors], data_format, "crop_to_smallest"
    )
    if any(isinstance(t, keras.KerasTensor) for t in tensors):
        return CropToSmallest(data_format).symbolic_call(list(tensors))
    return _crop_to_smallest(tensors, data_format)


class CenterCrop(keras.Operation):
    """The symbolic form of `center_crop`, for the functional API."""

    def __init__(self, size, data_format):
        super().__init__()
        self.size = size
        self.data_format = data_format

    def call(self, x):
        return _center_crop(x, self.size, self.data_format)

    def compute_output_spec(self, x):
        shape = list(x.shape)
        axes = spatial_axes(len(shape), self.data_format)
        for axis, target in zip(axes, self.size, strict=True):
            if target is None:
                continue
            if not is_static_size(target):
                shape[axis] = None
                continue
            if shape[axis] is not None and target > shape[axis]:
                _raise_crop_too_large(x.shape, self.size)
            shape[axis] = target
        return keras.KerasTensor(tuple(shape), dtype=x.dtype)


class CenterCropTo(keras.Operation):
    """The symbolic form of `center_crop_to`, for the functional API."""

    def __init__(self, data_format):
        super().__init__()
        self.data_format = data_format

    def call(self, x, reference):
        return _center_crop_to(x, reference, self.data_format)

    def compute_output_spec(self, x, reference):
        shape = list(x.shape)
        axes = spatial_axes(len(shape), self.data_format)
        size = tuple(reference.shape[axis] for axis in axes)
        for axis, target in zip(axes, size, strict=True):
            if None not in (target, shape[axis]) and target > shape[axis]:
                _raise_crop_too_large(x.shape, size)
            shape[axis] = target
        return keras.KerasTensor(tuple(shape), dtype=x.dtype)


class CropToSmallest(keras.Operation):
    """The symbolic form of `crop_to_smallest`, for the functional API."""

    def __init__(self, data_format):
        super().__init__()
        self.data_format = data_format

    def call(self, tensors):
        return _crop_to_smallest(tensors, self.data_format)

    def compute_output_spec(self, tensors):
        shapes = [tuple(t.shape) for t in tensors]
        smallest = smallest_spatial_shape(shapes, self.data_format)
        axes = spatial_axes(len(shapes[0]), self.data_format)
        outputs = []
        for t in tensors:
            shape = list(t.shape)
            for axis, size in zip(axes, smallest, strict=True):
                shape[axis] = size
            outputs.append(keras.KerasTensor(tuple(shape), dtype=t.dtype))
        return outputs


def _center_crop(x, size, data_format):
    begin, crop_shape = _crop_window(x, size, data_format)
    return checked_slice(
        x,
        begin,
        crop_shape,
        name="center_crop_to_at_most_the_input_size",
        message=_CROP_TOO_LARGE,
        fields={"shape": ops.shape(x), "size": tuple(size)},
    )


def _crop_window(x, size, data_format):
    """The start and size of the crop on every axis of `x`.

    Sizes are `None` for all of an axis. Sizes known before run time are
    checked here; those known only at run time are the caller's to check.
    """
    refuse_torchscript_trace("keras_fusion.ops.center_crop")
    shape = ops.shape(x)
    axes = spatial_axes(len(shape), data_format)
    begin = [0] * len(shape)
    crop_shape = [None] * len(shape)
    for axis, target in zip(axes, size, strict=True):
        if target is None:
            continue
        current = shape[axis]
        if is_static_size(current) and is_static_size(target):
            if target > current:
                _raise_crop_too_large(x.shape, size)
            if target == current:
                continue
        begin[axis], _ = center_crop_offsets(current, target)
        crop_shape[axis] = target
    return begin, crop_shape


def _center_crop_to(x, reference, data_format):
    reference_shape = ops.shape(reference)
    axes = spatial_axes(len(reference_shape), data_format)
    return _center_crop(x, [reference_shape[a] for a in axes], data_format)


def _crop_to_smallest(tensors, data_format):
    tensors = checked_batch_sizes(tensors, data_format, "crop_to_smallest")
    shapes = [ops.shape(t) for t in tensors]
    smallest = []
    for axis in spatial_axes(len(shapes[0]), data_format):
        sizes = [s[axis] for s in shapes]
        if all(is_static_size(s) for s in sizes):
            smallest.append(min(sizes))
            continue
        # At least one size is only known at run time: take the minimum
        # in the graph so the crop follows the actual input.
        check_traced_sizes(shapes)
        size = sizes[0]
        for other in sizes[1:]:
            size = ops.minimum(size, other)
        smallest.append(size)
    # The smallest size is never larger than an input's, so the crop
    # cannot fall outside it: a plain slice, without `_center_crop`'s
    # run-time check.
    cropped = []
    for t in tensors:
        begin, size = _crop_window(t, smallest, data_format)
        cropped.append(
            with_static_shape(_slice(t, begin, size), sliced_shape(t, size))
        )
    return cropped


def checked_batch_sizes(tensors, data_format, name):
    """`tensors`, feature maps to align, once their batch sizes agree.

    The static check on the shapes they have when they run (in a
    functional model they were traced with `None`), and for sizes known
    only when a TensorFlow graph runs, `checked_equal_shapes` on the batch
    axis. Shared with `keras_fusion.ops.padding`.
    """
    refuse_torchscript_trace(name)
    check_fusion_input_shapes(
        [tuple(t.shape) for t in tensors], data_format, name
    )
    return checked_equal_shapes(
        tensors,
        f"{name}_batch",
        f"All inputs to `{name}` should have the same batch size (axis 0). "
        "Received: inputs with run-time shapes {shapes}",
        axes=(0,),
    )


def _slice(x, begin, size):
    """`x[begin:begin + size]` on every axis; a `None` size takes the rest."""
    return x[
        tuple(
            slice(b, None if s is None else b + s)
            for b, s in zip(begin, size, strict=True)
        )
    ]


def _raise_crop_too_large(shape, size):
    raise ValueError(
        _CROP_TOO_LARGE.format(shape=tuple(shape), size=tuple(size))
    )
