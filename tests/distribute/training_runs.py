"""What the distributed-training workers share: the data, the head, one
recorded `fit`, and running a worker in a fresh process.

A worker (`mirrored_worker.py`, `data_parallel_worker.py`) trains each
model for `STEPS` steps of `GLOBAL_BATCH` images on one device and on two,
from the same initial weights, and prints one JSON line of `fit_and_record`
results, which the tests read through `run_worker_module`.
"""

import json
import os
import subprocess
import sys

import numpy as np

GLOBAL_BATCH = 8
STEPS = 3
CLASSES = 4
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def head(x):
    """Global average pooling and a softmax classifier."""
    import keras

    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(CLASSES, activation="softmax")(x)


def data(shape):
    """`STEPS` batches of images of `shape` and their labels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((GLOBAL_BATCH * STEPS, *shape)).astype("float32")
    # The two devices' halves of each batch have different means, so that
    # per-device BatchNorm statistics differ from the global batch's.
    for start in range(0, len(x), GLOBAL_BATCH):
        x[start : start + GLOBAL_BATCH // 2] += 1.5
    y = rng.integers(0, CLASSES, len(x))
    return x, y


def fit_and_record(model, shape):
    """`fit` a compiled model for one epoch of `data(shape)`, unshuffled;
    each step's loss, the BatchNorm moving statistics (by path) and the
    weights after it, as JSON-ready lists."""
    import keras

    x, y = data(shape)
    running_means = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: running_means.append(
            float(logs["loss"])
        )
    )
    model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH,
        shuffle=False,
        callbacks=[record],
        verbose=0,
    )
    # The logs hold the epoch's running mean; step k's own loss is
    # k * mean_k - (k - 1) * mean_(k-1).
    losses = [
        (k + 1) * mean - k * (running_means[k - 1] if k else 0.0)
        for k, mean in enumerate(running_means)
    ]
    moving = {
        v.path: np.asarray(v).tolist()
        for v in model.non_trainable_variables
        if "moving" in v.path
    }
    weights = [np.asarray(w).tolist() for w in model.get_weights()]
    return {"losses": losses, "moving": moving, "weights": weights}


def run_worker_module(module, backend):
    """Run `python -m <module>` under `backend`; the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.splitlines()[-1])


def moving_statistics(run):
    """A run's moving statistics as arrays, by path."""
    return {path: np.array(value) for path, value in run["moving"].items()}
