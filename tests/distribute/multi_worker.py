"""One worker of a `tf.distribute.MultiWorkerMirroredStrategy` run.

`test_multi_worker.py` starts two of these on 127.0.0.1 with `TF_CONFIG`
set per process; each trains the same small DenseNet-BC (synchronized
BatchNorm) for 3 steps on its own half of each global batch of 16 and
writes its losses and final weights to `<output>/worker<index>.npz`.

The steps are a custom training loop (`strategy.run`, `tf.GradientTape`,
the Keras optimizer), the documented way to train under this strategy: in
Keras 3.15 with TensorFlow 2.21 Keras's own trainer fails under it
(`fit` reduces its first batch with `strategy.reduce`, which raises
"Attempt to convert a value (PerReplica...)"; `train_on_batch` reduces
its scalar logs with `axis=0`, which raises "Invalid reduction dimension
0"). `MirroredStrategy` is not affected (`test_mirrored_strategy.py` uses
`fit`).

    python -m tests.distribute.multi_worker OUTPUT_DIR
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_fusion.models import DenseNetBC  # noqa: E402

GLOBAL_BATCH = 16


def main(output_dir):
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # Different seeds per worker: identical final weights must come from
    # the strategy (initial values broadcast, gradients all-reduced).
    keras.utils.set_random_seed(index)
    with strategy.scope():
        model = DenseNetBC(
            depth=16,
            growth_rate=4,
            input_shape=(16, 16, 3),
            classes=4,
            synchronized=True,
        )
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(reduction=None)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = cross_entropy(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=GLOBAL_BATCH
            )
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    @tf.function
    def train_step(x, y):
        losses = strategy.run(replica_step, args=(x, y))
        return strategy.reduce("SUM", losses, axis=None)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, GLOBAL_BATCH, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, (3, GLOBAL_BATCH))
    shard = slice(8 * index, 8 * (index + 1))
    losses = [
        float(train_step(x[step, shard], y[step, shard])) for step in range(3)
    ]
    np.savez(
        os.path.join(output_dir, f"worker{index}.npz"),
        *model.get_weights(),
        loss=np.array(losses),
        replicas=np.array(strategy.num_replicas_in_sync),
    )


if __name__ == "__main__":
    main(sys.argv[1])
