"""Centre cropping and zero-padding of 1D, 2D and 3D feature maps.

The functions the keras_fusion layers align their inputs with, for every
Keras backend, on eager, traced and symbolic tensors: `center_crop` and
`center_pad` to a given size, `center_crop_to` another map's size,
`crop_to_smallest` and `pad_to_largest` for a list of maps, and
`center_crop_offsets`, the one place where the offsets are computed.
"""

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
