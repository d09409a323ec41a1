"""Keras 3 layers for feature fusion: crop-and-concat skip connections,
add/concat fusion and memory-efficient DenseNet blocks."""

from keras_fusion import ops
from keras_fusion.layers import CropAndConcat
from keras_fusion.layers import FusionSelector
from keras_fusion.layers import MemoryEfficientDenseBlock
from keras_fusion.layers import TransitionBlock

__version__ = "0.1.0.dev0"

__all__ = [
    "CropAndConcat",
    "FusionSelector",
    "MemoryEfficientDenseBlock",
    "TransitionBlock",
    "ops",
    "__version__",
]
