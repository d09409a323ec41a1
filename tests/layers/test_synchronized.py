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
        {"mode": "concat", "batch_norm_before_concat": True},
        [(2, 6, 6, 5), (2, 6, 6, 3)],
    ),
]


@pytest.fixture
def created_batch_norms(monkeypatch):
    """Every BatchNormalization constructed during the test, in order.

    Keras has no public list of a layer's nested sublayers, so the
    constructor is observed from outside instead, which also finds
    sublayers that a layer keeps in private attributes.
    """
    created = []
    constructor = keras.layers.BatchNormalization.__init__

    def recording_constructor(self, *args, **kwargs):
        constructor(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(
        keras.layers.BatchNormalization, "__init__", recording_constructor
    )
    return created


def assert_one_per_moving_mean(batch_norms, layer):
    """Each BatchNormalization owns one moving mean: the count shows that
    none of `layer`'s was created out of sight (or left unused)."""
    moving_means = [w for w in layer.weights if w.path.endswith("moving_mean")]
    assert len(batch_norms) == len(moving_means) > 0


@pytest.mark.backends(
    "tensorflow", reason="Keras's synchronized BatchNorm is TensorFlow-only"
)
@pytest.mark.parametrize("layer_cls, kwargs, shape", LAYERS)
def test_synchronized_reaches_every_batch_normalization(
    layer_cls, kwargs, shape, created_batch_norms
):
    for synchronized in (True, False):
        created_batch_norms.clear()
        layer = layer_cls(**kwargs, synchronized=synchronized)
        layer.build(shape)
        assert_one_per_moving_mean(created_batch_norms, layer)
        assert all(
            bn.synchronized is synchronized for bn in created_batch_norms
        )
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
def test_densenet_builders_synchronize_every_batch_normalization(
    build, created_batch_norms
):
    model = build()
    assert_one_per_moving_mean(created_batch_norms, model)
    assert len(created_batch_norms) > 5
    assert all(bn.synchronized for bn in created_batch_norms)


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
