"""Model builders made of keras_fusion layers."""

from keras_fusion.models.densenet import DenseNet
from keras_fusion.models.densenet import DenseNet121
from keras_fusion.models.densenet import DenseNet169
from keras_fusion.models.densenet import DenseNet201
from keras_fusion.models.densenet import DenseNet264
from keras_fusion.models.densenet import DenseNetBC
from keras_fusion.models.densenet_conversion import from_keras_application
from keras_fusion.models.densenet_weights import copy_keras_application_weights
from keras_fusion.models.fc_densenet import FCDenseNet
from keras_fusion.models.fc_densenet import FCDenseNet56
from keras_fusion.models.fc_densenet import FCDenseNet67
from keras_fusion.models.fc_densenet import FCDenseNet103
from keras_fusion.models.fpn import FPN
from keras_fusion.models.pyramid import pyramid_outputs
from keras_fusion.models.unet import UNet
from keras_fusion.models.unet import unet_level_sizes
from keras_fusion.models.unet_plus_plus import UNetPlusPlus

__all__ = [
    "DenseNet",
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "DenseNet264",
    "DenseNetBC",
    "FCDenseNet",
    "FCDenseNet56",
    "FCDenseNet67",
    "FCDenseNet103",
    "FPN",
    "UNet",
    "UNetPlusPlus",
    "copy_keras_application_weights",
    "from_keras_application",
    "pyramid_outputs",
    "unet_level_sizes",
]
