"""The `synchronized` option on every BatchNormalization the library makes.

Its effect under `tf.distribute` is tested in `tests/distribute/`; here:
it reaches every BatchNormalization sublayer, survives `get_config`, and
bad values or backends are refused with a message naming the argument.
"""

import keras
import pytest

from keras_fusion import FusionSelector
from keras_fusion import MemoryEfficientDenseBlock
from keras_fusion import TransitionBlock
from keras_fusion.models import DenseNet
from keras_fusion.models import DenseNetBC

LAYERS = [
    (
        MemoryEfficientDenseBlock,
        {"num_layers": 2, "growth_rate": 4},
        (2, 6, 6, 5),
    ),
    (TransitionBlock, {}, (2, 6, 6, 5)),
    (
        FusionSelector,
        {"mode": "concat", "bn_before_concat": True},
        [(2, 6, 6, 5), (2, 6, 6, 3)],
    ),
]


def _batch_norms(layer):
    return [
        sublayer
        for sublayer in layer._flatten_layers(include_self=False)
        if isinstance(sublayer, keras.layers.BatchNormalization)
    ]


@pytest.mark.backends(
    "tensorflow", reason="Keras's synchronized BatchNorm is TensorFlow-only"
)
@pytest.mark.parametrize("layer_cls, kwargs, shape", LAYERS)
def test_synchronized_reaches_every_batch_normalization(
    layer_cls, kwargs, shape
):
    for synchronized in (True, False):
        layer = layer_cls(**kwargs, synchronized=synchronized)
        layer.build(shape)
        norms = _batch_norms(layer)
        assert norms
        assert all(bn.synchronized is synchronized for bn in norms)
        config = layer.get_config()
        assert config["synchronized"] is synchronized
        assert layer_cls.from_config(config).synchronized is synchronized


@pytest.mark.backends(
    "tensorflow", reason="Keras's synchronized BatchNorm is TensorFlow-only"
)
@pytest.mark.parametrize(
    "build",
    [
        lambda: DenseNetBC(depth=10, growth_rate=4, synchronized=True),
        lambda: DenseNet(
            (1, 1, 1, 1),
            weights=None,
            input_shape=(32, 32, 3),
            classes=3,
            synchronized=True,
        ),
    ],
    ids=["densenet-bc", "densenet"],
)
def test_densenet_builders_synchronize_every_batch_normalization(build):
    model = build()
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) > 5
    assert all(bn.synchronized for bn in norms)


@pytest.mark.parametrize("layer_cls, kwargs, shape", LAYERS)
def test_synchronized_errors_if_not_a_bool(layer_cls, kwargs, shape):
    with pytest.raises(
        TypeError, match="`synchronized` should be a bool.*'yes'"
    ):
        layer_cls(**kwargs, synchronized="yes")


@pytest.mark.backends(
    "jax", "torch", reason="checks the error on a backend without it"
)
@pytest.mark.parametrize("layer_cls, kwargs, shape", LAYERS)
def test_synchronized_errors_on_other_backends(layer_cls, kwargs, shape):
    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        layer_cls(**kwargs, synchronized=True)
    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        DenseNetBC(depth=10, synchronized=True)
