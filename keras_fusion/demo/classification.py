"""Step 2: DenseNet-BC with `recompute=True` classifies the digits."""

import time

from keras_fusion.demo.common import digits
from keras_fusion.demo.common import fit_verbosity
from keras_fusion.demo.common import resize


def classify(settings):
    import keras
    import numpy as np

    images, labels = digits()
    images = resize(images, 32)
    order = np.random.default_rng(1).permutation(len(images))
    train, test = order[: settings["densenet_train"]], order[1497:]
    from keras_fusion.models import DenseNetBC

    # Momentum 0.9 (Torch's 0.1, as in the DenseNet paper): with Keras's
    # 0.99 the moving statistics of a few hundred steps still remember the
    # first ones, and held-out accuracy collapses.
    model = DenseNetBC(
        depth=settings["densenet_depth"],
        growth_rate=12,
        input_shape=(32, 32, 1),
        classes=10,
        recompute=True,
        batch_norm_momentum=0.9,
    )
    steps = settings["densenet_epochs"] * -(-len(train) // settings["batch"])
    print(
        f"{model.name}: {model.count_params():,} parameters; {len(train)} "
        f"training and {len(test)} held-out digits at 32x32",
        flush=True,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(3e-3, steps)
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        images[train],
        labels[train],
        batch_size=settings["batch"],
        epochs=settings["densenet_epochs"],
        verbose=fit_verbosity(),
    )
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(images[test], labels[test], verbose=0)
    print(f"held-out accuracy {accuracy:.4f}")
    return [
        ("DenseNet-BC classification", "held-out accuracy", accuracy, seconds)
    ]
