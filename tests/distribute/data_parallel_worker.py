"""Training runs under `keras.distribution.DataParallel` on JAX, in a fresh
process with two host (CPU) devices.

XLA's host device count can only be set before JAX starts, so
`test_data_parallel.py` runs this module with `python -m` and reads the
JSON it prints: for each model, the loss of each of 3 training steps
(global batch 8) on one device and on two, the BatchNorm moving statistics
and the weights after them, and the shape of the batch each device
receives in the training step.

    python -m tests.distribute.data_parallel_worker
"""

import json
import os

if __name__ == "__main__":
    # Only when run, not when pytest's doctest collector imports it.
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ.get("XLA_FLAGS", ""),
            "--xla_force_host_platform_device_count=2",
        ]
    ).strip()

import jax  # noqa: E402
import keras  # noqa: E402

from keras_fusion import MemoryEfficientDenseBlock  # noqa: E402
from keras_fusion import Recompute  # noqa: E402
from keras_fusion.models import DenseNetBC  # noqa: E402
from tests.distribute.training_runs import CLASSES  # noqa: E402
from tests.distribute.training_runs import fit_and_record  # noqa: E402
from tests.distribute.training_runs import head  # noqa: E402

# The per-device shape of each batch that enters a model's training step,
# recorded while XLA partitions the step (see `BatchShardShape`).
SHARD_SHAPES = []


class BatchShardShape(keras.layers.Layer):
    """The identity, recording the shape of the part of its input that
    each device holds in the compiled step."""

    def call(self, inputs):
        jax.debug.inspect_array_sharding(
            inputs,
            callback=lambda sharding: SHARD_SHAPES.append(
                sharding.shard_shape(inputs.shape)
            ),
        )
        return inputs


def _dense_block_model():
    inputs = keras.Input((8, 8, 6))
    x = BatchShardShape(name="shard_shape")(inputs)
    x = MemoryEfficientDenseBlock(3, 4, dropout_rate=0.2, seed=1, name="block")(
        x
    )
    return keras.Model(inputs, head(x))


def _recompute_model():
    # A dense block and a Keras BatchNormalization in one recomputed level.
    level = keras.Sequential(
        [
            keras.Input((8, 8, 6)),
            MemoryEfficientDenseBlock(2, 4, recompute=False, name="block"),
            keras.layers.Conv2D(5, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
        ],
        name="level",
    )
    inputs = keras.Input((8, 8, 6))
    x = Recompute(level, name="recompute")(inputs)
    return keras.Model(inputs, head(x))


MODELS = {
    "dense_block": (_dense_block_model, (8, 8, 6)),
    "recompute": (_recompute_model, (8, 8, 6)),
    "densenet_bc": (
        lambda: DenseNetBC(
            depth=16,
            growth_rate=4,
            input_shape=(16, 16, 3),
            classes=CLASSES,
            recompute=True,
        ),
        (16, 16, 3),
    ),
}


def _train(name, initial_weights):
    build, shape = MODELS[name]
    model = build()
    model.set_weights(initial_weights)
    model.compile(
        optimizer=keras.optimizers.SGD(0.001),
        loss="sparse_categorical_crossentropy",
    )
    del SHARD_SHAPES[:]
    run = fit_and_record(model, shape)
    return {**run, "shard_shapes": [list(s) for s in SHARD_SHAPES]}


def main():
    devices = jax.devices("cpu")
    results = {"devices": len(devices)}
    for name, (build, _) in MODELS.items():
        keras.utils.set_random_seed(0)
        initial = build().get_weights()
        keras.utils.set_random_seed(1)
        results[f"{name}/1"] = _train(name, initial)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        try:
            keras.utils.set_random_seed(1)
            results[f"{name}/2"] = _train(name, initial)
        finally:
            keras.distribution.set_distribution(None)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
