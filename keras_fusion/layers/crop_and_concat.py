import keras
from keras import ops

from keras_fusion.layers._base_fusion import BaseFusion


@keras.saving.register_keras_serializable(package="keras_fusion")
class CropAndConcat(BaseFusion):
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
        inputs: the list of feature maps to crop and concatenate.
        mask: `None` or a list of one boolean mask (or `None`) per input,
            each of its input's shape without the channel axis, which is
            cropped with its input. Keras passes the inputs' masks here; a
            mask of another shape raises a `ValueError`.

    Input shape:
        A list of 2 or more tensors of the same rank and batch size, whose
        spatial sizes and channel counts may differ: 3D
        `(batch, length, channels)`, 4D `(batch, height, width, channels)`
        or 5D `(batch, depth, height, width, channels)` with
        `"channels_last"`; the channel axis comes right after the batch axis
        with `"channels_first"`.

    Output shape:
        The inputs' rank, with each spatial dimension the smallest among the
        inputs and `sum(channels)` channels. The output mask, if any input
        has one, is the output's shape without the channel axis.

    Reference:

    - [Ronneberger, Fischer and Brox, 2015, "U-Net: Convolutional Networks
      for Biomedical Image Segmentation"](https://arxiv.org/abs/1505.04597).
    """

    # Inputs of any sizes are centre-cropped to the smallest; their
    # channel counts add up.
    _alignment = "crop"
    _concatenates = True

    def _fuse(self, inputs):
        return ops.concatenate(inputs, axis=self._channel_axis)
