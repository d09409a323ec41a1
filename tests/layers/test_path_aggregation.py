"""`PathAggregation` against a NumPy PANet written from Liu et al. 2018:
`FeaturePyramid`'s pyramid, then the bottom-up path."""

import keras
import numpy as np
import pytest

from keras_fusion import FeaturePyramid
from keras_fusion import PathAggregation
from keras_fusion import Recompute
from tests.backend_utils import to_numpy
from tests.layer_test_case import EXPORT_FORMATS
from tests.layers.test_feature_pyramid import ROUNDED_DOWN
from tests.layers.test_feature_pyramid import ROUNDED_UP
from tests.layers.test_feature_pyramid import _flat_model
from tests.layers.test_feature_pyramid import _levels
from tests.layers.test_feature_pyramid import _mean_of_squares
from tests.layers.test_feature_pyramid import _sublayers
from tests.layers.test_feature_pyramid import _weights
from tests.layers.test_feature_pyramid import assert_trains_as_the_plain_neck
from tests.layers.test_feature_pyramid import numpy_conv
from tests.layers.test_feature_pyramid import numpy_feature_pyramid
from tests.layers.test_feature_pyramid import run_neck_export_test
from tests.layers.test_feature_pyramid import run_neck_layer_test


def numpy_path_aggregation(levels, weights, max_level=7, align="crop"):
    """N_min = P_min; N_{k+1} = relu(conv3x3(P_{k+1} + crop(relu(
    conv3x3_stride2(N_k))))), on the NumPy FPN's pyramid."""
    pyramid = numpy_feature_pyramid(
        levels, weights, max_level=max_level, align=align
    )
    exponents = sorted(int(k[1:]) for k in pyramid)
    outputs = {exponents[0]: pyramid[f"P{exponents[0]}"]}
    for k in exponents[1:]:
        down = numpy_conv(
            outputs[k - 1], *weights[f"downsample_n{k - 1}"], stride=2
        )
        down = np.maximum(down, 0)
        reference = pyramid[f"P{k}"]
        down = down[:, : reference.shape[1], : reference.shape[2]]
        outputs[k] = np.maximum(
            numpy_conv(reference + down, *weights[f"output_n{k}"]), 0
        )
    return {f"P{k}": v for k, v in outputs.items()}


@pytest.mark.parametrize(
    "sizes, align", [(ROUNDED_UP, "crop"), (ROUNDED_DOWN, "pad")]
)
def test_neck_matches_numpy_panet(sizes, align):
    levels = _levels(sizes)
    layer = PathAggregation(num_filters=4, align=align)
    outputs = layer(levels)
    expected = numpy_path_aggregation(levels, _weights(layer), align=align)
    assert sorted(outputs) == ["P3", "P4", "P5", "P6", "P7"]
    for key, value in expected.items():
        assert outputs[key].shape == value.shape, key
        np.testing.assert_allclose(
            to_numpy(outputs[key]), value, rtol=0, atol=1e-5, err_msg=key
        )


def test_top_down_layers_are_the_feature_pyramids():
    levels = _levels(ROUNDED_UP)
    neck = PathAggregation(num_filters=4)
    neck(levels)
    pyramid = FeaturePyramid(num_filters=4)
    pyramid(levels)
    names = {layer.name for layer in _sublayers(neck)}
    assert {layer.name for layer in _sublayers(pyramid)} < names
    assert isinstance(
        PathAggregation.from_config(neck.get_config()), PathAggregation
    )


def test_recomputed_neck_trains_as_the_plain_one():
    keras.utils.set_random_seed(0)
    kwargs = {"num_filters": 4, "batch_norm": True, "fusion": "weighted_add"}
    plain = _flat_model(PathAggregation(**kwargs))
    neck = PathAggregation(recompute=True, **kwargs)
    ours = _flat_model(neck)
    paths = [
        layer for layer in neck.network.layers if isinstance(layer, Recompute)
    ]
    assert [path.name for path in paths] == [
        "top_down_recompute",
        "bottom_up_recompute",
    ]
    assert_trains_as_the_plain_neck(ours, plain, _mean_of_squares)


def test_keras_file_round_trip(tmp_path):
    model = _flat_model(PathAggregation(num_filters=4, fusion="concat"))
    levels = list(_levels(ROUNDED_UP).values())
    expected = model.predict(levels, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(levels, verbose=0), expected)


@pytest.mark.parametrize(
    "kwargs, trainable, non_trainable",
    [
        # The FeaturePyramid's 16, then per level P4-P7 a stride-2 and an
        # output 3x3 convolution, kernel and bias: 16 more.
        ({"num_filters": 4}, 32, 0),
        # Every 3x3 convolution (5 + 8) without bias and with BatchNorm;
        # a fusion weight at P3, P4 (top-down) and P4-P7 (bottom-up).
        (
            {"num_filters": 4, "fusion": "weighted_add", "batch_norm": True},
            6 + 13 + 26 + 6,
            26,
        ),
        ({"num_filters": 4, "recompute": True}, 32, 0),
    ],
    ids=["add", "weighted_add_batch_norm", "recompute"],
)
def test_layer_checks(kwargs, trainable, non_trainable, tmp_path):
    run_neck_layer_test(
        PathAggregation, kwargs, trainable, non_trainable, tmp_path
    )


@pytest.mark.slow
@EXPORT_FORMATS
def test_export_runs_without_keras_fusion(export_format, tmp_path):
    run_neck_export_test(
        PathAggregation,
        {"num_filters": 4},
        export_format,
        tmp_path,
        atol=1e-6 if export_format == "tf_saved_model" else 1e-5,
    )


def test_missing_levels_are_named_as_by_the_feature_pyramid():
    with pytest.raises(ValueError, match=r"from P3 \(`min_level`\)"):
        PathAggregation(num_filters=4)(_levels({"P4": (19, 21)}))
