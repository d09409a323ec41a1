"""Step 4: the U-Net exported as a SavedModel, a LiteRT and an ONNX file,
each served in a fresh process that never imports keras_fusion."""

import os
import time
import warnings

# The U-Net's exports: (name, what `model.export()` writes in `--output`,
# its `format=`, the runtime `serve_in_fresh_process` runs it with).
EXPORTS = (
    ("SavedModel", "unet_savedmodel", "tf_saved_model", "tf.saved_model.load"),
    ("LiteRT", "unet.tflite", "litert", "ai_edge_litert Interpreter"),
    ("ONNX", "unet.onnx", "onnx", "onnxruntime InferenceSession"),
)


# The largest |served - Keras| difference an export may have.
EXPORT_TOLERANCE = 1e-4


def export(model, images, output):
    import numpy as np

    from keras_fusion._tools.serving import serve_in_fresh_process

    # Calling the model also marks it called, which the ONNX exporter needs.
    expected = np.asarray(model(images, training=False))
    rows = []
    for name, filename, export_format, runtime in EXPORTS:
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
        if difference > EXPORT_TOLERANCE:
            raise RuntimeError(
                f"The U-Net's {name} export ({path}) predicts differently "
                f"from Keras: largest difference {difference:.3g}, more "
                f"than {EXPORT_TOLERANCE:g}"
            )
        print(
            f"{name}: {path}, {size_on_disk(path) / 2**20:.2f} MB, exported "
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


def size_on_disk(path):
    """Bytes in a file, or in every file under a directory."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, file))
        for root, _, files in os.walk(path)
        for file in files
    )
