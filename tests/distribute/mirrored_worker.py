"""Training runs under `tf.distribute.MirroredStrategy`, in a fresh process.

Two logical CPU devices can only be configured before TensorFlow starts, so
`test_mirrored_strategy.py` runs this module with `python -m` and reads the
JSON it prints: for each model and setting, the loss of each of 3 training
steps (global batch 8), the BatchNorm moving statistics and the weights
after them.

    python -m tests.distribute.mirrored_worker
"""

import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_fusion import FusionSelector  # noqa: E402
from keras_fusion import MemoryEfficientDenseBlock  # noqa: E402
from keras_fusion import Recompute  # noqa: E402
from keras_fusion.models import DenseNet  # noqa: E402
from keras_fusion.models import DenseNetBC  # noqa: E402
from tests.distribute.training_runs import CLASSES  # noqa: E402
from tests.distribute.training_runs import fit_and_record  # noqa: E402
from tests.distribute.training_runs import head  # noqa: E402


def _dense_block_model(synchronized, recompute):
    inputs = keras.Input((8, 8, 6))
    x = MemoryEfficientDenseBlock(
        3, 4, recompute=recompute, synchronized=synchronized, name="block"
    )(inputs)
    return keras.Model(inputs, head(x))


def _fusion_selector_model(synchronized):
    inputs = keras.Input((8, 8, 6))
    a = keras.layers.Conv2D(5, 3, padding="same")(inputs)
    b = keras.layers.Conv2D(3, 1)(inputs)
    x = FusionSelector(
        mode="concat",
        batch_norm_before_concat=True,
        synchronized=synchronized,
        name="fusion",
    )([a, b])
    return keras.Model(inputs, head(x))


def _recompute_model(synchronized):
    # A level such as a U-Net's, recomputed: Keras's own synchronized
    # BatchNormalization inside `Recompute`.
    level = keras.Sequential(
        [
            keras.Input((8, 8, 6)),
            keras.layers.Conv2D(5, 3, padding="same", use_bias=False),
            # Named: the runs' moving statistics are compared by path.
            keras.layers.BatchNormalization(
                synchronized=synchronized, name="bn"
            ),
            keras.layers.ReLU(),
        ],
        name="level",
    )
    inputs = keras.Input((8, 8, 6))
    x = Recompute(level, name="recompute")(inputs)
    return keras.Model(inputs, head(x))


MODELS = {
    "dense_block_full": (
        lambda s: _dense_block_model(s, "full"),
        (8, 8, 6),
    ),
    "dense_block_concat_bn": (
        lambda s: _dense_block_model(s, "concat_bn"),
        (8, 8, 6),
    ),
    "fusion_selector": (_fusion_selector_model, (8, 8, 6)),
    "recompute": (_recompute_model, (8, 8, 6)),
    "densenet": (
        lambda s: DenseNet(
            (1, 2, 1, 1),
            growth_rate=8,
            weights=None,
            input_shape=(32, 32, 3),
            classes=CLASSES,
            synchronized=s,
        ),
        (32, 32, 3),
    ),
    "densenet_bc": (
        lambda s: DenseNetBC(
            depth=16,
            growth_rate=4,
            input_shape=(16, 16, 3),
            classes=CLASSES,
            synchronized=s,
        ),
        (16, 16, 3),
    ),
}


# Also trained without `synchronized`, to show that it matters (one model per
# layer that creates BatchNormalizations).
UNSYNCHRONIZED = (
    "dense_block_full",
    "fusion_selector",
    "recompute",
    "densenet_bc",
)


def _train(name, synchronized, strategy, initial_weights):
    build, shape = MODELS[name]
    with strategy.scope():
        model = build(synchronized)
        model.set_weights(initial_weights)
        # A small step: the synchronized and the one-device BatchNorm
        # statistics differ in float32 rounding, which every step feeds
        # back into the weights. At 0.01, DenseNet-BC's first kernel ended
        # 20x the tolerance apart after 3 steps, the same with plain Keras
        # layers (recompute=False), once its kernels were no longer all
        # equal; at 0.001 the worst weight is 0.2x the tolerance.
        model.compile(
            optimizer=keras.optimizers.SGD(0.001),
            loss="sparse_categorical_crossentropy",
        )
    return fit_and_record(model, shape)


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    results = {"replicas": two.num_replicas_in_sync}
    for name, (build, _) in MODELS.items():
        keras.utils.set_random_seed(0)
        initial = build(False).get_weights()
        results[f"{name}/2/True"] = _train(name, True, two, initial)
        if name in UNSYNCHRONIZED:
            results[f"{name}/2/False"] = _train(name, False, two, initial)
        results[f"{name}/1"] = _train(name, False, one, initial)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
