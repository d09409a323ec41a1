"""What the steps share: the settings of a quick and a full run, the
printed step headers, the digits data set."""

import sys


def settings(quick):
    if quick:
        return {
            "quick": True,
            "unet_train": 96,
            "unet_test": 32,
            "unet_epochs": 2,
            "densenet_depth": 16,
            # Every training digit twice (94 steps): with fewer the
            # held-out accuracy is chance, 0.1, whatever the model.
            "densenet_train": 1497,
            "densenet_epochs": 2,
            "batch": 32,
        }
    return {
        "quick": False,
        "unet_train": 1200,
        "unet_test": 300,
        "unet_epochs": 5,
        "densenet_depth": 40,
        "densenet_train": 1497,
        "densenet_epochs": 6,
        "batch": 32,
    }


def fit_verbosity():
    # Keras's progress bars at a terminal; one line per epoch in a log.
    return 1 if sys.stdout.isatty() else 2


def say(step, text):
    print(f"\n[step {step}/5] {text}", flush=True)


def digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    return images, digits.target.astype("int32")


def resize(images, size):
    import keras

    return keras.ops.convert_to_numpy(
        keras.ops.image.resize(images, (size, size), interpolation="bilinear")
    )
