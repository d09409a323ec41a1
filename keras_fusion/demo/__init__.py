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

One module per step (`segmentation`, `classification`, `memory`,
`export`, `summary`); `checks` and `common` hold what they share.
"""

from keras_fusion.demo import classification
from keras_fusion.demo import export
from keras_fusion.demo import memory
from keras_fusion.demo import segmentation
from keras_fusion.demo import summary
from keras_fusion.demo.checks import check_backend
from keras_fusion.demo.checks import check_demo_dependencies
from keras_fusion.demo.checks import check_output_dir
from keras_fusion.demo.common import say
from keras_fusion.demo.common import settings as _settings


def run(output, quick=False):
    """Run every step; return the summary rows."""
    check_backend()
    output = check_output_dir(output)
    check_demo_dependencies()
    import keras

    keras.utils.set_random_seed(0)
    settings = _settings(quick)
    rows = []
    say(1, "U-Net segmentation of scikit-learn's digits")
    unet, unet_rows, test_images = segmentation.segment(output, settings)
    rows += unet_rows
    say(2, "DenseNet-BC on scikit-learn's digits, recompute=True")
    rows += classification.classify(settings)
    say(3, "peak memory of one DenseNet training step, fresh processes")
    rows += memory.measure(settings)
    say(4, "U-Net as SavedModel, LiteRT and ONNX, served without keras_fusion")
    rows += export.export(unet, test_images, output)
    summary.print_summary(rows, output)
    return rows


__all__ = [
    "check_backend",
    "check_demo_dependencies",
    "check_output_dir",
    "run",
]
