"""Small encoders of every kind the decoders take, with random weights
(nothing is downloaded): built from their constructors."""

import keras
import pytest

ANY_SIZE = (None, None, 3)


def keras_hub():
    return pytest.importorskip("keras_hub")


def resnet50():
    return keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=ANY_SIZE
    )


def mobilenet_v2():
    return keras.applications.MobileNetV2(
        alpha=0.35, include_top=False, weights=None, input_shape=ANY_SIZE
    )


def vgg16():
    return keras.applications.VGG16(
        include_top=False, weights=None, input_shape=ANY_SIZE
    )


def efficientnet_b0():
    return keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=ANY_SIZE
    )


def our_densenet121():
    from keras_fusion.models import DenseNet121

    return DenseNet121(include_top=False, weights=None, input_shape=ANY_SIZE)


def hub_resnet():
    return keras_hub().models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 16, 16, 16],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        image_shape=ANY_SIZE,
    )


def hub_densenet():
    return keras_hub().models.DenseNetBackbone(
        stackwise_num_repeats=[1, 1, 1, 1], growth_rate=8, image_shape=ANY_SIZE
    )


def hub_efficientnet():
    return keras_hub().models.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0] * 4,
        stackwise_depth_coefficients=[1.0] * 4,
        stackwise_kernel_sizes=[3] * 4,
        stackwise_num_repeats=[1] * 4,
        stackwise_input_filters=[8] * 4,
        stackwise_output_filters=[8] * 4,
        stackwise_expansion_ratios=[1, 2, 2, 2],
        stackwise_squeeze_and_excite_ratios=[0.0] * 4,
        stackwise_strides=[2, 2, 2, 2],
        stackwise_block_types=["v1"] * 4,
        stackwise_force_input_filters=[0] * 4,
        stackwise_nores_option=[False] * 4,
        num_features=16,
    )


ENCODERS = {
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "vgg16": vgg16,
    "efficientnet_b0": efficientnet_b0,
    "densenet121": our_densenet121,
    "hub_resnet": hub_resnet,
    "hub_densenet": hub_densenet,
    "hub_efficientnet": hub_efficientnet,
}
