"""Argument and shape checks shared by the fusion layers and ops.

Every function here works on static shapes (tuples whose entries are ints or
`None`), so the same check runs in `build()`/`compute_output_shape()` on the
symbolic shapes and again in `call()` on the shapes known at run time. Sizes
that are tensors (known only at run time) are passed through unchecked.
"""

import math
import numbers

import keras
import numpy as np

from keras_fusion._internal.shapes import is_static_size
from keras_fusion._internal.shapes import static_size

_DATA_FORMATS = ("channels_last", "channels_first")
_SPATIAL_RANKS = {3: "1D", 4: "2D", 5: "3D"}


def standardize_data_format(data_format):
    """Return `data_format`, or Keras's configured default when it is `None`.

    Raises:
        ValueError: if `data_format` is neither `"channels_last"` nor
            `"channels_first"`.
    """
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in _DATA_FORMATS:
        raise ValueError(
            "`data_format` should be one of 'channels_last' or "
            f"'channels_first'. Received: data_format={data_format!r}"
        )
    return data_format


def channel_axis(rank, data_format):
    """The (non-negative) channel axis of a feature map of rank `rank`."""
    return 1 if data_format == "channels_first" else rank - 1


def spatial_axes(rank, data_format):
    """The spatial axes of a feature map of rank `rank`, in order."""
    if data_format == "channels_first":
        return tuple(range(2, rank))
    return tuple(range(1, rank - 1))


def check_positive_int(value, name):
    """Check that an argument is a positive integer and return it as an int.

    Python and NumPy integers are accepted (`numbers.Integral`), bools are
    not.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"`{name}` should be a positive int. Received: {name}={value!r}"
        )
    return int(value)


def check_real(value, name, expected, is_valid):
    """Check a real-valued argument and return it as a float.

    Python and NumPy numbers are accepted (`numbers.Real`), bools are not,
    nor are infinities and NaN, whatever `is_valid` says.

    Args:
        value: the argument.
        name: its name, for the error message.
        expected: what it should be, e.g. `"a float in [0, 1)"`.
        is_valid: a predicate on the value, e.g. `lambda v: 0 <= v < 1`.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not is_valid(value)
    ):
        raise ValueError(
            f"`{name}` should be {expected}. Received: {name}={value!r}"
        )
    return float(value)


def check_seed(seed):
    """Check a `seed` argument: `None` or an int (NumPy's too), not a
    bool; returned as a Python int or `None`."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            "`seed` should be None or an int. Received: "
            f"seed={seed!r} of type {type(seed).__name__}"
        )
    return int(seed)


def check_batch_norm_arguments(batch_norm_momentum, batch_norm_epsilon):
    """Check the BatchNorm arguments every layer and builder takes, with
    one wording, and return them as floats `(momentum, epsilon)`."""
    momentum = check_real(
        batch_norm_momentum,
        "batch_norm_momentum",
        "a float in [0, 1]",
        lambda v: 0 <= v <= 1,
    )
    epsilon = check_real(
        batch_norm_epsilon,
        "batch_norm_epsilon",
        "a positive, finite float",
        lambda v: v > 0,
    )
    return momentum, epsilon


def check_choice(value, name, choices):
    """Check that an argument is one of `choices` and return it."""
    if not any(
        value is c or (isinstance(value, str) and value == c) for c in choices
    ):
        raise ValueError(
            f"`{name}` should be one of {choices}. Received: {name}={value!r}"
        )
    return value


def check_bool(value, name):
    """Check that an argument is a Python bool and return it.

    Only `True` and `False` are accepted: a truthy string such as `"full"`
    would otherwise switch an option on silently.
    """
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` should be a bool. Received: {name}={value!r}"
        )
    return value


def check_synchronized(synchronized):
    """Check a layer's `synchronized` argument (BatchNorm across replicas).

    It maps to `keras.layers.BatchNormalization(synchronized=...)`, which
    only the TensorFlow backend supports.
    """
    check_bool(synchronized, "synchronized")
    if synchronized and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`synchronized=True` (BatchNormalization statistics over all "
            "replicas of a tf.distribute strategy) needs the TensorFlow "
            "backend. Received: synchronized=True with the "
            f"{keras.backend.backend()!r} backend"
        )
    return synchronized


def validate_axis_argument(axis):
    """Check the type of a layer's `axis` argument in its constructor."""
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(
            "`axis` should be an int (the channel axis) or None. "
            f"Received: axis={axis!r} of type {type(axis).__name__}"
        )
    if axis == 0:
        raise ValueError(
            "`axis` should be the channel axis, not the batch axis 0. "
            f"Received: axis={axis}"
        )
    return axis


def resolve_channel_axis(axis, rank, data_format):
    """Check that `axis` names the channel axis and return it, non-negative.

    `axis=None` means the channel axis implied by `data_format`.
    """
    expected = channel_axis(rank, data_format)
    if axis is None:
        return expected
    normalized = axis + rank if axis < 0 else axis
    if normalized != expected:
        if not 0 <= normalized < rank:
            what = f"out of range for inputs of rank {rank}"
        elif normalized == 0:
            what = "the batch axis"
        else:
            what = "a spatial axis"
        raise ValueError(
            f"`axis` should be the channel axis, {expected} (or "
            f"{expected - rank}), for {rank}D inputs with "
            f"data_format='{data_format}'; axis={axis} is {what}. "
            f"Received: axis={axis}"
        )
    return expected


def check_feature_map_shape(input_shape, data_format, layer_name):
    """Check the shape of a layer's single feature-map input.

    It must be 1D, 2D or 3D (rank 3, 4 or 5) with a known channel count.

    Returns:
        `(rank, channel_axis, channels)`.
    """
    rank = len(input_shape)
    if rank not in _SPATIAL_RANKS:
        raise ValueError(
            f"`{layer_name}` expects a 1D, 2D or 3D feature map of rank 3, 4 "
            "or 5 (batch, spatial dimensions, channels). Received: "
            f"input_shape={tuple(input_shape)}"
        )
    axis = channel_axis(rank, data_format)
    if input_shape[axis] is None:
        raise ValueError(
            f"The channel dimension of the input to `{layer_name}` should be "
            f"known. Received: input_shape={tuple(input_shape)}"
        )
    return rank, axis, input_shape[axis]


def check_fusion_input_shapes(input_shapes, data_format, layer_name):
    """Check the shapes of a list of feature maps that are to be fused.

    Checks that there are at least two inputs, that all have the same rank,
    that the rank is 3, 4 or 5 (1D, 2D or 3D feature maps) and that the batch
    sizes agree where they are known. Spatial sizes and channel counts are
    the caller's business.

    Args:
        input_shapes: a list of shapes (tuples of ints or `None`).
        data_format: `"channels_last"` or `"channels_first"`.
        layer_name: the name used in error messages.

    Returns:
        The common rank.

    Raises:
        ValueError: if the shapes are not such a list.
    """
    if input_shapes is None or (
        isinstance(input_shapes, (list, tuple)) and not input_shapes
    ):
        # Keras builds a layer called on an empty list with shape None.
        raise ValueError(
            f"`{layer_name}` should be called on a list of at least 2 "
            "inputs. Received: an empty list"
        )
    if not isinstance(input_shapes, (list, tuple)) or not all(
        isinstance(s, (list, tuple)) for s in input_shapes
    ):
        raise ValueError(
            f"`{layer_name}` should be called on a list of at least 2 "
            f"inputs. Received: a single input of shape {input_shapes}"
        )
    if len(input_shapes) < 2:
        raise ValueError(
            f"`{layer_name}` should be called on a list of at least 2 "
            f"inputs. Received: {len(input_shapes)} input(s) with shapes "
            f"{[tuple(s) for s in input_shapes]}"
        )
    ranks = [len(s) for s in input_shapes]
    if len(set(ranks)) != 1:
        raise ValueError(
            f"All inputs to `{layer_name}` should have the same rank. "
            f"Received: inputs with ranks {ranks} and shapes "
            f"{[tuple(s) for s in input_shapes]}"
        )
    rank = ranks[0]
    if rank not in _SPATIAL_RANKS:
        raise ValueError(
            f"Inputs to `{layer_name}` should be 1D, 2D or 3D feature maps "
            "of rank 3, 4 or 5 (batch, spatial dimensions, channels). "
            f"Received: inputs of rank {rank} with shapes "
            f"{[tuple(s) for s in input_shapes]}"
        )
    batch_sizes = [s[0] for s in input_shapes]
    known = [b for b in batch_sizes if b is not None]
    if len(set(known)) > 1:
        raise ValueError(
            f"All inputs to `{layer_name}` should have the same batch size "
            f"(axis 0), for data_format='{data_format}'. Received: batch "
            f"sizes {batch_sizes} in shapes "
            f"{[tuple(s) for s in input_shapes]}"
        )
    return rank


def fused_output_shape(input_shapes, channel, channels, spatial, data_format):
    """The shape of several feature maps fused into one: the first known
    batch size, `channels` on the `channel` axis and the sizes `spatial` on
    the spatial axes."""
    rank = len(input_shapes[0])
    batch_sizes = [s[0] for s in input_shapes if s[0] is not None]
    output_shape = [batch_sizes[0] if batch_sizes else None] * rank
    output_shape[channel] = channels
    for axis, size in zip(
        spatial_axes(rank, data_format), spatial, strict=True
    ):
        output_shape[axis] = size
    return tuple(output_shape)


def smallest_spatial_shape(input_shapes, data_format):
    """Per spatial axis, the smallest size among `input_shapes`.

    An axis whose size is unknown (`None`) in any input gives `None`.
    """
    return _reduce_spatial_shape(input_shapes, data_format, min)


def largest_spatial_shape(input_shapes, data_format):
    """Per spatial axis, the largest size among `input_shapes`.

    An axis whose size is unknown (`None`) in any input gives `None`.
    """
    return _reduce_spatial_shape(input_shapes, data_format, max)


def common_spatial_shape(input_shapes, data_format, layer_name, remedy):
    """Check that the inputs' spatial sizes agree and return them.

    Sizes are compared where known; per spatial axis, the result is the size
    that any input knows, or `None` where none does.

    Args:
        input_shapes: a list of shapes of the same rank.
        data_format: `"channels_last"` or `"channels_first"`.
        layer_name: the name used in error messages.
        remedy: what to do about different sizes, for the error message.
    """
    rank = len(input_shapes[0])
    sizes = []
    for axis in spatial_axes(rank, data_format):
        known = {s[axis] for s in input_shapes if s[axis] is not None}
        if len(known) > 1:
            raise ValueError(
                f"All inputs to `{layer_name}` should have the same spatial "
                f"size; {remedy}. Received: inputs with shapes "
                f"{[tuple(s) for s in input_shapes]}"
            )
        sizes.append(known.pop() if known else None)
    return tuple(sizes)


def common_channel_count(input_shapes, axis, layer_name, remedy):
    """Check that the inputs' channel counts agree and return the count.

    Counts are compared where known; the result is `None` if no input
    knows its count.

    Args:
        input_shapes: a list of shapes of the same rank.
        axis: the (non-negative) channel axis.
        layer_name: the name used in error messages.
        remedy: what to do about different counts, for the error message.
    """
    channels = [s[axis] for s in input_shapes]
    known = {c for c in channels if c is not None}
    if len(known) > 1:
        raise ValueError(
            f"All inputs to `{layer_name}` should have the same number of "
            f"channels (axis {axis}); {remedy}. Received: channels "
            f"{channels} in shapes {[tuple(s) for s in input_shapes]}"
        )
    return known.pop() if known else None


def check_size_argument(value, name):
    """Check a size argument that must be known before run time: a Python
    or NumPy int (not a bool), a scalar integer tensor or array, or
    anything `static_size` passes on (a tensor known only at run time, a
    traced value). Returns it as `static_size` does.

    Raises:
        TypeError: for a float, a bool, a string or another type.
    """
    if value is not None and _is_size_entry(value):
        return static_size(value)
    if _is_traced(value):
        return value
    raise TypeError(
        f"`{name}` should be an int or a scalar integer tensor. Received: "
        f"{name}={value!r} of type {type(value).__name__}"
    )


def _is_traced(value):
    """Whether `value` is a JAX tracer or a symbolic dimension, sizes that
    are ints once traced."""
    return type(value).__module__.startswith(("jax", "keras", "torch"))


def check_feature_map(x, name):
    """Check that `x` is a 1D, 2D or 3D feature map and return its rank."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) not in _SPATIAL_RANKS:
        raise ValueError(
            f"`{name}` should be a 1D, 2D or 3D feature map of rank 3, 4 or "
            f"5 (batch, spatial dimensions, channels). Received: {name} with "
            f"shape {None if shape is None else tuple(shape)}"
        )
    return len(shape)


def check_spatial_size(size, rank):
    """Check a `size` argument: one size per spatial dimension.

    Entries may be ints (NumPy's too), scalar integer tensors or `None`.
    Returns the sizes as a tuple, with those known before run time (ints,
    eager tensors, JAX arrays outside `jax.jit`) as Python ints.

    Raises:
        ValueError: if `size` is not a list or tuple of `rank - 2` entries,
            or if an entry is negative.
        TypeError: if an entry is of another type (a float, a bool, a
            string, a tuple) or a tensor that is not a scalar integer.
    """
    num_spatial = rank - 2
    if not isinstance(size, (list, tuple)) or len(size) != num_spatial:
        raise ValueError(
            f"`size` should be a list of {num_spatial} sizes, one per "
            f"spatial dimension of a rank-{rank} feature map. Received: "
            f"size={size!r}"
        )
    for index, s in enumerate(size):
        if not _is_size_entry(s):
            raise TypeError(
                "`size` should have, for each spatial dimension, an int, "
                "`None` or a scalar integer tensor. Received: "
                f"size={size!r}, whose entry {index} is "
                f"{_describe_size_entry(s)}"
            )
    size = tuple(None if s is None else static_size(s) for s in size)
    if any(is_static_size(s) and s < 0 for s in size):
        raise ValueError(
            f"`size` should not contain negative sizes. Received: size={size!r}"
        )
    return size


def _is_size_entry(value):
    if value is None or is_static_size(value):
        return True
    if not (isinstance(value, np.ndarray) or keras.ops.is_tensor(value)):
        return False
    dtype = keras.backend.standardize_dtype(value.dtype)
    return len(value.shape) == 0 and dtype.startswith(("int", "uint"))


def _describe_size_entry(value):
    if isinstance(value, np.ndarray) or keras.ops.is_tensor(value):
        return (
            "a tensor of dtype "
            f"{keras.backend.standardize_dtype(value.dtype)} and shape "
            f"{tuple(value.shape)}"
        )
    return f"of type {type(value).__name__}"


def _reduce_spatial_shape(input_shapes, data_format, reduce):
    rank = len(input_shapes[0])
    sizes = []
    for axis in spatial_axes(rank, data_format):
        axis_sizes = [s[axis] for s in input_shapes]
        sizes.append(None if None in axis_sizes else reduce(axis_sizes))
    return tuple(sizes)
