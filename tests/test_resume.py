"""`keras.callbacks.BackupAndRestore` around `fit` of recomputing models.

A `fit` interrupted after its first epoch (a callback raises) and resumed
in a freshly built model from the backup ends its second epoch where an
uninterrupted `fit` ends it: weights, BatchNorm moving statistics, dropout
seed states and the optimizer's variables agree to 1e-6.

The backup is `model.save_weights`, in which Keras keeps no dropout seed
state (keras-team/keras#19796): the keras_fusion layers that hold dropout
(`MemoryEfficientDenseBlock`, `Recompute`) store the seed states of the
layers inside them, so that the resumed epoch draws new masks rather than
the first epoch's again.
"""

import keras
import pytest

from keras_fusion import Recompute
from keras_fusion.models import DenseNetBC
from keras_fusion.models import UNet
from tests.backend_utils import assert_same_variables
from tests.layer_test_case import make_inputs

# Four samples in batches of two: two steps per epoch.
SAMPLES = 4
BATCH_SIZE = 2


def _densenet_bc():
    # One bottleneck layer per dense block, two transitions.
    return DenseNetBC(
        depth=10,
        growth_rate=2,
        input_shape=(8, 8, 3),
        dropout_rate=0.2,
        recompute=True,
    )


def _unet():
    # One level: 20x20 inputs give 4x4 outputs.
    return UNet(
        input_shape=(20, 20, 1),
        num_levels=1,
        filters=2,
        batch_norm=True,
        dropout_rate=0.2,
        recompute=True,
    )


def _recomputed_block():
    block = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            keras.layers.Conv2D(4, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.2),
        ]
    )
    inputs = keras.Input((8, 8, 4))
    return keras.Model(inputs, Recompute(block)(inputs))


class _InterruptedError(Exception):
    """What interrupts the first `fit`."""


class _InterruptAfterFirstEpoch(keras.callbacks.Callback):
    """Raises `_InterruptedError` at the end of the first epoch, once a
    `BackupAndRestore` listed before it has backed the epoch up."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise _InterruptedError


def _seed_states(model):
    """The state variables of the model's `SeedGenerator`s."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _compiled(build):
    """The model `build` returns, from the same seed every time, compiled
    with an optimizer that has state of its own (momentum)."""
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def _fit(model, callbacks=()):
    x = make_inputs((SAMPLES, *model.input_shape[1:]), seed=1)
    y = make_inputs((SAMPLES, *model.output_shape[1:]), seed=2)
    return model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=2,
        shuffle=False,
        callbacks=list(callbacks),
        verbose=0,
    )


def _state(model):
    return model.variables + model.optimizer.variables


def _uninterrupted_and_resumed(build, backup_dir):
    """Two models after two epochs of `fit`: one never interrupted, one
    built afresh after an interruption at the end of the first epoch and
    resumed by `BackupAndRestore`."""
    uninterrupted = _compiled(build)
    _fit(uninterrupted)

    with pytest.raises(_InterruptedError):
        _fit(
            _compiled(build),
            [
                keras.callbacks.BackupAndRestore(backup_dir),
                _InterruptAfterFirstEpoch(),
            ],
        )

    resumed = _compiled(build)
    history = _fit(resumed, [keras.callbacks.BackupAndRestore(backup_dir)])
    assert len(history.history["loss"]) == 1, "not resumed at epoch 2"
    return uninterrupted, resumed


@pytest.mark.backends(
    "tensorflow",
    "jax",
    reason="unseeded dropout under PyTorch draws from torch's global "
    "generator, whose state no weights file holds",
)
@pytest.mark.slow
@pytest.mark.parametrize(
    "build",
    [_densenet_bc, _unet, _recomputed_block],
    ids=["densenet-bc", "unet", "recompute"],
)
def test_resumed_fit_ends_where_the_uninterrupted_fit_ends(build, tmp_path):
    uninterrupted, resumed = _uninterrupted_and_resumed(build, tmp_path)
    assert _seed_states(resumed)
    assert_same_variables(_state(resumed), _state(uninterrupted))
