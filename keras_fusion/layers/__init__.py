"""The keras_fusion layers."""

from keras_fusion.layers.crop_and_concat import CropAndConcat

__all__ = ["CropAndConcat"]
