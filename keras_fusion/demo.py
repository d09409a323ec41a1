"""`keras-fusion demo`: the library end to end, on real data, on a CPU.

Steps:
  1. U-Net segmentation of handwritten digits (scikit-learn's digits,
     upsampled to 52x52, the mask being the pen strokes), with
     `CropAndConcat` and a `FusionSelector` on the skip connections and the
     paper's mirrored borders; reports held-out pixel accuracy and IoU and
     writes `unet_predictions.png`.
  2. DenseNet-BC with `MemoryEfficientDenseBlock(recompute=True)` classifying
     the same digits at 32x32; reports held-out accuracy.
  3. The peak memory of one training step of that DenseNet with
     `recompute=False` and `recompute=True`, each measured in a fresh
     process with TensorFlow's allocator statistics (oneDNN turned on
     there: on a CPU only its allocator keeps them); prints the allocator
     measured, or one line saying why the step was skipped where
     TensorFlow keeps no statistics.
  4. `model.export()` of the U-Net as a SavedModel, a LiteRT `.tflite` file
     and an ONNX file, each served in a fresh Python process by its own
     runtime (`tf.saved_model.load`, the `ai-edge-litert` interpreter, ONNX
     Runtime) that never imports keras_fusion (nor, for LiteRT and ONNX,
     TensorFlow or Keras), predictions compared with Keras's.
  5. A summary table, and where each artifact was written.
"""

import os
import sys
import time
import warnings

from keras_fusion._tools.profiling import AllocatorStatsUnavailableError
from keras_fusion._tools.profiling import measure_in_fresh_process

_INSTALL_HINT = (
    "The demo needs scikit-learn (its digits data set) and matplotlib; "
    'install them with: pip install "keras-fusion[demo]"'
)
# U-Net: depth 2, valid convolutions: a 92x92 input gives a 52x52 output.
_UNET_INPUT = 92
_UNET_OUTPUT = 52
# The U-Net's exports: (name, what `model.export()` writes in `--output`,
# its `format=`, the runtime `serve_in_fresh_process` runs it with).
_EXPORTS = (
    ("SavedModel", "unet_savedmodel", "tf_saved_model", "tf.saved_model.load"),
    ("LiteRT", "unet.tflite", "litert", "ai_edge_litert Interpreter"),
    ("ONNX", "unet.onnx", "onnx", "onnxruntime InferenceSession"),
)
# The largest |served - Keras| difference an export may have.
_EXPORT_TOLERANCE = 1e-4


def check_backend():
    """The demo needs the TensorFlow backend: it measures TensorFlow's
    allocator and exports a SavedModel."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "`keras-fusion demo` measures TensorFlow's allocator and exports "
            "a SavedModel: run it with KERAS_BACKEND=tensorflow. Received: "
            f"backend={backend!r}"
        )


def check_output_dir(path):
    """Create `path` if needed; raise `ValueError` if it cannot hold files."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"`--output` should be a directory. Received: {path!r}, which "
            "is a file"
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"`--output` should be a directory that can be created. "
            f"Received: {path!r} ({error.strerror})"
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(
            f"`--output` should be a writable directory. Received: {path!r}, "
            "which is not writable"
        )
    return os.path.abspath(path)


def check_demo_dependencies():
    """Raise `SystemExit` with the install command if an extra is missing."""
    for module in ("sklearn", "matplotlib"):
        try:
            __import__(module)
        except ImportError as error:
            raise SystemExit(
                f"{_INSTALL_HINT} (missing: {error.name})"
            ) from error


def run(output, quick=False):
    """Run every step; return the summary rows."""
    check_backend()
    output = check_output_dir(output)
    check_demo_dependencies()
    import keras

    keras.utils.set_random_seed(0)
    settings = _settings(quick)
    rows = []
    _say(1, "U-Net segmentation of scikit-learn's digits")
    unet, unet_rows, test_images = _segmentation(output, settings)
    rows += unet_rows
    _say(2, "DenseNet-BC on scikit-learn's digits, recompute=True")
    rows += _classification(settings)
    _say(3, "peak memory of one DenseNet training step, fresh processes")
    rows += _memory(settings)
    _say(4, "U-Net as SavedModel, LiteRT and ONNX, served without keras_fusion")
    rows += _export(unet, test_images, output)
    _print_summary(rows, output)
    return rows


def _settings(quick):
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


def _fit_verbosity():
    # Keras's progress bars at a terminal; one line per epoch in a log.
    return 1 if sys.stdout.isatty() else 2


def _say(step, text):
    print(f"\n[step {step}/5] {text}", flush=True)


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    return images, digits.target.astype("int32")


def _resize(images, size):
    import keras

    return keras.ops.convert_to_numpy(
        keras.ops.image.resize(images, (size, size), interpolation="bilinear")
    )


def _segmentation_data(images):
    import numpy as np

    # The pen strokes are the foreground; the input is the image with its
    # border mirrored (the U-Net paper's overlap-tile input) and noise.
    strokes = _resize(images, _UNET_OUTPUT)
    masks = (strokes[..., 0] > 0.3).astype("int32")
    margin = (_UNET_INPUT - _UNET_OUTPUT) // 2
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

    inputs = keras.Input((_UNET_INPUT, _UNET_INPUT, 1))
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


def _segmentation(output, settings):
    import keras
    import numpy as np

    images, _ = _digits()
    inputs, masks = _segmentation_data(images)
    n_train, n_test = settings["unet_train"], settings["unet_test"]
    train = slice(0, n_train)
    test = slice(len(images) - n_test, len(images))
    model = build_unet()
    print(
        f"U-Net: {_UNET_INPUT}x{_UNET_INPUT} input -> "
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
        verbose=_fit_verbosity(),
    )
    seconds = time.perf_counter() - start
    predicted = np.argmax(model.predict(inputs[test], verbose=0), axis=-1)
    truth = masks[test]
    accuracy = float(np.mean(predicted == truth))
    union = np.logical_or(predicted == 1, truth == 1).sum()
    iou = float(np.logical_and(predicted == 1, truth == 1).sum() / union)
    figure_path = os.path.join(output, "unet_predictions.png")
    _plot_segmentation(inputs[test][:4], truth[:4], predicted[:4], figure_path)
    print(f"held-out pixel accuracy {accuracy:.4f}, IoU {iou:.4f}")
    rows = [
        ("U-Net segmentation", "held-out pixel accuracy", accuracy, seconds),
        ("U-Net segmentation", "held-out foreground IoU", iou, seconds),
    ]
    return model, rows, inputs[test][:8]


def _plot_segmentation(inputs, masks, predictions, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    margin = (_UNET_INPUT - _UNET_OUTPUT) // 2
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
                        _UNET_OUTPUT,
                        _UNET_OUTPUT,
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


def _classification(settings):
    import keras
    import numpy as np

    images, labels = _digits()
    images = _resize(images, 32)
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
        verbose=_fit_verbosity(),
    )
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(images[test], labels[test], verbose=0)
    print(f"held-out accuracy {accuracy:.4f}")
    return [
        ("DenseNet-BC classification", "held-out accuracy", accuracy, seconds)
    ]


def _memory(settings):
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


def _export(model, images, output):
    import numpy as np

    from keras_fusion._tools.serving import serve_in_fresh_process

    # Calling the model also marks it called, which the ONNX exporter needs.
    expected = np.asarray(model(images, training=False))
    rows = []
    for name, filename, export_format, runtime in _EXPORTS:
        path = os.path.join(output, filename)
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Keras's tf2onnx patch asks NumPy for `np.object`, and NumPy
            # warns about that name; nothing the demo's user can act on.
            warnings.filterwarnings(
                "ignore",
                category=FutureWarning,
                module="keras.src.export.tf2onnx_lib",
            )
            model.export(path, format=export_format, verbose=False)
        exported = time.perf_counter()
        served = serve_in_fresh_process(path, images)
        finished = time.perf_counter()
        difference = float(np.max(np.abs(served - expected)))
        if difference > _EXPORT_TOLERANCE:
            raise RuntimeError(
                f"The U-Net's {name} export ({path}) predicts differently "
                f"from Keras: largest difference {difference:.3g}, more "
                f"than {_EXPORT_TOLERANCE:g}"
            )
        print(
            f"{name}: {path}, {_size_on_disk(path) / 2**20:.2f} MB, exported "
            f"in {exported - start:.1f} s; {len(images)} images served by "
            f"{runtime} (fresh process, no keras_fusion) in "
            f"{finished - exported:.1f} s; largest difference "
            f"{difference:.2g}",
            flush=True,
        )
        rows.append(
            (
                f"U-Net {name}",
                "max |served - Keras|",
                difference,
                finished - start,
            )
        )
    return rows


def _size_on_disk(path):
    """Bytes in a file, or in every file under a directory."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, file))
        for root, _, files in os.walk(path)
        for file in files
    )


def _print_summary(rows, output):
    print("\nSummary")
    header = ("task", "metric", "value", "time s")
    table = [
        (task, metric, f"{value:.4g}", f"{seconds:.1f}")
        for task, metric, value, seconds in rows
    ]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(4)]
    for row in [header, *table]:
        print(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        )
    print("\nArtifacts")
    print(f"  {os.path.join(output, 'unet_predictions.png')}")
    for _, filename, _, _ in _EXPORTS:
        print(f"  {os.path.join(output, filename)}")
