import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_fusion.models import DenseNet121
from keras_fusion.models import from_keras_application
from keras_fusion.models import pyramid_outputs
from keras_fusion.models.pyramid import pyramid_source_inputs
from tests.backend_utils import FULL_SIZE_ON_TENSORFLOW
from tests.backend_utils import to_numpy
from tests.models.encoders import hub_efficientnet

PROBE = (1, 128, 128, 3)
# Per family: the level, the layer whose output (or, with "input", whose
# input) it is, and its channels. `None`: the model's output, made by a
# layer Keras names with a counter (MobileNetV3's `activation_17`).
APPLICATIONS = {
    "ResNet50": [
        ("P1", "conv1_relu", "output", 64),
        ("P2", "conv2_block3_out", "output", 256),
        ("P3", "conv3_block4_out", "output", 512),
        ("P4", "conv4_block6_out", "output", 1024),
        ("P5", "conv5_block3_out", "output", 2048),
    ],
    "ResNet101": [
        ("P1", "conv1_relu", "output", 64),
        ("P2", "conv2_block3_out", "output", 256),
        ("P3", "conv3_block4_out", "output", 512),
        ("P4", "conv4_block23_out", "output", 1024),
        ("P5", "conv5_block3_out", "output", 2048),
    ],
    "ResNet50V2": [
        ("P1", "conv1_conv", "output", 64),
        ("P2", "conv2_block3_preact_relu", "output", 256),
        ("P3", "conv3_block4_preact_relu", "output", 512),
        ("P4", "conv4_block6_preact_relu", "output", 1024),
        ("P5", "post_relu", "output", 2048),
    ],
    "DenseNet121": [
        ("P1", "conv1_relu", "output", 64),
        ("P2", "conv2_block6_concat", "output", 256),
        ("P3", "conv3_block12_concat", "output", 512),
        ("P4", "conv4_block24_concat", "output", 1024),
        ("P5", "relu", "output", 1024),
    ],
    "EfficientNetB0": [
        ("P1", "block2a_expand_activation", "output", 96),
        ("P2", "block3a_expand_activation", "output", 144),
        ("P3", "block4a_expand_activation", "output", 240),
        ("P4", "block6a_expand_activation", "output", 672),
        ("P5", "top_activation", "output", 1280),
    ],
    "EfficientNetV2B0": [
        ("P1", "block1a_project_activation", "output", 16),
        ("P2", "block2b_add", "output", 32),
        ("P3", "block4a_expand_activation", "output", 192),
        ("P4", "block6a_expand_activation", "output", 672),
        ("P5", "top_activation", "output", 1280),
    ],
    "MobileNetV2": [
        ("P1", "block_1_expand_relu", "output", 96),
        ("P2", "block_3_expand_relu", "output", 144),
        ("P3", "block_6_expand_relu", "output", 192),
        ("P4", "block_13_expand_relu", "output", 576),
        ("P5", "out_relu", "output", 1280),
    ],
    "MobileNetV3Small": [
        ("P1", "expanded_conv_depthwise_pad", "input", 16),
        ("P2", "expanded_conv_1_depthwise_pad", "input", 72),
        ("P3", "expanded_conv_3_depthwise_pad", "input", 96),
        ("P4", "expanded_conv_8_depthwise_pad", "input", 288),
        ("P5", None, "output", 576),
    ],
    "ConvNeXtTiny": [
        ("P2", "convnext_tiny_downsampling_block_0", "input", 96),
        ("P3", "convnext_tiny_downsampling_block_1", "input", 192),
        ("P4", "convnext_tiny_downsampling_block_2", "input", 384),
        ("P5", "layer_normalization", "input", 768),
    ],
    "VGG16": [
        ("P0", "block1_conv2", "output", 64),
        ("P1", "block2_conv2", "output", 128),
        ("P2", "block3_conv3", "output", 256),
        ("P3", "block4_conv3", "output", 512),
        ("P4", "block5_conv3", "output", 512),
        ("P5", "block5_pool", "output", 512),
    ],
    "VGG19": [
        ("P0", "block1_conv2", "output", 64),
        ("P1", "block2_conv2", "output", 128),
        ("P2", "block3_conv4", "output", 256),
        ("P3", "block4_conv4", "output", 512),
        ("P4", "block5_conv4", "output", 512),
        ("P5", "block5_pool", "output", 512),
    ],
}
SLOW = {"ResNet101", "DenseNet121", "EfficientNetV2B0"}


def _application(family, **kwargs):
    kwargs = {
        "weights": None,
        "include_top": False,
        "input_shape": (None, None, 3),
        **kwargs,
    }
    return getattr(keras.applications, family)(**kwargs)


def _layer_tensor(encoder, name, where):
    if name is None:
        return encoder.output
    layer = encoder.get_layer(name)
    if where == "output":
        return layer.output
    # From the call's node: a nested model's (ConvNeXt's downsampling
    # blocks) `input` is that of its own graph.
    return layer._inbound_nodes[0].input_tensors[0]


def _sizes(levels, shape=PROBE):
    """Each level's (height, width, channels) on an input of `shape`."""
    features = keras.Model(pyramid_source_inputs(levels), list(levels.values()))
    shapes = features.compute_output_shape(shape)
    return {key: tuple(s[1:]) for key, s in zip(levels, shapes, strict=True)}


def _assert_strides(levels, shape=PROBE):
    for key, size in _sizes(levels, shape).items():
        stride = 2 ** int(key[1:])
        assert size[:2] == (shape[1] // stride, shape[2] // stride), key


# Which layers give the levels depends on the graph's names and shapes
# alone, the same on every backend; JAX and PyTorch build these models
# slowly (EfficientNetB0 takes 17 s under JAX), so the families are read
# on TensorFlow and one family on every backend.
OTHER_BACKENDS = ("ResNet50V2",)


def _family_param(name):
    marks = [pytest.mark.slow] if name in SLOW else []
    if name not in OTHER_BACKENDS:
        marks.append(
            pytest.mark.backends(
                "tensorflow",
                reason="the families are read on TensorFlow; ResNet50V2 "
                "on every backend (see OTHER_BACKENDS)",
            )
        )
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("family", [_family_param(n) for n in APPLICATIONS])
def test_keras_applications_levels(family):
    encoder = _application(family)
    levels = pyramid_outputs(encoder)
    expected = APPLICATIONS[family]
    assert list(levels) == [key for key, *_ in expected]
    for key, name, where, _ in expected:
        assert levels[key] is _layer_tensor(encoder, name, where), key
    sizes = _sizes(levels)
    assert [sizes[key][-1] for key in levels] == [c for *_, c in expected]
    _assert_strides(levels)


@pytest.fixture(scope="module")
def vgg16():
    return _application("VGG16")


def test_levels_compute_with_the_encoders_weights(vgg16):
    levels = pyramid_outputs(vgg16)
    features = keras.Model(vgg16.input, list(levels.values()))
    assert {id(w) for w in features.weights} <= {id(w) for w in vgg16.weights}
    outputs = features(np.zeros((1, 64, 64, 3), "float32"))
    sizes = [tuple(output.shape[1:3]) for output in outputs]
    assert sizes == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_static_input_sizes_are_the_probe():
    encoder = _application("VGG16", input_shape=(224, 224, 3))
    levels = pyramid_outputs(encoder)
    sizes = [levels[key].shape[1] for key in levels]
    assert sizes == [224, 112, 56, 28, 14, 7]


def test_static_input_size_not_divisible_by_the_strides():
    # 200 -> 100 -> 50 -> 25 -> 12 -> 6 after each pooling: each map is
    # within one pixel of 200 / stride, rounded down.
    encoder = _application("VGG16", input_shape=(200, 200, 3))
    levels = pyramid_outputs(encoder)
    assert list(levels) == ["P0", "P1", "P2", "P3", "P4", "P5"]
    assert [levels[key].shape[1] for key in levels] == [200, 100, 50, 25, 12, 6]


@pytest.fixture(scope="module")
def channels_first_densenet():
    return DenseNet121(
        weights=None,
        include_top=False,
        input_shape=(3, None, None),
        data_format="channels_first",
    )


def test_channels_first_keras_fusion_densenet(channels_first_densenet):
    encoder = channels_first_densenet
    levels = pyramid_outputs(encoder, data_format="channels_first")
    assert list(levels) == ["P1", "P2", "P3", "P4", "P5"]
    assert levels["P1"] is encoder.get_layer("conv1").output[1]
    blocks = {"P2": "conv2", "P3": "conv3", "P4": "conv4", "P5": "relu"}
    for key, name in blocks.items():
        assert levels[key] is encoder.get_layer(name).output, key
    sizes = _sizes(levels, (1, 3, 128, 128))
    assert [sizes[key] for key in levels] == [
        (64, 64, 64),
        (256, 32, 32),
        (512, 16, 16),
        (1024, 8, 8),
        (1024, 4, 4),
    ]


def test_pyramid_errors_if_data_format_is_not_the_encoders(
    channels_first_densenet,
):
    with pytest.raises(ValueError, match="data_format='channels_last'"):
        pyramid_outputs(channels_first_densenet, data_format="channels_last")


def _randomized(model, seed=0):
    """`model` with random weights everywhere, BatchNorm statistics
    included."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5, weight.shape)
        else:
            value = rng.normal(0.0, 0.05, weight.shape)
        weight.assign(value.astype("float32"))
    return model


@pytest.fixture(scope="module")
def keras_densenet():
    """keras.applications.DenseNet121 without top, random weights, 64x64."""
    model = keras.applications.DenseNet121(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    return _randomized(model)


@FULL_SIZE_ON_TENSORFLOW
@pytest.mark.slow
@pytest.mark.parametrize("recompute", [True, False])
def test_keras_fusion_densenet_levels_equal_keras_applications(
    keras_densenet, recompute
):
    ours = from_keras_application(keras_densenet, recompute=recompute)
    our_levels = pyramid_outputs(ours)
    their_levels = pyramid_outputs(keras_densenet)
    assert (
        list(our_levels)
        == list(their_levels)
        == [f"P{k}" for k in (1, 2, 3, 4, 5)]
    )
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3))
    images = images.astype("float32")
    mine = keras.Model(
        pyramid_source_inputs(our_levels), list(our_levels.values())
    )(images)
    reference = keras.Model(
        pyramid_source_inputs(their_levels), list(their_levels.values())
    )(images)
    for key, a, b in zip(our_levels, mine, reference, strict=True):
        b = to_numpy(b)
        scale = np.max(np.abs(b))
        np.testing.assert_allclose(
            to_numpy(a), b, rtol=0, atol=1e-5 * scale, err_msg=key
        )


def test_levels_by_hand_are_sorted_and_kept(vgg16):
    p3 = vgg16.get_layer("block4_conv3").output
    p2 = vgg16.get_layer("block3_conv3").output
    levels = pyramid_outputs({"P3": p3, "P2": p2})
    assert list(levels) == ["P2", "P3"]
    assert levels["P2"] is p2 and levels["P3"] is p3
    assert pyramid_source_inputs(levels) is vgg16.input


@pytest.fixture(scope="module")
def tensors(vgg16):
    """Tensors by name: VGG16's layers' outputs, a flattened one and one
    of another VGG16."""
    other = _application("VGG16", input_shape=(64, 64, 3))
    named = {layer.name: layer.output for layer in vgg16.layers}
    return {
        **named,
        "flatten": keras.layers.Flatten()(vgg16.output),
        "other": other.get_layer("block4_conv3").output,
    }


@pytest.mark.parametrize(
    "levels, error, match",
    [
        ({}, ValueError, "non-empty dict"),
        ({"p2": "block3_conv3"}, ValueError, r"keys are 'P<k>'"),
        ({"P": "block3_conv3"}, ValueError, r"keys are 'P<k>'"),
        ({2: "block3_conv3"}, ValueError, r"keys are 'P<k>'"),
        ({"P2": np.zeros((1, 8, 8, 3))}, TypeError, "Keras tensors"),
        ({"P5": "flatten"}, ValueError, "rank-4 feature maps"),
        ({"P3": "block3_conv3"}, ValueError, "'P3' should have stride 8"),
        ({"P2": "block3_conv3", "P3": "other"}, ValueError, "one functional"),
    ],
)
def test_pyramid_errors_if_levels_by_hand_are_wrong(
    tensors, levels, error, match
):
    levels = {
        key: tensors[value] if isinstance(value, str) else value
        for key, value in levels.items()
    }
    with pytest.raises(error, match=match) as info:
        pyramid_outputs(levels)
    assert "Received:" in str(info.value)
    assert "by hand" in str(info.value)


@pytest.mark.parametrize(
    "encoder",
    [
        "sequential",
        42,
        None,
        [],
    ],
)
def test_pyramid_errors_if_encoder_is_unknown(encoder):
    if encoder == "sequential":
        encoder = keras.Sequential(
            [
                keras.Input((None, None, 3)),
                keras.layers.Conv2D(4, 3, strides=2, name="stem"),
            ]
        )
    with pytest.raises(ValueError, match="Pass the levels by hand") as info:
        pyramid_outputs(encoder)
    assert "MobileNetV3Small" in str(info.value)
    assert "Received:" in str(info.value)


def test_pyramid_errors_if_data_format_is_unknown(vgg16):
    with pytest.raises(ValueError, match="`data_format` should be"):
        pyramid_outputs(vgg16, data_format="channels_middle")


class _Backbone:
    """What `pyramid_outputs` reads of a KerasHub FeaturePyramidBackbone."""

    def __init__(self, pyramid_outputs, name="backbone"):
        self.pyramid_outputs = pyramid_outputs
        self.name = name


def _strided_maps(strides, channels=4):
    """Feature maps after convolutions of `strides`, in order."""
    x = keras.Input((None, None, 3))
    maps = []
    for stride in strides:
        x = keras.layers.Conv2D(channels, 3, strides=stride, padding="same")(x)
        maps.append(x)
    return maps


def test_feature_pyramid_backbone_is_rekeyed_by_stride():
    # MiT's keys: "P1" for its stride-4 map.
    maps = _strided_maps([4, 2, 2, 2])
    backbone = _Backbone({f"P{k}": x for k, x in enumerate(maps, start=1)})
    levels = pyramid_outputs(backbone)
    assert list(levels) == ["P2", "P3", "P4", "P5"]
    assert all(a is b for a, b in zip(levels.values(), maps, strict=True))


@pytest.mark.parametrize(
    "strides, match",
    [([2, 1], "both of stride 2"), ([2, 3], "not at a power-of-two")],
)
def test_pyramid_errors_if_backbone_maps_are_no_pyramid(strides, match):
    maps = _strided_maps(strides)
    backbone = _Backbone({f"P{k}": x for k, x in enumerate(maps, start=1)})
    with pytest.raises(ValueError, match=match) as info:
        pyramid_outputs(backbone)
    assert "Received:" in str(info.value)


def test_importing_keras_fusion_does_not_import_keras_hub():
    # A backbone is recognized by its `pyramid_outputs`, not its class.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import keras_fusion, sys; assert 'keras_hub' not in sys.modules",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def _resnet(keras_hub):
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )


def _efficientnet(keras_hub):
    return hub_efficientnet()


def _densenet(keras_hub):
    return keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[1, 1, 1, 1], growth_rate=4
    )


def _cspnet(keras_hub):
    # CSPDarkNet-53's form: a stride-1 stem and five stride-2 stages, keyed
    # "P2" ... "P6".
    return keras_hub.models.CSPNetBackbone(
        stem_filters=8,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_depth=[1] * 5,
        stackwise_strides=2,
        stackwise_num_filters=[8] * 5,
        block_type="dark_block",
        stage_type="csp",
        expand_ratio=2.0,
        bottle_ratio=0.5,
        down_growth=True,
        stem_padding="same",
    )


def _mit(keras_hub):
    # A stride-4 patch embedding first, keyed "P1".
    return keras_hub.models.MiTBackbone(
        layerwise_depths=[1] * 4,
        num_layers=4,
        layerwise_num_heads=[1] * 4,
        layerwise_sr_ratios=[8, 4, 2, 1],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2],
        image_shape=(64, 64, 3),
        hidden_dims=[8, 8, 8, 8],
    )


def _keys(ours, theirs):
    return {f"P{k}": f"P{k + theirs - ours}" for k in range(ours, 6)}


# Per backbone: the builder, our key to theirs, each level's channels.
KERAS_HUB = {
    "ResNetBackbone": (_resnet, _keys(2, 2), [64, 8, 8, 8]),
    "EfficientNetBackbone": (_efficientnet, _keys(1, 1), [8, 8, 8, 8, 16]),
    "DenseNetBackbone": (_densenet, _keys(2, 2), [68, 38, 23, 15]),
    "CSPNetBackbone": (_cspnet, _keys(1, 2), [8, 8, 8, 8, 8]),
    "MiTBackbone": (_mit, _keys(2, 1), [8, 8, 8, 8]),
}


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


@pytest.mark.parametrize("name", list(KERAS_HUB))
def test_keras_hub_backbone_levels(keras_hub, name):
    build, keys, channels = KERAS_HUB[name]
    backbone = build(keras_hub)
    levels = pyramid_outputs(backbone)
    assert list(levels) == list(keys)
    for ours, theirs in keys.items():
        assert levels[ours] is backbone.pyramid_outputs[theirs], ours
    shape = (1, 64, 64, 3)
    sizes = _sizes(levels, shape)
    assert [sizes[key][-1] for key in levels] == channels
    _assert_strides(levels, shape)


def test_pyramid_errors_if_keras_hub_backbone_gives_tokens(keras_hub):
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14,
        num_layers=2,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        image_shape=(56, 56, 3),
        position_embedding_shape=(56, 56, 3),
    )
    with pytest.raises(ValueError, match="token") as info:
        pyramid_outputs(backbone)
    assert "'stage2': (None, 17, 8)" in str(info.value)
    assert "Pass the levels by hand" in str(info.value)
