"""`keras_fusion._tools.reference_densenet` builds what
`keras.applications` builds.

The tests and benchmarks compare keras_fusion against this plain Keras
DenseNet, so it must be `keras.applications.densenet` layer for layer:
same configuration (names, arguments, connections), same weights, same
outputs.
"""

import keras
import numpy as np
import pytest

from keras_fusion._tools import reference_densenet
from tests.backend_utils import FULL_SIZE_ON_TENSORFLOW
from tests.backend_utils import to_numpy

DENSENET121 = [6, 12, 24, 16]


def build_pair(**kwargs):
    """`keras.applications.DenseNet121` and the reference, each built after
    clearing the session, so that their unnamed layers (the input and the
    zero paddings) get the same automatic names."""
    keras.backend.clear_session()
    expected = keras.applications.DenseNet121(weights=None, **kwargs)
    keras.backend.clear_session()
    reference = reference_densenet.DenseNet(
        DENSENET121, name="densenet121", **kwargs
    )
    return expected, reference


def layer_weight_shapes(model):
    return [
        (layer.name, [tuple(w.shape) for w in layer.weights])
        for layer in model.layers
    ]


@FULL_SIZE_ON_TENSORFLOW
@pytest.mark.slow
def test_densenet121_matches_keras_applications():
    expected, reference = build_pair()
    assert reference.get_config() == expected.get_config()
    assert layer_weight_shapes(reference) == layer_weight_shapes(expected)

    rng = np.random.default_rng(0)
    for variable in expected.weights:
        # Positive moving variances, so that inference is well defined.
        if "variance" in variable.path:
            value = rng.uniform(0.5, 1.5, variable.shape)
        else:
            value = rng.normal(0, 0.1, variable.shape)
        variable.assign(value.astype("float32"))
    for layer in reference.layers:
        layer.set_weights(expected.get_layer(layer.name).get_weights())
    data = rng.random((1, 224, 224, 3), dtype="float32")
    np.testing.assert_array_equal(
        to_numpy(reference(data)), to_numpy(expected(data))
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        {"include_top": False, "pooling": "max", "input_shape": (64, 64, 3)},
        {"include_top": False, "pooling": "avg"},
        {
            "classes": 10,
            "classifier_activation": None,
            "input_shape": (96, 96, 3),
        },
    ],
    ids=["max-pooling", "avg-pooling-unknown-size", "classes"],
)
def test_head_arguments_match_keras_applications(kwargs):
    expected, reference = build_pair(**kwargs)
    assert reference.get_config() == expected.get_config()


def test_blocks_match_keras_applications_layer_names():
    inputs = keras.Input((8, 8, 16))
    x = reference_densenet.dense_block(inputs, 2, name="conv2")
    x = reference_densenet.transition_block(x, 0.5, name="pool2")
    model = keras.Model(inputs, x)
    assert [layer.name for layer in model.layers[1:]] == [
        "conv2_block1_0_bn",
        "conv2_block1_0_relu",
        "conv2_block1_1_conv",
        "conv2_block1_1_bn",
        "conv2_block1_1_relu",
        "conv2_block1_2_conv",
        "conv2_block1_concat",
        "conv2_block2_0_bn",
        "conv2_block2_0_relu",
        "conv2_block2_1_conv",
        "conv2_block2_1_bn",
        "conv2_block2_1_relu",
        "conv2_block2_2_conv",
        "conv2_block2_concat",
        "pool2_bn",
        "pool2_relu",
        "pool2_conv",
        "pool2_pool",
    ]
    assert tuple(model.output.shape) == (None, 4, 4, 40)


def test_loads_a_weights_file(tmp_path):
    model = reference_densenet.DenseNet(
        [1, 1, 1, 1], include_top=False, input_shape=(32, 32, 3)
    )
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    loaded = reference_densenet.DenseNet(
        [1, 1, 1, 1], include_top=False, input_shape=(32, 32, 3), weights=path
    )
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_errors_if_weights_is_neither_none_nor_a_file():
    with pytest.raises(ValueError, match="Received: weights='imagenet'"):
        reference_densenet.DenseNet([1, 1, 1, 1], weights="imagenet")
