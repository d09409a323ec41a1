"""The keras_fusion layers."""

# Not exported: imported so that `import keras_fusion` registers the
# builders' private layers (the DenseNet stem, the input size check),
# which `.keras` files of their models name.
from keras_fusion.layers import _densenet_stem  # noqa: F401
from keras_fusion.layers import _input_size_check  # noqa: F401
from keras_fusion.layers.bifpn import BiFPN
from keras_fusion.layers.crop_and_concat import CropAndConcat
from keras_fusion.layers.dense_block import MemoryEfficientDenseBlock
from keras_fusion.layers.feature_pyramid import FeaturePyramid
from keras_fusion.layers.fusion_selector import FusionSelector
from keras_fusion.layers.path_aggregation import PathAggregation
from keras_fusion.layers.recompute import Recompute
from keras_fusion.layers.transition_block import TransitionBlock
from keras_fusion.layers.weighted_add import WeightedAdd

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
]
