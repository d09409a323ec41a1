"""Keras masks of fused feature maps, for the fusion layers' base
(`BaseFusion`).

A mask marks valid positions: it has its feature map's shape without the
channel axis. When feature maps are fused, each mask is cropped or padded
with its input (with the same offsets, by the same functions) and the
masks are combined as `keras.layers.Concatenate` and `keras.layers.Add`
combine them: a position is valid where any input is valid.
"""

from keras import ops

from keras_fusion.backend.size_checks import checked_equal_shapes
from keras_fusion.ops.cropping import crop_to_smallest
from keras_fusion.ops.padding import pad_to_largest


def check_masks(inputs, mask, channel_axis, layer_name):
    """Check a fusion layer's `mask` argument against its inputs.

    Args:
        inputs: the list of feature maps.
        mask: `None`, or a list of one mask (or `None`) per input.
        channel_axis: the inputs' (non-negative) channel axis.
        layer_name: the name used in error messages.

    Returns:
        A list of one mask or `None` per input.
    """
    if mask is None:
        return [None] * len(inputs)
    if not isinstance(mask, (list, tuple)) or len(mask) != len(inputs):
        received = (
            f"a list of length {len(mask)}"
            if isinstance(mask, (list, tuple))
            else f"mask of type {type(mask).__name__}"
        )
        raise ValueError(
            "`mask` should be a list of one mask (or None) per input of "
            f"`{layer_name}`, {len(inputs)} here. Received: {received}"
        )
    for index, (x, m) in enumerate(zip(inputs, mask, strict=True)):
        if m is None:
            continue
        expected = tuple(
            size for axis, size in enumerate(x.shape) if axis != channel_axis
        )
        received = tuple(m.shape)
        if len(received) != len(expected) or any(
            None not in (e, r) and e != r
            for e, r in zip(expected, received, strict=True)
        ):
            raise ValueError(
                f"`mask` should hold one mask per input of `{layer_name}`, "
                "of the input's shape without the channel axis (axis "
                f"{channel_axis}): {expected} for input {index} of shape "
                f"{tuple(x.shape)}. Received: mask[{index}].shape={received}"
            )
    return [
        m if m is None else _checked_run_time_shape(x, m, channel_axis, index)
        for index, (x, m) in enumerate(zip(inputs, mask, strict=True))
    ]


def _checked_run_time_shape(x, mask, channel_axis, index):
    """`mask`, checked against `x` where their sizes are known only when a
    TensorFlow graph runs: a mask of size 1 would broadcast. Also where the
    layer then returns no mask (a sum with an unmasked input): the check
    runs in a `tf.function` all the same."""
    if None not in tuple(x.shape) + tuple(mask.shape):
        return mask  # check_masks has compared the sizes
    first_channel = [slice(None)] * len(x.shape)
    first_channel[channel_axis] = 0
    _, mask = checked_equal_shapes(
        [x[tuple(first_channel)], mask],
        "mask",
        f"`mask[{index}]` should have the shape of input {index} without "
        "the channel axis. Received: input without its channel axis and "
        "mask with run-time shapes {shapes}",
    )
    return mask


def fuse_masks(inputs, masks, align, data_format, channel_axis):
    """The mask of fused feature maps: valid where any input is valid.

    Each mask is aligned as its input is, by the functions that align the
    inputs, so that it keeps their offsets: `align="crop"` centre-crops it,
    `"pad"` pads it with `False`. An input without a mask counts as valid
    everywhere (before it is padded), as in `keras.layers.Concatenate`.

    Args:
        inputs: the list of feature maps.
        masks: a list of one mask (or `None`) per input, checked by
            `check_masks`.
        align: `None`, `"crop"` or `"pad"`.
        data_format: `"channels_last"` or `"channels_first"`.
        channel_axis: the inputs' (non-negative) channel axis.

    Returns:
        A boolean tensor of the fused output's shape without the channel
        axis.
    """
    aligned = []
    for x, m in zip(inputs, masks, strict=True):
        index = [slice(None)] * len(x.shape)
        index[channel_axis] = 0
        valid = ops.ones_like(x[tuple(index)], dtype="bool")
        if m is not None:
            # check_masks has checked its run-time shape: no broadcast.
            valid = ops.logical_and(valid, ops.cast(m, "bool"))
        # A channel axis of size 1 makes the mask a feature map that the
        # alignment functions crop or pad with its input's offsets.
        aligned.append(ops.expand_dims(valid, channel_axis))
    if align == "crop":
        aligned = crop_to_smallest(aligned, data_format=data_format)
    elif align == "pad":
        aligned = pad_to_largest(aligned, data_format=data_format)
    return ops.any(
        ops.concatenate(aligned, axis=channel_axis), axis=channel_axis
    )
