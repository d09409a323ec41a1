"""Backend-agnostic functions shared by the keras_fusion layers."""

from keras_fusion.ops.cropping import center_crop
from keras_fusion.ops.cropping import center_crop_offsets
from keras_fusion.ops.cropping import center_crop_to
from keras_fusion.ops.cropping import crop_to_smallest
from keras_fusion.ops.padding import center_pad
from keras_fusion.ops.padding import pad_to_largest

__all__ = [
    "center_crop",
    "center_crop_offsets",
    "center_crop_to",
    "center_pad",
    "crop_to_smallest",
    "pad_to_largest",
]
