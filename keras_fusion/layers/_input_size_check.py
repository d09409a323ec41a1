import keras

from keras_fusion._internal.checks import spatial_axes
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion.backend.size_checks import checked_minimum_size


@keras.saving.register_keras_serializable(package="keras_fusion")
class InputSizeCheck(keras.layers.Layer):
    """Passes an image on, failing if a spatial size is below a minimum.

    The model builders put it after the input of a model whose spatial
    sizes are `None` (static sizes they check when they build the model):
    an image too small for the model's poolings and valid convolutions
    would otherwise give an empty map, NaNs or values of uninitialised
    memory, depending on the CPU. The check is on every path: a
    `ValueError` where the sizes are known when the layer is called (eager,
    JAX, PyTorch), an `InvalidArgumentError` when a TensorFlow graph runs
    (`tf.function`, SavedModel), and a failing reshape under XLA, in LiteRT
    and in ONNX (see `keras_fusion.backend.size_checks`). The image itself
    is not copied.

    Private: the builders use it, named `input_size_check`; it is
    registered so that `.keras` files of those models load.

    Args:
        minimum_size: the smallest size of each spatial dimension, a tuple
            of ints.
        model_name: the model the sizes are for, named in the error.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        A feature map of rank `len(minimum_size) + 2`.

    Output shape:
        The input's.
    """

    def __init__(self, minimum_size, model_name, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.minimum_size = tuple(int(size) for size in minimum_size)
        self.model_name = model_name
        self.data_format = standardize_data_format(data_format)

    def build(self, input_shape):
        # The smallest size of each axis of the input, None where any.
        rank = len(self.minimum_size) + 2
        self._minimum = [None] * rank
        for axis, size in zip(
            spatial_axes(rank, self.data_format), self.minimum_size, strict=True
        ):
            self._minimum[axis] = size

    def call(self, inputs):
        return checked_minimum_size(
            inputs,
            self._minimum,
            name="input_size_check",
            message=(
                f"`{self.model_name}` needs inputs with spatial sizes of "
                f"at least {self.minimum_size} (data_format="
                f"'{self.data_format}'): its poolings and convolutions "
                "would shrink a smaller image to nothing. Pad or resize the "
                "input. Received: an input of shape {shape}"
            ),
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "minimum_size": self.minimum_size,
                "model_name": self.model_name,
                "data_format": self.data_format,
            }
        )
        return config
