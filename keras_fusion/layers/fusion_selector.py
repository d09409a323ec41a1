import numbers

import keras
from keras import ops

from keras_fusion._internal.checks import check_batch_norm_arguments
from keras_fusion._internal.checks import check_bool
from keras_fusion._internal.checks import check_choice
from keras_fusion._internal.checks import check_real
from keras_fusion._internal.checks import check_synchronized
from keras_fusion.backend.size_checks import checked_equal_shapes
from keras_fusion.layers._base_fusion import BaseFusion
from keras_fusion.layers.weighted_add import WeightedAdd
from keras_fusion.layers.weighted_add import weighted_add_epsilon

_MODES = ("add", "concat", "weighted_add")
_ALIGNS = (None, "crop", "pad")
_SHAPES_DIFFER = (
    "The inputs to `FusionSelector` (mode='add', align={align!r}) should "
    "have the same batch size and, once projected and aligned, the same "
    "shape{remedy}. Received: inputs with run-time shapes (projected and "
    "aligned) {{shapes}}"
)
_CONVOLUTIONS = {
    3: keras.layers.Conv1D,
    4: keras.layers.Conv2D,
    5: keras.layers.Conv3D,
}


@keras.saving.register_keras_serializable(package="keras_fusion")
class FusionSelector(BaseFusion):
    """Fuses feature maps by addition, concatenation or weighted addition.

    One layer for the choice every multi-branch network makes when two
    feature maps meet: element-wise addition (ResNet, FPN) or channel
    concatenation (DenseNet, U-Net), so that an ablation such as
    Feature-Fused SSD's (concatenation module vs element-sum module)
    changes one argument, in code or in a saved model's config.

    Which to choose is the subject of the notebook
    `notebooks/04_add_vs_concat.ipynb` in the keras_fusion repository,
    after the article "深度特征融合---理解add和concat之多层特征融合"
    (2023): why addition followed by a convolution is a concatenation
    whose following convolution shares its kernel between the inputs,
    what each costs, and an ablation of the modes below.

    Modes:

    - `"concat"`: concatenation on the channel axis, like
      `keras.layers.Concatenate`. With `batch_norm_before_concat=True` each
      input first goes through its own `BatchNormalization` (sublayers
      `bn_0`, `bn_1`, ..., each with its own gamma, beta and moving
      statistics), in training and inference alike.
    - `"add"`: element-wise sum, like `keras.layers.Add`.
    - `"weighted_add"`: EfficientDet's weighted fusion by a `WeightedAdd`
      sublayer named `weighted_add`: BiFPN's fast normalized fusion,
      `sum(relu(w_i) * x_i) / (sum(relu(w_i)) + fusion_epsilon)`, or with
      `normalization="softmax"` the softmax-weighted sum
      `sum(softmax(w)_i * x_i)`; one learnable weight per input, or one per
      input and channel with `weight_per_channel=True`, initialised to 1
      (a plain average). Its variable is also this layer's
      `fusion_weights` attribute.

    Inputs are processed in a fixed order: each input goes through its own
    sublayer (batch normalization or projection), then the inputs are
    aligned, then fused. Projecting before padding keeps the padded border
    at exactly zero.

    Masking is supported: Keras masks propagate as through
    `keras.layers.Add` and `keras.layers.Concatenate`. A mask marks
    positions, so it has its input's shape without the channel axis, in
    either data format: `(batch, steps)` for `(batch, steps, channels)`
    inputs, as after `keras.layers.Masking`, `(batch, height, width)` for
    images. Each mask is aligned with its input: centre-cropped with the
    same offsets (`align="crop"`), or padded with `False` (`align="pad"`),
    so that the padding of an input is masked out, also for an unmasked
    input when another input has a mask. A position of the output is valid
    where any input is valid there. As in Keras, an unmasked input counts
    as valid everywhere: with `"concat"` the output mask is then `True`
    wherever that input is not padding, and with `"add"` or
    `"weighted_add"` without padding the output, like
    `keras.layers.Add`'s, has no mask. Without masks the output has none.

    With `batch_norm_before_concat=True` each input's mask also goes to its
    `BatchNormalization`, which then computes the batch statistics of
    training over the valid positions only, as a `BatchNormalization`
    applied to the masked input does. Keras's `BatchNormalization` lines a
    mask up with the leading axes of its input, which is only right with
    `"channels_last"`, so with `"channels_first"` masked inputs are refused
    (a `ValueError`).

    The BatchNormalization arguments are named `batch_norm_momentum` and
    `batch_norm_epsilon`, as in every keras_fusion layer and builder that
    creates BatchNormalization (and in KerasHub's backbones): here a bare
    `epsilon` would be ambiguous with the fusion's `fusion_epsilon`.

    Example:

    >>> import numpy as np
    >>> from keras_fusion import FusionSelector
    >>> a = np.ones((2, 8, 8, 16), dtype="float32")
    >>> b = np.ones((2, 8, 8, 16), dtype="float32")
    >>> tuple(FusionSelector(mode="add")([a, b]).shape)
    (2, 8, 8, 16)
    >>> tuple(FusionSelector(mode="concat")([a, b]).shape)
    (2, 8, 8, 32)

    Switching the fusion of a saved layer is a config edit:

    >>> config = FusionSelector(mode="add").get_config()
    >>> config["mode"] = "concat"
    >>> config["batch_norm_before_concat"] = True
    >>> tuple(FusionSelector.from_config(config)([a, b]).shape)
    (2, 8, 8, 32)

    An FPN-style merge of a lateral feature map with an upsampled top-down
    one of fewer channels and a different size:

    >>> import keras
    >>> lateral = keras.Input((33, 33, 256))
    >>> top_down = keras.Input((34, 34, 64))
    >>> fuse = FusionSelector(
    ...     "weighted_add", align="crop", projection=64, name="fpn_merge"
    ... )
    >>> fuse([lateral, top_down]).shape
    (None, 33, 33, 64)

    Its weights: a projection of the input with 256 channels, and the
    fusion weights of its `WeightedAdd` sublayer:

    >>> for variable in fuse.weights:
    ...     print(variable.path, variable.shape)
    fpn_merge/projection_0/kernel (1, 1, 256, 64)
    fpn_merge/projection_0/bias (64,)
    fpn_merge/weighted_add/fusion_weights (2,)

    The mask of two sequences added with `align="pad"`: the short one, padded
    from 2 steps to 4, is masked out where it was padded:

    >>> long = np.zeros((1, 4, 2), dtype="float32")
    >>> short = np.zeros((1, 2, 2), dtype="float32")
    >>> long_mask = np.array([[False, False, True, True]])
    >>> mask = FusionSelector("add", align="pad").compute_mask(
    ...     [long, short], [long_mask, None]
    ... )
    >>> keras.ops.convert_to_numpy(mask)
    array([[False,  True,  True,  True]])

    Args:
        mode: `"concat"` (default), `"add"` or `"weighted_add"`.
        batch_norm_before_concat: with `mode="concat"`, pass each input
            through its own `BatchNormalization` before concatenating.
            Defaults to `False`.
        align: what to do with inputs whose spatial sizes differ: `None`
            (default) raises an error; `"crop"` centre-crops every input to
            the smallest size, as `CropAndConcat` does; `"pad"` zero-pads
            every input to the largest size. Each spatial dimension is
            aligned independently; a difference `d` is split `d // 2`
            before and `d - d // 2` after.
        projection: with `mode="add"` or `"weighted_add"`, `None` (default)
            or a positive int: the common channel count. Each input whose
            channel count differs from `projection` goes through its own
            1x1 convolution with `projection` filters and a bias (FPN's
            lateral connection; sublayer `projection_<i>` for input `i`);
            inputs that already have `projection` channels pass through
            unchanged. Not accepted with `mode="concat"`, which takes any
            channel counts.
        weight_per_channel: with `mode="weighted_add"`, learn one weight per
            input and channel instead of one per input. Defaults to
            `False`.
        normalization: with `mode="weighted_add"`, `"fast"` (default) or
            `"softmax"`: how `WeightedAdd` normalizes its weights.
        fusion_epsilon: with `mode="weighted_add"` and
            `normalization="fast"`, the positive constant added to the sum
            of the weights. Defaults to `None`: `1e-4`, BiFPN's value.
        batch_norm_momentum: the momentum of the `BatchNormalization`
            sublayers' moving statistics. Defaults to `0.99`.
        batch_norm_epsilon: the epsilon of the `BatchNormalization`
            sublayers. Defaults to `1.001e-5`, the value of
            `keras.applications`' DenseNet.
        kernel_initializer: the initializer of the projection kernels.
            Defaults to `"glorot_uniform"`.
        kernel_regularizer: the regularizer of the projection kernels.
            Defaults to `None`.
        axis: the channel axis, on which inputs are concatenated and
            normalized: `-1` (or `rank - 1`) for `"channels_last"`, `1` for
            `"channels_first"`. Defaults to `None`, the channel axis of
            `data_format`.
        data_format: `"channels_last"` or `"channels_first"`, the ordering
            of the dimensions in the inputs. Defaults to
            `keras.config.image_data_format()`.
        synchronized: with `batch_norm_before_concat`, the TensorFlow
            backend and a `tf.distribute` strategy, compute BatchNorm's
            batch statistics over the global batch, as
            `keras.layers.BatchNormalization(synchronized=True)` does.
            Defaults to `False`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: the list of feature maps to fuse.
        training: whether the `BatchNormalization` sublayers
            (`batch_norm_before_concat`) run in training mode.
        mask: `None` or a list of one boolean mask (or `None`) per input,
            each of its input's shape without the channel axis, which is
            aligned with its input (`align`). Keras passes the inputs' masks
            here; a mask of another shape raises a `ValueError`.

    Input shape:
        A list of 2 or more tensors of the same rank: 3D
        `(batch, length, channels)`, 4D `(batch, height, width, channels)`
        or 5D `(batch, depth, height, width, channels)` with
        `"channels_last"`; the channel axis comes right after the batch axis
        with `"channels_first"`. Batch sizes must agree; spatial sizes must
        agree unless `align` is set; with `"add"` and `"weighted_add"`
        channel counts must agree unless `projection` is set. Channel counts
        must be known when the layer has weights
        (`batch_norm_before_concat`, `projection`, `weight_per_channel`).

    Output shape:
        The inputs' rank, with each spatial dimension the inputs' common
        size (`align=None`), smallest size (`"crop"`) or largest size
        (`"pad"`); `sum(channels)` channels for `"concat"`, otherwise the
        common channel count (`projection` if it is set). The output mask,
        if there is one, is the output's shape without the channel axis.

    Reference:

    - [He et al., 2016, "Deep Residual Learning for Image
      Recognition"](https://arxiv.org/abs/1512.03385) (addition).
    - [Huang et al., 2017, "Densely Connected Convolutional
      Networks"](https://arxiv.org/abs/1608.06993) (concatenation).
    - [Lin et al., 2017, "Feature Pyramid Networks for Object
      Detection"](https://arxiv.org/abs/1612.03144) (`projection`).
    - [Cao et al., 2017, "Feature-Fused SSD: Fast Detection for Small
      Objects"](https://arxiv.org/abs/1709.05054) (add vs concat).
    - [Tan, Pang and Le, 2020, "EfficientDet: Scalable and Efficient
      Object Detection"](https://arxiv.org/abs/1911.09070)
      (`"weighted_add"`).
    """

    _spatial_remedy = (
        "pass align='crop' or align='pad' to fuse feature maps of different "
        "sizes"
    )

    @property
    def _alignment(self):
        return self.align

    @property
    def _concatenates(self):
        return self.mode == "concat"

    @property
    def _channel_remedy(self):
        return (
            f"mode={self.mode!r} sums the inputs element-wise; pass "
            "projection=<channels> to project them to a common channel "
            "count with 1x1 convolutions"
        )

    def __init__(
        self,
        mode="concat",
        batch_norm_before_concat=False,
        align=None,
        projection=None,
        weight_per_channel=False,
        normalization="fast",
        fusion_epsilon=None,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1.001e-5,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        axis=None,
        data_format=None,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(axis=axis, data_format=data_format, **kwargs)
        if mode not in _MODES:
            raise ValueError(
                "`mode` should be one of 'add', 'concat' or 'weighted_add'. "
                f"Received: mode={mode!r}"
            )
        if align not in _ALIGNS:
            raise ValueError(
                "`align` should be one of None, 'crop' or 'pad'. "
                f"Received: align={align!r}"
            )
        check_bool(batch_norm_before_concat, "batch_norm_before_concat")
        check_bool(weight_per_channel, "weight_per_channel")
        if batch_norm_before_concat and mode != "concat":
            raise ValueError(
                "`batch_norm_before_concat=True` normalizes the inputs of a "
                "concatenation and should only be used with mode='concat'. "
                f"Received: batch_norm_before_concat=True, mode={mode!r}"
            )
        if weight_per_channel and mode != "weighted_add":
            raise ValueError(
                "`weight_per_channel=True` should only be used with "
                f"mode='weighted_add'. Received: weight_per_channel=True, "
                f"mode={mode!r}"
            )
        check_choice(normalization, "normalization", ("fast", "softmax"))
        if normalization != "fast" and mode != "weighted_add":
            raise ValueError(
                "`normalization` should only be set with mode='weighted_add'. "
                f"Received: normalization={normalization!r}, mode={mode!r}"
            )
        if projection is not None:
            check_real(
                projection,
                "projection",
                "None or a positive int, the common channel count",
                lambda v: isinstance(v, numbers.Integral) and v >= 1,
            )
            if mode == "concat":
                raise ValueError(
                    "`projection` should only be used with mode='add' or "
                    "'weighted_add': mode='concat' takes inputs with any "
                    f"channel counts. Received: projection={projection!r}, "
                    f"mode={mode!r}"
                )
        self.mode = mode
        self.batch_norm_before_concat = batch_norm_before_concat
        self.align = align
        self.projection = None if projection is None else int(projection)
        self.weight_per_channel = weight_per_channel
        self.normalization = normalization
        self.fusion_epsilon = weighted_add_epsilon(
            normalization, fusion_epsilon
        )
        self.batch_norm_momentum, self.batch_norm_epsilon = (
            check_batch_norm_arguments(batch_norm_momentum, batch_norm_epsilon)
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.synchronized = check_synchronized(synchronized)
        self._weighted_add = None

    def build(self, input_shape):
        super().build(input_shape)
        if (
            self.batch_norm_before_concat
            or self.projection is not None
            or self.weight_per_channel
        ):
            self._require_channel_counts(
                input_shape,
                "batch_norm_before_concat, projection or weight_per_channel",
            )
        self._batch_norms = self._build_batch_norms(input_shape)
        self._projections = self._build_projections(input_shape)
        if self.mode == "weighted_add":
            self._weighted_add = self._build_weighted_add(input_shape)
        if (
            self._batch_norms
            or self._projections
            or self._weighted_add is not None
        ):
            # Sublayers and weights of input i tie the layer to its inputs.
            self._tie_to_inputs(input_shape, channels=True)

    def call(self, inputs, training=None, mask=None):
        masks = self._check_call_inputs(inputs, mask)
        self._check_float_inputs(inputs)
        fused = self._normalize(list(inputs), masks, training)
        fused = self._project(fused)
        return self._fuse(self._align_inputs(fused))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "batch_norm_before_concat": self.batch_norm_before_concat,
                "align": self.align,
                "projection": self.projection,
                "weight_per_channel": self.weight_per_channel,
                "normalization": self.normalization,
                "fusion_epsilon": self.fusion_epsilon,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "synchronized": self.synchronized,
            }
        )
        return config

    @property
    def fusion_weights(self):
        """The `weighted_add` sublayer's `fusion_weights` variable."""
        if self._weighted_add is None:
            raise AttributeError(
                "`fusion_weights` exists once a FusionSelector with "
                "mode='weighted_add' is built. Received: "
                f"mode={self.mode!r}, built={self.built}"
            )
        return self._weighted_add.fusion_weights

    def __getattr__(self, name):
        # Under PyTorch a Layer is a `torch.nn.Module`, whose `__getattr__`
        # Python calls when a property raises AttributeError: it would
        # replace the property's message (which names the mode) with
        # "'FusionSelector' object has no attribute 'fusion_weights'".
        if name == "fusion_weights":
            return type(self).fusion_weights.fget(self)
        parent = getattr(super(), "__getattr__", None)
        if parent is None:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            )
        return parent(name)

    def _fused_channels(self, input_shape, channel_axis):
        # The projections give every input `projection` channels.
        if self.projection is not None:
            return self.projection
        return super()._fused_channels(input_shape, channel_axis)

    def _check_float_inputs(self, inputs):
        """Refuse integer and bool inputs where a sublayer (BatchNorm, a
        1x1 convolution) would compute with them."""
        if not (self._batch_norms or any(self._projections)):
            return
        for index, x in enumerate(inputs):
            dtype = keras.backend.standardize_dtype(x.dtype)
            if self._projections and self._projections[index] is None:
                continue
            if not keras.backend.is_float_dtype(dtype):
                raise TypeError(
                    "`FusionSelector` with "
                    + (
                        "batch_norm_before_concat=True normalizes"
                        if self._batch_norms
                        else f"projection={self.projection} projects"
                    )
                    + " its inputs, which should be floating-point tensors: "
                    "cast them first (e.g. `keras.ops.cast(x, 'float32')`). "
                    f"Received: input {index} of dtype {dtype}"
                )

    # Sublayers, one concern each, in the order `call` applies them:
    # per-input BatchNorm, projection, alignment, fusion.

    def _build_batch_norms(self, input_shape):
        if not self.batch_norm_before_concat:
            return []
        batch_norms = []
        for index, shape in enumerate(input_shape):
            batch_norm = keras.layers.BatchNormalization(
                axis=self._channel_axis,
                momentum=self.batch_norm_momentum,
                epsilon=self.batch_norm_epsilon,
                synchronized=self.synchronized,
                dtype=self.dtype_policy,
                name=f"bn_{index}",
            )
            batch_norm.build(shape)
            batch_norms.append(batch_norm)
        return batch_norms

    def _build_projections(self, input_shape):
        """One 1x1 convolution per input (`None` where the input already has
        `projection` channels), or `[]` without `projection`."""
        if self.projection is None:
            return []
        rank = len(input_shape[0])
        projections = []
        for index, shape in enumerate(input_shape):
            if shape[self._channel_axis] == self.projection:
                projections.append(None)
                continue
            projection = _CONVOLUTIONS[rank](
                self.projection,
                1,
                data_format=self.data_format,
                # A fresh initializer and regularizer per convolution: an
                # unseeded initializer shared by all would draw equal
                # kernels, and shared objects tie the sublayers.
                kernel_initializer=keras.initializers.serialize(
                    self.kernel_initializer
                ),
                kernel_regularizer=keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                dtype=self.dtype_policy,
                name=f"projection_{index}",
            )
            # A 1x1 convolution maps each position on its own, so the
            # input's mask holds for its output.
            projection.supports_masking = True
            projection.build(shape)
            projections.append(projection)
        return projections

    def _build_weighted_add(self, input_shape):
        weighted_add = WeightedAdd(
            weight_per_channel=self.weight_per_channel,
            normalization=self.normalization,
            fusion_epsilon=self.fusion_epsilon,
            axis=self.axis,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name="weighted_add",
        )
        # Projected and aligned, every input has the output's shape.
        output_shape = self.compute_output_shape(input_shape)
        weighted_add.build([output_shape] * len(input_shape))
        return weighted_add

    def _normalize(self, inputs, masks, training):
        if not self._batch_norms:
            return inputs
        masked = [i for i, m in enumerate(masks) if m is not None]
        if masked and self.data_format == "channels_first":
            raise ValueError(
                "`batch_norm_before_concat=True` does not take masked "
                "inputs with data_format='channels_first': "
                "keras.layers.BatchNormalization lines a mask up with the "
                "leading axes of its input, not with the spatial axes of a "
                "channels_first input. Pass data_format='channels_last', or "
                f"inputs without masks. Received: masks for inputs {masked} "
                "with data_format='channels_first'"
            )
        return [
            batch_norm(x, training=training, mask=m)
            for batch_norm, x, m in zip(
                self._batch_norms, inputs, masks, strict=True
            )
        ]

    def _project(self, inputs):
        if not self._projections:
            return inputs
        return [
            x if projection is None else projection(x)
            for projection, x in zip(self._projections, inputs, strict=True)
        ]

    def _fuse(self, inputs):
        if self.mode == "concat":
            return ops.concatenate(inputs, axis=self._channel_axis)
        if self.mode == "add":
            # Sizes known only at run time are checked when the graph runs:
            # the sum would broadcast an input of size 1. (The weighted
            # addition's sublayer checks its inputs itself.)
            inputs = checked_equal_shapes(
                inputs,
                "fusion_selector_inputs",
                _SHAPES_DIFFER.format(
                    align=self.align,
                    remedy=""
                    if self.align
                    else " (pass align='crop' or align='pad' to fuse feature "
                    "maps of different sizes)",
                ),
            )
            output = inputs[0]
            for x in inputs[1:]:
                output = ops.add(output, x)
            return output
        # The output mask is compute_mask's, from the inputs' masks before
        # alignment; the sublayer gets none, so that it sets none.
        return self._weighted_add(inputs, mask=[None] * len(inputs))
