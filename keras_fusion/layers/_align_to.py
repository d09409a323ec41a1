import keras

from keras_fusion._internal.checks import spatial_axes
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.ops.cropping import center_crop_to
from keras_fusion.ops.padding import center_pad

_METHODS = ("crop", "pad")


@keras.saving.register_keras_serializable(package="keras_fusion")
class AlignTo(keras.layers.Layer):
    """Centre-crops or zero-pads a feature map to another's spatial size.

    The decoders on pretrained encoders put it where an upsampled map meets
    the encoder's map of the next level (or the input image): an encoder
    with "same" stride-2 convolutions rounds odd sizes up, so the upsampled
    map is one pixel larger and is cropped; one with valid poolings rounds
    them down, so it is one pixel smaller and is padded. The builders probe
    the encoder once to choose `method` for each level; the amounts follow
    the run-time sizes, and a map on the wrong side of its reference (a
    crop to a larger size, a pad to a smaller one) fails on every path as
    `keras_fusion.ops.center_crop_to` and `keras_fusion.ops.center_pad`
    fail, never giving a map of the wrong size.

    Private: the decoder builders use it, named `..._align`; it is
    registered so that `.keras` files of those models load.

    Args:
        method: `"crop"` (the map is at least the reference's size) or
            `"pad"` (at most).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        A list `[x, reference]` of two feature maps of the same rank.

    Output shape:
        `x`'s, with the spatial sizes of `reference`.
    """

    def __init__(self, method, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if method not in _METHODS:
            raise ValueError(
                f"`method` should be one of {_METHODS}. Received: "
                f"method={method!r}"
            )
        self.method = method
        self.data_format = standardize_data_format(data_format)

    def build(self, input_shape):
        self._spatial_axes = spatial_axes(len(input_shape[1]), self.data_format)

    def call(self, inputs):
        x, reference = inputs
        if self.method == "crop":
            return center_crop_to(x, reference, self.data_format)
        shape = keras.ops.shape(reference)
        size = [shape[axis] for axis in self._spatial_axes]
        return center_pad(x, size, self.data_format)

    def compute_output_shape(self, input_shape):
        x_shape, reference_shape = input_shape
        shape = list(x_shape)
        for axis in spatial_axes(len(shape), self.data_format):
            shape[axis] = reference_shape[axis]
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update({"method": self.method, "data_format": self.data_format})
        return config
