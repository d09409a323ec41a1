"""The base of the layers that fuse a list of feature maps into one.

As `keras.layers.Concatenate` and `keras.layers.Add` share
`keras/src/layers/merging/base_merge.py`, `CropAndConcat`, `FusionSelector`
and `WeightedAdd` share `BaseFusion`: it owns the `axis` and `data_format`
arguments, the checks of the inputs' shapes (on the symbolic shapes in
`build` and again on the run-time shapes in `call`), the masks and the
output shape. A subclass says how it aligns and combines its inputs and
implements `_fuse`, its arithmetic.
"""

import keras

from keras_fusion._internal.checks import check_fusion_input_shapes
from keras_fusion._internal.checks import check_real
from keras_fusion._internal.checks import common_channel_count
from keras_fusion._internal.checks import common_spatial_shape
from keras_fusion._internal.checks import fused_output_shape
from keras_fusion._internal.checks import largest_spatial_shape
from keras_fusion._internal.checks import resolve_channel_axis
from keras_fusion._internal.checks import smallest_spatial_shape
from keras_fusion._internal.checks import standardize_data_format
from keras_fusion._internal.checks import validate_axis_argument
from keras_fusion._internal.shapes import refuse_torchscript_trace
from keras_fusion.layers._fusion_masks import check_masks
from keras_fusion.layers._fusion_masks import fuse_masks
from keras_fusion.ops.cropping import crop_to_smallest
from keras_fusion.ops.padding import pad_to_largest


def check_fusion_epsilon(fusion_epsilon):
    """Check the `fusion_epsilon` argument of the weighted addition and
    return it as a float."""
    return check_real(
        fusion_epsilon,
        "fusion_epsilon",
        "a positive, finite number",
        lambda v: v > 0,
    )


class BaseFusion(keras.layers.Layer):
    """Fuses a list of feature maps of the same rank into one.

    A subclass describes its fusion with these attributes (class attributes,
    or properties where a constructor argument decides):

    - `_alignment`: how inputs of different spatial sizes are aligned,
      `"crop"` (to the smallest), `"pad"` (to the largest) or `None` (they
      must agree; `_spatial_remedy` then says what to do in the error).
    - `_concatenates`: whether the channel counts add up (a concatenation)
      or must agree (a sum; `_channel_remedy` then says what to do in the
      error).

    and implements `_fuse(inputs)`, the arithmetic on the aligned inputs.

    Args:
        axis: the channel axis, or `None` for the channel axis of
            `data_format`.
        data_format: `"channels_last"` or `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.
    """

    _alignment = None
    _concatenates = False
    _spatial_remedy = None
    _channel_remedy = None

    def __init__(self, axis=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.axis = validate_axis_argument(axis)
        self.data_format = standardize_data_format(data_format)

    def build(self, input_shape):
        # compute_output_shape checks that the inputs can be aligned and
        # fused.
        output_shape = self.compute_output_shape(input_shape)
        self._channel_axis = resolve_channel_axis(
            self.axis, len(output_shape), self.data_format
        )

    def call(self, inputs, mask=None):
        self._check_call_inputs(inputs, mask)
        return self._fuse(self._align_inputs(inputs))

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        channel = self._check_shapes([tuple(x.shape) for x in inputs])
        masks = check_masks(inputs, mask, channel, self.__class__.__name__)
        if all(m is None for m in masks):
            return None
        if (
            not self._concatenates
            and self._alignment != "pad"
            and any(m is None for m in masks)
        ):
            # As in keras.layers.Add: an unmasked input is valid everywhere,
            # so the sum is too.
            return None
        return fuse_masks(
            inputs, masks, self._alignment, self.data_format, channel
        )

    def compute_output_shape(self, input_shape):
        rank = check_fusion_input_shapes(
            input_shape, self.data_format, self.__class__.__name__
        )
        channel = resolve_channel_axis(self.axis, rank, self.data_format)
        # Spatial sizes first: a layer that cannot align its inputs says
        # so before it complains about their channels.
        spatial = self._fused_spatial_shape(input_shape)
        return fused_output_shape(
            input_shape,
            channel,
            self._fused_channels(input_shape, channel),
            spatial,
            self.data_format,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "data_format": self.data_format})
        return config

    def _fuse(self, inputs):
        """The fusion of `inputs`, aligned: the subclass's arithmetic."""
        raise NotImplementedError

    def _fused_spatial_shape(self, input_shape):
        if self._alignment == "crop":
            return smallest_spatial_shape(input_shape, self.data_format)
        if self._alignment == "pad":
            return largest_spatial_shape(input_shape, self.data_format)
        return common_spatial_shape(
            input_shape,
            self.data_format,
            self.__class__.__name__,
            remedy=self._spatial_remedy,
        )

    def _fused_channels(self, input_shape, channel_axis):
        """The output's channel count, `None` where it is unknown."""
        if self._concatenates:
            channels = [s[channel_axis] for s in input_shape]
            return None if None in channels else sum(channels)
        return common_channel_count(
            input_shape,
            channel_axis,
            self.__class__.__name__,
            remedy=self._channel_remedy,
        )

    def _check_call_inputs(self, inputs, mask):
        """Run the checks of `call`, first of all, and return the masks as a
        list of one mask (or `None`) per input."""
        refuse_torchscript_trace(self.__class__.__name__)
        # The run-time shapes may know sizes that were None in build().
        self._check_shapes([tuple(x.shape) for x in inputs])
        return check_masks(
            inputs, mask, self._channel_axis, self.__class__.__name__
        )

    def _check_shapes(self, input_shape):
        """The checks of `compute_output_shape`, without the sizes that
        alignment gives: where the spatial sizes are symbols of a JAX export,
        JAX cannot take their minimum or maximum, and the crop or pad checks
        them itself. Returns the channel axis."""
        rank = check_fusion_input_shapes(
            input_shape, self.data_format, self.__class__.__name__
        )
        channel = resolve_channel_axis(self.axis, rank, self.data_format)
        if self._alignment is None:
            self._fused_spatial_shape(input_shape)
        if not self._concatenates:
            self._fused_channels(input_shape, channel)
        return channel

    def _align_inputs(self, inputs):
        if self._alignment == "crop":
            return crop_to_smallest(inputs, data_format=self.data_format)
        if self._alignment == "pad":
            return pad_to_largest(inputs, data_format=self.data_format)
        return inputs

    def _require_channel_counts(self, input_shape, arguments):
        """Raise unless every input's channel count is known, which
        `arguments` (the arguments that give the layer per-channel state)
        need."""
        channels = [s[self._channel_axis] for s in input_shape]
        if None in channels:
            raise ValueError(
                f"`{self.__class__.__name__}` with {arguments} needs the "
                f"channel count (axis {self._channel_axis}) of every input. "
                "Received: inputs with shapes "
                f"{[tuple(s) for s in input_shape]}"
            )

    def _tie_to_inputs(self, input_shape, channels):
        """Set an input spec of one entry per input: state that belongs to
        input i ties the layer to these inputs, so that Keras checks the
        number of inputs (and, with `channels`, their known channel counts)
        in later calls. Without it, like keras.layers.Add, the layer may be
        reused on any number of inputs."""
        self.input_spec = [
            keras.InputSpec(
                ndim=len(shape),
                axes=(
                    {self._channel_axis: shape[self._channel_axis]}
                    if channels and shape[self._channel_axis] is not None
                    else None
                ),
            )
            for shape in input_shape
        ]
