"""Step 3: the peak memory of one DenseNet-BC training step with
`recompute=False` and `recompute=True`, each in a fresh process."""

import time

from keras_fusion._tools.profiling import AllocatorStatsUnavailableError
from keras_fusion._tools.profiling import measure_in_fresh_process


def measure(settings):
    depth = settings["densenet_depth"]
    results = {}
    start = time.perf_counter()
    for recompute in (False, True):
        try:
            results[recompute] = measure_in_fresh_process(
                memory_worker,
                depth,
                recompute,
                settings["batch"],
                timeout=600,
            )
        except AllocatorStatsUnavailableError as error:
            print(f"memory step skipped: {error}", flush=True)
            return []
        print(
            f"recompute={recompute}: peak "
            f"{results[recompute]['peak_bytes'] / 2**20:.1f} MB for one "
            "training step",
            flush=True,
        )
    seconds = time.perf_counter() - start
    measured = results[False]
    print(
        f"measured with TensorFlow's allocator statistics: the "
        f"{measured['allocator']} on {measured['device']} (oneDNN "
        f"{'on' if measured['onednn'] else 'off'} in the measuring "
        "processes)"
    )
    peaks = {key: result["peak_bytes"] for key, result in results.items()}
    ratio = peaks[True] / peaks[False]
    print(f"recompute=True needs {ratio:.2f}x the memory of recompute=False")
    return [
        (
            "DenseNet-BC memory",
            "peak MB, recompute=False",
            peaks[False] / 2**20,
            seconds,
        ),
        (
            "DenseNet-BC memory",
            "peak MB, recompute=True",
            peaks[True] / 2**20,
            seconds,
        ),
        ("DenseNet-BC memory", "peak ratio True / False", ratio, seconds),
    ]


def memory_worker(depth, recompute, batch):
    """`measure_step`'s result for one training step of the DenseNet-BC;
    runs in the process `measure_in_fresh_process` starts."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fusion._tools.profiling import measure_step
    from keras_fusion.models import DenseNetBC

    keras.utils.set_random_seed(0)
    model = DenseNetBC(
        depth=depth,
        growth_rate=12,
        input_shape=(32, 32, 1),
        classes=10,
        recompute=recompute,
    )
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    x = tf.constant(np.random.default_rng(0).random((batch, 32, 32, 1)))
    x = tf.cast(x, "float32")
    y = tf.constant(np.arange(batch) % 10)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    step()
    return measure_step(step, repeats=0)
