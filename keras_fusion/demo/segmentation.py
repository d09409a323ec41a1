"""Step 1: a U-Net segments the pen strokes of the digits, with
`CropAndConcat` and a `FusionSelector` on its skip connections and the
paper's mirrored borders."""

import os
import time

from keras_fusion.demo.common import digits
from keras_fusion.demo.common import fit_verbosity
from keras_fusion.demo.common import resize

# U-Net: depth 2, valid convolutions: a 92x92 input gives a 52x52 output.
UNET_INPUT = 92


UNET_OUTPUT = 52


def segmentation_data(images):
    import numpy as np

    # The pen strokes are the foreground; the input is the image with its
    # border mirrored (the U-Net paper's overlap-tile input) and noise.
    strokes = resize(images, UNET_OUTPUT)
    masks = (strokes[..., 0] > 0.3).astype("int32")
    margin = (UNET_INPUT - UNET_OUTPUT) // 2
    inputs = np.pad(
        strokes, ((0, 0), (margin, margin), (margin, margin), (0, 0)), "reflect"
    )
    noise = np.random.default_rng(0).normal(0.0, 0.15, inputs.shape)
    return (inputs + noise).astype("float32"), masks


def build_unet(filters=16):
    """A depth-2 valid-convolution U-Net: `FusionSelector` (concat with
    BatchNorm per input, cropping) on the deep skip, `CropAndConcat` on the
    shallow one."""
    import keras

    from keras_fusion import CropAndConcat
    from keras_fusion import FusionSelector

    def convs(x, width, name):
        for i in (1, 2):
            x = keras.layers.Conv2D(
                width, 3, activation="relu", name=f"{name}_conv{i}"
            )(x)
        return x

    inputs = keras.Input((UNET_INPUT, UNET_INPUT, 1))
    skip0 = convs(inputs, filters, "encoder0")
    skip1 = convs(keras.layers.MaxPooling2D()(skip0), 2 * filters, "encoder1")
    x = convs(keras.layers.MaxPooling2D()(skip1), 4 * filters, "bottleneck")
    x = keras.layers.Conv2DTranspose(2 * filters, 2, strides=2)(x)
    x = FusionSelector(
        "concat",
        batch_norm_before_concat=True,
        align="crop",
        name="decoder1_fusion",
    )([skip1, x])
    x = convs(x, 2 * filters, "decoder1")
    x = keras.layers.Conv2DTranspose(filters, 2, strides=2)(x)
    x = CropAndConcat(name="decoder0_crop_and_concat")([skip0, x])
    x = convs(x, filters, "decoder0")
    outputs = keras.layers.Conv2D(2, 1, name="logits")(x)
    return keras.Model(inputs, outputs, name="digit_unet")


def segment(output, settings):
    import keras
    import numpy as np

    images, _ = digits()
    inputs, masks = segmentation_data(images)
    n_train, n_test = settings["unet_train"], settings["unet_test"]
    train = slice(0, n_train)
    test = slice(len(images) - n_test, len(images))
    model = build_unet()
    print(
        f"U-Net: {UNET_INPUT}x{UNET_INPUT} input -> "
        f"{model.output_shape[1]}x{model.output_shape[2]} output, "
        f"{model.count_params():,} parameters; {n_train} training and "
        f"{n_test} held-out digits",
        flush=True,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        inputs[train],
        masks[train],
        batch_size=settings["batch"],
        epochs=settings["unet_epochs"],
        verbose=fit_verbosity(),
    )
    seconds = time.perf_counter() - start
    predicted = np.argmax(model.predict(inputs[test], verbose=0), axis=-1)
    truth = masks[test]
    accuracy = float(np.mean(predicted == truth))
    union = np.logical_or(predicted == 1, truth == 1).sum()
    iou = float(np.logical_and(predicted == 1, truth == 1).sum() / union)
    figure_path = os.path.join(output, "unet_predictions.png")
    plot_segmentation(inputs[test][:4], truth[:4], predicted[:4], figure_path)
    print(f"held-out pixel accuracy {accuracy:.4f}, IoU {iou:.4f}")
    rows = [
        ("U-Net segmentation", "held-out pixel accuracy", accuracy, seconds),
        ("U-Net segmentation", "held-out foreground IoU", iou, seconds),
    ]
    return model, rows, inputs[test][:8]


def plot_segmentation(inputs, masks, predictions, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    margin = (UNET_INPUT - UNET_OUTPUT) // 2
    figure, axes = plt.subplots(3, len(inputs), figsize=(2 * len(inputs), 6))
    for column in range(len(inputs)):
        panels = (
            ("input (mirrored border)", inputs[column][..., 0]),
            ("mask", masks[column]),
            ("prediction", predictions[column]),
        )
        for row, (title, image) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray")
            if row == 0:
                axis.add_patch(
                    matplotlib.patches.Rectangle(
                        (margin - 0.5, margin - 0.5),
                        UNET_OUTPUT,
                        UNET_OUTPUT,
                        fill=False,
                        edgecolor="tab:orange",
                    )
                )
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    figure.suptitle(
        "U-Net on held-out digits (orange square: the area it predicts)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
