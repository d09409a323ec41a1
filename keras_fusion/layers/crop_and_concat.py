import keras
from keras import ops

from keras_fusion.ops.cropping import crop_to_smallest
from keras_fusion.ops.shapes import check_fusion_input_shapes
from keras_fusion.ops.shapes import resolve_channel_axis
from keras_fusion.ops.shapes import smallest_spatial_shape
from keras_fusion.ops.shapes import spatial_axes
from keras_fusion.ops.shapes import standardize_data_format
from keras_fusion.ops.shapes import validate_axis_argument


@keras.saving.register_keras_serializable(package="keras_fusion")
class CropAndConcat(keras.layers.Layer):
    """Centre-crops feature maps to a common size and concatenates them.

    The skip connection of U-Net (Ronneberger et al., 2015, "U-Net:
    Convolutional Networks for Biomedical Image Segmentation"): valid
    convolutions shrink the decoder's feature maps, so the encoder's feature
    map is cropped to the decoder's size before the two are concatenated on
    the channel axis.

    Every input is centre-cropped, in each spatial dimension independently,
    to the smallest size that dimension has among the inputs; then all are
    concatenated on the channel axis in the order given. A size difference
    `d` is cropped as `d // 2` before and `d - d // 2` after (the convention
    of `keras.layers.CenterCrop`): cropping 61 rows to 52 keeps rows 4 to
    55, cropping 64 to 56 keeps rows 4 to 59. Inputs whose spatial sizes
    already agree pass through uncropped. Spatial sizes that are `None`
    until run time are cropped using the run-time shapes.

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

    Args:
        axis: the concatenation axis, which must be the channel axis: `-1`
            (or `rank - 1`) for `"channels_last"`, `1` for
            `"channels_first"`. Defaults to `None`, the channel axis of
            `data_format`.
        data_format: `"channels_last"` or `"channels_first"`, the ordering
            of the dimensions in the inputs. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A list of 2 or more tensors of the same rank: 3D
        `(batch, length, channels)`, 4D `(batch, height, width, channels)`
        or 5D `(batch, depth, height, width, channels)` with
        `"channels_last"`; the channel axis comes right after the batch axis
        with `"channels_first"`. Batch sizes must agree; spatial sizes and
        channel counts may differ.

    Output shape:
        The inputs' rank, with each spatial dimension the smallest among the
        inputs and `sum(channels)` channels.
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

    def call(self, inputs):
        check_fusion_input_shapes(
            [tuple(x.shape) for x in inputs],
            self.data_format,
            self.__class__.__name__,
        )
        cropped = crop_to_smallest(inputs, data_format=self.data_format)
        return ops.concatenate(cropped, axis=self._channel_axis)

    def compute_output_shape(self, input_shape):
        rank = check_fusion_input_shapes(
            input_shape, self.data_format, self.__class__.__name__
        )
        channel = resolve_channel_axis(self.axis, rank, self.data_format)
        batch_sizes = [s[0] for s in input_shape if s[0] is not None]
        channels = [s[channel] for s in input_shape]
        output_shape = [batch_sizes[0] if batch_sizes else None] * rank
        output_shape[channel] = None if None in channels else sum(channels)
        smallest = smallest_spatial_shape(input_shape, self.data_format)
        for axis, size in zip(
            spatial_axes(rank, self.data_format), smallest, strict=True
        ):
            output_shape[axis] = size
        return tuple(output_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "data_format": self.data_format})
        return config
