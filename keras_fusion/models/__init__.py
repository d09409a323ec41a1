"""Model builders made of keras_fusion layers."""

from keras_fusion.models.unet import UNet
from keras_fusion.models.unet import unet_level_sizes

__all__ = ["UNet", "unet_level_sizes"]
