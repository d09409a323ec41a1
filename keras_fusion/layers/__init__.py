"""The keras_fusion layers."""

from keras_fusion.layers.crop_and_concat import CropAndConcat
from keras_fusion.layers.fusion_selector import FusionSelector

__all__ = [
    "CropAndConcat",
    "FusionSelector",
]
