import keras
from keras import ops

from keras_fusion._internal.checks import check_fusion_input_shapes
from keras_fusion._internal.checks import fused_output_shape
from keras_fusion._internal.checks import resolve_channel_axis
from keras_fusion._internal.checks import smallest_spatial_shape
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion._internal.checks import validate_axis_argument
from keras_fusion._internal.masking import check_masks
from keras_fusion._internal.masking import fuse_masks
from keras_fusion._internal.shapes import refuse_torchscript_trace
from keras_fusion.ops.cropping import crop_to_smallest


@keras.saving.register_keras_serializable(package="keras_fusion")
class CropAndConcat(keras.layers.Layer):
    """Centre-crops feature maps to a common size and concatenates them.

    The skip connection of U-Net: valid convolutions shrink the decoder's
    feature maps, so the encoder's feature map is cropped to the decoder's
    size before the two are concatenated on the channel axis. The layer is
    `keras.layers.Cropping1D`/`2D`/`3D` with centred amounts followed by
    `keras.layers.Concatenate`, for any number of inputs.

    Every input is centre-cropped, in each spatial dimension independently,
    to the smallest size that dimension has among the inputs; then all are
    concatenated on the channel axis in the order given. A size difference
    `d` is cropped as `d // 2` before and `d - d // 2` after (the convention
    of `keras.layers.CenterCrop`): cropping 61 rows to 52 keeps rows 4 to
    55, cropping 64 to 56 keeps rows 4 to 59. Inputs whose spatial sizes
    already agree pass through uncropped. Spatial sizes that are `None`
    until run time are cropped using the run-time shapes.

    Masking is supported: Keras masks propagate as through
    `keras.layers.Concatenate`. A mask marks positions, so it has its
    input's shape without the channel axis, in either data format:
    `(batch, steps)` for `(batch, steps, channels)` inputs, as after
    `keras.layers.Masking`, `(batch, height, width)` for images. Each mask
    is centre-cropped with its input (same offsets), an unmasked input
    counts as valid everywhere, and a position of the output is valid where
    any input is valid there. Without masks the output has none.

    Example:

    >>> import numpy as np
    >>> from keras_fusion import CropAndConcat
    >>> skip = np.ones((2, 64, 64, 32), dtype="float32")
    >>> upsampled = np.zeros((2, 56, 56, 32), dtype="float32")
    >>> y = CropAndConcat()([skip, upsampled])
    >>> tuple(y.shape)
    (2, 56, 56, 64)

    In a functional model with sizes unknown until run time:

    >>> import keras
    >>> skip = keras.Input((None, None, 8))
    >>> upsampled = keras.Input((None, None, 16))
    >>> CropAndConcat()([skip, upsampled]).shape
    (None, None, None, 24)

    The masks of two sequences, the longer one cropped from 6 steps to 4
    (one step before, one after):

    >>> long = np.zeros((1, 6, 2), dtype="float32")
    >>> short = np.zeros((1, 4, 3), dtype="float32")
    >>> long_mask = np.array([[True, True, True, True, False, False]])
    >>> short_mask = np.array([[True, True, False, False]])
    >>> mask = CropAndConcat().compute_mask(
    ...     [long, short], [long_mask, short_mask]
    ... )
    >>> keras.ops.convert_to_numpy(mask)
    array([[ True,  True,  True, False]])

    Args:
        axis: the concatenation axis, which must be the channel axis: `-1`
            (or `rank - 1`) for `"channels_last"`, `1` for
            `"channels_first"`. Defaults to `None`, the channel axis of
            `data_format`.
        data_format: `"channels_last"` or `"channels_first"`, the ordering
            of the dimensions in the inputs. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: the list of feature maps.
        mask: `None` or a list of one boolean mask (or `None`) per input,
            each of its input's shape without the channel axis. Keras passes
            the inputs' masks here; a mask of another shape raises a
            `ValueError`.

    Input shape:
        A list of 2 or more tensors of the same rank: 3D
        `(batch, length, channels)`, 4D `(batch, height, width, channels)`
        or 5D `(batch, depth, height, width, channels)` with
        `"channels_last"`; the channel axis comes right after the batch axis
        with `"channels_first"`. Batch sizes must agree; spatial sizes and
        channel counts may differ.

    Output shape:
        The inputs' rank, with each spatial dimension the smallest among the
        inputs and `sum(channels)` channels. The output mask, if any input
        has one, is the output's shape without the channel axis.

    Reference:

    - [Ronneberger, Fischer and Brox, 2015, "U-Net: Convolutional Networks
      for Biomedical Image Segmentation"](https://arxiv.org/abs/1505.04597).
    """

    def __init__(self, axis=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.axis = validate_axis_argument(axis)
        self.data_format = standardize_data_format(data_format)

    def build(self, input_shape):
        rank = check_fusion_input_shapes(
            input_shape, self.data_format, self.__class__.__name__
        )
        self._channel_axis = resolve_channel_axis(
            self.axis, rank, self.data_format
        )

    def call(self, inputs, mask=None):
        refuse_torchscript_trace(self.__class__.__name__)
        name = self.__class__.__name__
        check_fusion_input_shapes(
            [tuple(x.shape) for x in inputs], self.data_format, name
        )
        check_masks(inputs, mask, self._channel_axis, name)
        cropped = crop_to_smallest(inputs, data_format=self.data_format)
        return ops.concatenate(cropped, axis=self._channel_axis)

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        name = self.__class__.__name__
        rank = check_fusion_input_shapes(
            [tuple(x.shape) for x in inputs], self.data_format, name
        )
        channel = resolve_channel_axis(self.axis, rank, self.data_format)
        masks = check_masks(inputs, mask, channel, name)
        if all(m is None for m in masks):
            return None
        return fuse_masks(inputs, masks, "crop", self.data_format, channel)

    def compute_output_shape(self, input_shape):
        rank = check_fusion_input_shapes(
            input_shape, self.data_format, self.__class__.__name__
        )
        channel = resolve_channel_axis(self.axis, rank, self.data_format)
        channels = [s[channel] for s in input_shape]
        return fused_output_shape(
            input_shape,
            channel,
            None if None in channels else sum(channels),
            smallest_spatial_shape(input_shape, self.data_format),
            self.data_format,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "data_format": self.data_format})
        return config
