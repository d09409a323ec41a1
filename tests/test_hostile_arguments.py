"""Arguments a hostile-input probe found accepted, or refused with a
message that was not ours: each is refused before any work is done, with
a `ValueError` or `TypeError` that names the argument, the expected form
and what was received."""

import re

import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from keras_fusion import FusionSelector
from keras_fusion import MemoryEfficientDenseBlock
from keras_fusion import Recompute
from keras_fusion import TransitionBlock
from keras_fusion import WeightedAdd
from keras_fusion.models import DenseNet
from keras_fusion.models import DenseNet121
from keras_fusion.models import UNet
from keras_fusion.models import from_keras_application
from keras_fusion.models import unet_level_sizes
from keras_fusion.ops import center_crop_offsets
from keras_fusion.ops import crop_to_smallest
from keras_fusion.ops import pad_to_largest

MAP = np.zeros((1, 4, 4, 2), "float32")
NOT_POSITIVE_FINITE = "should be a positive, finite"


@pytest.mark.parametrize(
    "call, error, match",
    [
        # Truthy values that equal True are not a recompute policy.
        (
            lambda: MemoryEfficientDenseBlock(2, 2, recompute=1),
            ValueError,
            "`recompute` should be one of.*Received: recompute=1$",
        ),
        (
            lambda: MemoryEfficientDenseBlock(2, 2, recompute=1.0),
            ValueError,
            "Received: recompute=1.0$",
        ),
        (
            lambda: MemoryEfficientDenseBlock(2, 2, recompute=np.True_),
            ValueError,
            "Received: recompute=np.True_$",
        ),
        (
            lambda: MemoryEfficientDenseBlock(2, 2, seed="abc"),
            TypeError,
            "`seed` should be None or an int. Received: seed='abc'",
        ),
        (
            lambda: MemoryEfficientDenseBlock(2, 2, seed=1.5),
            TypeError,
            "Received: seed=1.5 of type float",
        ),
        (
            lambda: MemoryEfficientDenseBlock(2, 2, seed=True),
            TypeError,
            "Received: seed=True of type bool",
        ),
        (
            lambda: WeightedAdd(fusion_epsilon=float("inf")),
            ValueError,
            f"`fusion_epsilon` {NOT_POSITIVE_FINITE}.*fusion_epsilon=inf",
        ),
        (
            lambda: FusionSelector("weighted_add", fusion_epsilon=np.inf),
            ValueError,
            f"`fusion_epsilon` {NOT_POSITIVE_FINITE}",
        ),
        (
            lambda: TransitionBlock(batch_norm_epsilon=float("inf")),
            ValueError,
            f"`batch_norm_epsilon` {NOT_POSITIVE_FINITE}",
        ),
        (
            lambda: MemoryEfficientDenseBlock(2, 2, dropout_rate=np.nan),
            ValueError,
            "`dropout_rate` should be a float in",
        ),
        (
            lambda: center_crop_offsets(5.0, 3),
            TypeError,
            "`size` should be an int.*Received: size=5.0 of type float",
        ),
        (
            lambda: center_crop_offsets(True, 0),
            TypeError,
            "Received: size=True of type bool",
        ),
        (
            lambda: center_crop_offsets(5, "3"),
            TypeError,
            "`target` should be an int",
        ),
        (
            lambda: unet_level_sizes(0),
            ValueError,
            "`size` should be a positive int. Received: size=0",
        ),
        (
            lambda: unet_level_sizes(-5),
            ValueError,
            "Received: size=-5",
        ),
        (
            lambda: unet_level_sizes(100, num_levels=0),
            ValueError,
            "`num_levels` should be a positive int",
        ),
        (
            lambda: DenseNet121(weights=None, input_shape=(32, 32, 0)),
            ValueError,
            "a positive int for the channels.*input_shape=(32, 32, 0)",
        ),
        (
            lambda: UNet(input_shape=(None, None, None)),
            ValueError,
            "a positive int for the channels.*None, None, None",
        ),
        (
            lambda: UNet(input_shape="abc"),
            ValueError,
            "`input_shape` should have 3 entries.*input_shape='abc'",
        ),
        (
            lambda: UNet(input_shape=(572.0, 572, 1)),
            ValueError,
            "positive int or None for each spatial size",
        ),
        (
            lambda: DenseNet(5),
            ValueError,
            "`blocks` should list the number of layers of the 4 dense "
            "blocks. Received: blocks=5",
        ),
        (
            lambda: from_keras_application(3),
            TypeError,
            "`model` should be a keras.applications DenseNet.*of type int",
        ),
        (
            lambda: CropAndConcat()([]),
            ValueError,
            "at least 2 inputs. Received: an empty list",
        ),
        (
            lambda: FusionSelector("add")([]),
            ValueError,
            "at least 2 inputs. Received: an empty list",
        ),
        (
            lambda: WeightedAdd()([]),
            ValueError,
            "at least 2 inputs. Received: an empty list",
        ),
        (
            lambda: pad_to_largest([MAP, None]),
            ValueError,
            "`tensors[1]` should be a 1D, 2D or 3D feature map.*shape None",
        ),
        (
            lambda: crop_to_smallest([MAP, "map"]),
            ValueError,
            "`tensors[1]` should be a 1D, 2D or 3D feature map",
        ),
        (
            lambda: FusionSelector("add", projection=3)(
                [np.ones((1, 4, 4, 2), "int32"), np.ones((1, 4, 4, 3), "int32")]
            ),
            TypeError,
            "projection=3 projects its inputs, which should be "
            "floating-point.*input 0 of dtype int32",
        ),
        (
            lambda: FusionSelector("concat", batch_norm_before_concat=True)(
                [np.ones((1, 4, 4, 2), bool), np.ones((1, 4, 4, 3), bool)]
            ),
            TypeError,
            "batch_norm_before_concat=True normalizes.*input 0 of dtype bool",
        ),
        (
            lambda: Recompute.from_config({"name": "recompute"}),
            ValueError,
            "needs the wrapped layer's config under 'layer'.*keys ['name']",
        ),
    ],
)
def test_refused_with_a_message_naming_the_argument(call, error, match):
    # `re.escape` but for `.*` and `$`: the messages hold brackets.
    pattern = ".*".join(re.escape(part) for part in match.split(".*"))
    pattern = pattern.replace(r"\$", "$") if match.endswith("$") else pattern
    with pytest.raises(error, match=f"(?s){pattern}"):
        call()


def test_fusion_selector_projection_passes_through_inputs_it_does_not_project():
    # Integer inputs that already have `projection` channels are not
    # projected, so they need no cast: only the projected ones are refused.
    fuse = FusionSelector("add", projection=2)
    with pytest.raises(TypeError, match="input 1 of dtype int32"):
        fuse([np.ones((1, 4, 4, 2), "int32"), np.ones((1, 4, 4, 3), "int32")])


def test_valid_arguments_are_kept_as_python_numbers():
    block = MemoryEfficientDenseBlock(2, 2, seed=np.int64(7))
    assert block.seed == 7 and type(block.seed) is int
    assert center_crop_offsets(np.int32(9), 4) == (2, 3)
    model = UNet(input_shape=(np.int64(18), 18, 1), num_levels=1, filters=1)
    assert model.input_shape == (None, 18, 18, 1)
    assert keras.ops.convert_to_numpy(model(np.zeros((1, 18, 18, 1)))).size
