import keras
from keras import ops

from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_choice
from keras_fusion.backend.size_checks import checked_equal_shapes
from keras_fusion.layers._base_fusion import BaseFusion
from keras_fusion.layers._base_fusion import check_fusion_epsilon

_ALIGN_FIRST = (
    "crop or pad them to a common size first, or use "
    "FusionSelector(mode='weighted_add', align='crop') (or align='pad'), "
    "which does"
)
_SHAPES_DIFFER = (
    "All inputs to `{name}` should have the same shape (batch, spatial and "
    f"channel sizes); {_ALIGN_FIRST}. Received: inputs with run-time shapes "
    "{{shapes}}"
)
_NORMALIZATIONS = ("fast", "softmax")
# BiFPN's value (EfficientDet's `fuse_features`).
_DEFAULT_FUSION_EPSILON = 1e-4


@keras.saving.register_keras_serializable(package="keras_fusion")
class WeightedAdd(BaseFusion):
    """Adds feature maps with learned, normalized weights (BiFPN fusion).

    EfficientDet's weighted feature fusion: with learnable weights `w_i`,
    one per input `x_i` (or one per input and channel), the output is
    `sum(v_i * x_i)` where the `v_i` are the weights normalized over the
    inputs:

    - `normalization="fast"` (default), the paper's fast normalized fusion,
      `v_i = relu(w_i) / (sum_j relu(w_j) + fusion_epsilon)`: the ReLU
      keeps each weight non-negative and the sum normalizes them without
      the exponentials the paper finds slow on GPUs. EfficientDet's
      `fastattn` (`channel_fastattn` with `weight_per_channel=True`).
    - `normalization="softmax"`, `v_i = exp(w_i) / sum_j exp(w_j)`, the
      softmax over the inputs (per channel with `weight_per_channel=True`):
      EfficientDet's `attn` (`channel_attn`).

    The weights are the trainable variable `fusion_weights`, of shape
    `(num_inputs,)`, or `(num_inputs, channels)` with
    `weight_per_channel=True`; they start at 1, so that the untrained
    layer averages its inputs (up to `fusion_epsilon` in the fast form).
    Under a mixed precision policy the weights stay in float32 and are
    normalized in float32; the normalized weights are then cast to the
    inputs' dtype.

    Like `keras.layers.Add`, it takes inputs of the same shape;
    `FusionSelector(mode="weighted_add")` uses it after cropping or padding
    the inputs to a common size (`align`) and projecting them to a common
    channel count (`projection`).

    Masking is supported: Keras masks propagate as through
    `keras.layers.Add`. A mask marks positions, so it has its input's shape
    without the channel axis, in either data format: `(batch, steps)` for
    `(batch, steps, channels)` inputs, as after `keras.layers.Masking`,
    `(batch, height, width)` for images. When every input has a mask, a
    position of the output is valid where any input is valid there; when
    an input has none, it counts as valid everywhere and, as with
    `keras.layers.Add`, the output has no mask. Masked positions are summed
    like the others, as in `keras.layers.Add`.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_fusion import WeightedAdd
    >>> a = np.full((2, 8, 8, 16), 1.0, dtype="float32")
    >>> b = np.full((2, 8, 8, 16), 3.0, dtype="float32")
    >>> y = WeightedAdd()([a, b])
    >>> tuple(y.shape)
    (2, 8, 8, 16)

    The weights start at 1, so the untrained layer averages its inputs:

    >>> round(float(keras.ops.convert_to_numpy(y)[0, 0, 0, 0]), 3)
    2.0

    The softmax of equal weights averages too:

    >>> y = WeightedAdd(normalization="softmax")([a, b])
    >>> round(float(keras.ops.convert_to_numpy(y)[0, 0, 0, 0]), 3)
    2.0

    One weight per input and channel:

    >>> fuse = WeightedAdd(weight_per_channel=True)
    >>> fuse.build([a.shape, b.shape])
    >>> tuple(fuse.fusion_weights.shape)
    (2, 16)

    Args:
        weight_per_channel: learn one weight per input and channel instead
            of one per input. Defaults to `False`.
        normalization: `"fast"` (default) or `"softmax"`, how the weights
            are normalized over the inputs (see above).
        fusion_epsilon: with `normalization="fast"`, the positive constant
            added to the sum of the weights, which keeps the division
            stable when every weight is near zero. Defaults to `None`:
            `1e-4`, BiFPN's value. The softmax takes none.
        axis: the channel axis, along which the weights vary with
            `weight_per_channel=True`: `-1` (or `rank - 1`) for
            `"channels_last"`, `1` for `"channels_first"`. Defaults to
            `None`, the channel axis of `data_format`.
        data_format: `"channels_last"` or `"channels_first"`, the ordering
            of the dimensions in the inputs. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: the list of feature maps to add.
        mask: `None` or a list of one boolean mask (or `None`) per input,
            each of its input's shape without the channel axis; the output
            has a mask only when every input has one. Keras passes the
            inputs' masks here; a mask of another shape raises a
            `ValueError`.

    Input shape:
        A list of 2 or more tensors of the same shape: 3D
        `(batch, length, channels)`, 4D `(batch, height, width, channels)`
        or 5D `(batch, depth, height, width, channels)` with
        `"channels_last"`; the channel axis comes right after the batch axis
        with `"channels_first"`. With `weight_per_channel=True` the channel
        count of every input must be known. Once built, the layer takes the
        number of inputs it was built for.

    Output shape:
        The inputs' shape. The output mask, if there is one, is the
        output's shape without the channel axis.

    Reference:

    - [Tan, Pang and Le, 2020, "EfficientDet: Scalable and Efficient
      Object Detection"](https://arxiv.org/abs/1911.09070), section 3.3,
      "Weighted Feature Fusion".
    """

    # Like keras.layers.Add: the inputs' sizes and channel counts must
    # agree.
    _spatial_remedy = _ALIGN_FIRST
    _channel_remedy = (
        "project them to a common channel count first, or use "
        "FusionSelector(mode='weighted_add', projection=<channels>), "
        "which does"
    )

    def __init__(
        self,
        weight_per_channel=False,
        normalization="fast",
        fusion_epsilon=None,
        axis=None,
        data_format=None,
        **kwargs,
    ):
        super().__init__(axis=axis, data_format=data_format, **kwargs)
        self.weight_per_channel = check_bool(
            weight_per_channel, "weight_per_channel"
        )
        self.normalization = check_choice(
            normalization, "normalization", _NORMALIZATIONS
        )
        self.fusion_epsilon = weighted_add_epsilon(
            normalization, fusion_epsilon
        )

    def build(self, input_shape):
        super().build(input_shape)
        if self.weight_per_channel:
            self._require_channel_counts(input_shape, "weight_per_channel=True")
        num_inputs = len(input_shape)
        self.fusion_weights = self.add_weight(
            name="fusion_weights",
            shape=(
                (num_inputs, input_shape[0][self._channel_axis])
                if self.weight_per_channel
                else (num_inputs,)
            ),
            initializer="ones",
            # Read in the variable's dtype (float32 under mixed precision)
            # and normalized in at least float32 (`_fuse`).
            autocast=False,
        )
        # Weight i belongs to input i (and, per channel, to its channels).
        self._tie_to_inputs(input_shape, channels=self.weight_per_channel)

    def _fuse(self, inputs):
        # Sizes known only at run time are checked when the graph runs:
        # the sum would broadcast an input of size 1.
        inputs = checked_equal_shapes(
            inputs,
            "weighted_add_inputs",
            _SHAPES_DIFFER.format(name=self.__class__.__name__),
        )
        weights = self.fusion_weights
        weights = ops.cast(
            weights, keras.backend.result_type(weights.dtype, "float32")
        )
        if self.normalization == "softmax":
            weights = ops.softmax(weights, axis=0)
        else:
            weights = ops.relu(weights)
            weights = weights / (ops.sum(weights, axis=0) + self.fusion_epsilon)
        weights = ops.cast(weights, inputs[0].dtype)
        if self.weight_per_channel:
            broadcast = [1] * (len(inputs[0].shape) - 1)
            broadcast[self._channel_axis - 1] = weights.shape[1]
            weights = ops.reshape(weights, (len(inputs), *broadcast))
        output = ops.multiply(weights[0], inputs[0])
        for index in range(1, len(inputs)):
            output = ops.add(
                output, ops.multiply(weights[index], inputs[index])
            )
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight_per_channel": self.weight_per_channel,
                "normalization": self.normalization,
                "fusion_epsilon": self.fusion_epsilon,
            }
        )
        return config


def weighted_add_epsilon(normalization, fusion_epsilon):
    """The `fusion_epsilon` of a weighted addition with `normalization`:
    `1e-4` when the fast form is given `None`, the checked value when it is
    given one; `None` for the softmax, which refuses one."""
    if normalization == "softmax":
        if fusion_epsilon is not None:
            raise ValueError(
                "`fusion_epsilon` is only used with normalization='fast' (the "
                "softmax needs no epsilon). Received: normalization='softmax', "
                f"fusion_epsilon={fusion_epsilon!r}"
            )
        return None
    if fusion_epsilon is None:
        return _DEFAULT_FUSION_EPSILON
    return check_fusion_epsilon(fusion_epsilon)
