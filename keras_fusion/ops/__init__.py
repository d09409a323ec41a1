"""Backend-agnostic functions shared by the keras_fusion layers."""

from keras_fusion.ops.cropping import center_crop
from keras_fusion.ops.cropping import center_crop_offsets
from keras_fusion.ops.cropping import center_crop_to
from keras_fusion.ops.cropping import crop_to_smallest

__all__ = [
    "center_crop",
    "center_crop_offsets",
    "center_crop_to",
    "crop_to_smallest",
]
