"""Argument and shape checks shared by the fusion layers.

Every function here works on static shapes (tuples whose entries are ints or
`None`), so the same check runs in `build()`/`compute_output_shape()` on the
symbolic shapes and again in `call()` on the shapes known at run time.
"""

import keras

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
    """
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


def smallest_spatial_shape(input_shapes, data_format):
    """Per spatial axis, the smallest size among `input_shapes`.

    An axis whose size is unknown (`None`) in any input gives `None`.
    """
    rank = len(input_shapes[0])
    sizes = []
    for axis in spatial_axes(rank, data_format):
        axis_sizes = [s[axis] for s in input_shapes]
        sizes.append(None if None in axis_sizes else min(axis_sizes))
    return tuple(sizes)
