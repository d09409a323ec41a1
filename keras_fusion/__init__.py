"""Keras 3 layers for feature fusion: crop-and-concat skip connections,
add/concat/weighted-add fusion and memory-efficient DenseNet blocks."""

from keras_fusion._start_up import quiet_tensorflow_start_up as _quiet_start_up

# Before Keras is imported: the `keras-fusion` command imports this package
# first, and TensorFlow logs while it is imported (a no-op in other
# programs).
_quiet_start_up()

from keras_fusion import ops  # noqa: E402
from keras_fusion.layers import BiFPN  # noqa: E402
from keras_fusion.layers import CropAndConcat  # noqa: E402
from keras_fusion.layers import FeaturePyramid  # noqa: E402
from keras_fusion.layers import FusionSelector  # noqa: E402
from keras_fusion.layers import MemoryEfficientDenseBlock  # noqa: E402
from keras_fusion.layers import PathAggregation  # noqa: E402
from keras_fusion.layers import Recompute  # noqa: E402
from keras_fusion.layers import TransitionBlock  # noqa: E402
from keras_fusion.layers import WeightedAdd  # noqa: E402

__version__ = "0.1.0.dev0"

__all__ = [
    "BiFPN",
    "CropAndConcat",
    "FeaturePyramid",
    "FusionSelector",
    "MemoryEfficientDenseBlock",
    "PathAggregation",
    "Recompute",
    "TransitionBlock",
    "WeightedAdd",
    "ops",
    "__version__",
]
