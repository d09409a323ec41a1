"""`BiFPN` against a NumPy BiFPN written from EfficientDet (Tan, Pang, Le
2020) and google/automl's `fuse_features`, with its parameters counted
by hand."""

import keras
import numpy as np
import pytest

from keras_fusion import BiFPN
from keras_fusion import Recompute
from tests.backend_utils import BACKEND
from tests.backend_utils import run_with_jax_x64
from tests.backend_utils import to_numpy
from tests.layer_test_case import EXPORT_FORMATS
from tests.layers.test_feature_pyramid import ROUNDED_DOWN
from tests.layers.test_feature_pyramid import ROUNDED_UP
from tests.layers.test_feature_pyramid import _flat_model
from tests.layers.test_feature_pyramid import _levels
from tests.layers.test_feature_pyramid import assert_trains_as_the_plain_neck
from tests.layers.test_feature_pyramid import numpy_align
from tests.layers.test_feature_pyramid import numpy_conv
from tests.layers.test_feature_pyramid import run_neck_export_test
from tests.layers.test_feature_pyramid import run_neck_layer_test
from tests.layers.test_weighted_add import numpy_weighted_add

BACKBONE = {"P3": 5, "P4": 6, "P5": 7}


def bifpn_parameters(channels, filters, repeats, weight_per_channel=False):
    """BiFPN's parameters for levels P3-P7 on backbone levels P3-P5 with
    `channels`, BatchNorm's four vectors included."""
    conv_bn = 4 * filters  # BatchNorm's 4 vectors; no bias before it
    # P6 from P5: a 1x1 convolution and BatchNorm (P7 is pooled).
    count = channels[-1] * filters + conv_bn
    # The first cell's backbone inputs, each use resampled: P3 once (its
    # top-down node), P4 and P5 twice (top-down and bottom-up nodes).
    c3, c4, c5 = channels
    count += sum(c * filters + conv_bn for c in (c3, c4, c4, c5, c5))
    # Per cell: 4 top-down nodes of 2 inputs, bottom-up nodes of 3 (P4,
    # P5, P6) and 2 (P7); each a separable 3x3 (depthwise 9W, pointwise
    # W*W, no bias) and BatchNorm (4W).
    inputs = 4 * 2 + 3 * 3 + 2
    weights = inputs * (filters if weight_per_channel else 1)
    node = 9 * filters + filters * filters + 4 * filters
    return count + repeats * (weights + 8 * node)


@pytest.mark.parametrize(
    "kwargs, filters, repeats",
    [
        ({"num_filters": 8, "num_repeats": 2}, 8, 2),
        ({"num_filters": 8, "weight_per_channel": True}, 8, 3),
    ],
)
def test_parameter_count_is_the_cells_by_hand(kwargs, filters, repeats):
    neck = BiFPN(**kwargs)
    neck(_levels(ROUNDED_UP, channels=BACKBONE))
    expected = bifpn_parameters(
        list(BACKBONE.values()),
        filters,
        repeats,
        kwargs.get("weight_per_channel", False),
    )
    assert neck.count_params() == expected


@pytest.mark.parametrize(
    "variant, filters, repeats",
    [("d0", 64, 3), ("D3", 160, 6), ("d7", 384, 8)],
)
def test_efficientdet_variants_have_the_papers_width_and_depth(
    variant, filters, repeats
):
    neck = BiFPN.efficientdet(variant)
    assert (neck.num_filters, neck.num_repeats) == (filters, repeats)


def numpy_separable_conv(x, depthwise, pointwise):
    channels = x.shape[-1]
    depth = np.stack(
        [
            numpy_conv(
                x[..., c : c + 1], depthwise[:, :, c : c + 1, :], np.zeros(1)
            )[..., 0]
            for c in range(channels)
        ],
        axis=-1,
    )
    return np.einsum("nhwc,cf->nhwf", depth, pointwise[0, 0])


def numpy_max_pool(x):
    """3x3, stride 2, "same": Keras's padding, -inf outside."""
    height, width = x.shape[1:3]
    out_h, out_w = -(-height // 2), -(-width // 2)
    pad_h = max((out_h - 1) * 2 + 3 - height, 0)
    pad_w = max((out_w - 1) * 2 + 3 - width, 0)
    x = np.pad(
        x,
        (
            (0, 0),
            (pad_h // 2, pad_h - pad_h // 2),
            (pad_w // 2, pad_w - pad_w // 2),
            (0, 0),
        ),
        constant_values=-np.inf,
    )
    windows = [
        x[:, i : i + 2 * out_h : 2, j : j + 2 * out_w : 2]
        for i in range(3)
        for j in range(3)
    ]
    return np.max(windows, axis=0)


def numpy_batch_norm(x, gamma, beta, mean, variance, epsilon):
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def numpy_bifpn(levels, weights, repeats, filters, epsilon, align="crop"):
    """EfficientDet's BiFPN at inference, P3-P7 from P3-P5."""

    def resample(x, name):
        if x.shape[-1] == filters:
            return x
        x = numpy_conv(x, *weights[f"{name}_conv"], np.zeros(filters))
        return numpy_batch_norm(x, *weights[f"{name}_bn"], epsilon)

    def combine(maps, name):
        x = numpy_weighted_add(maps, weights[f"fusion_{name}"][0])
        x = x / (1 + np.exp(-x))  # swish
        x = numpy_separable_conv(x, *weights[f"{name}_conv"])
        return numpy_batch_norm(x, *weights[f"{name}_bn"], epsilon)

    nodes = {int(k[1:]): v.astype("float64") for k, v in levels.items()}
    nodes[6] = numpy_max_pool(resample(nodes[5], "p6_input"))
    nodes[7] = numpy_max_pool(nodes[6])
    for r in range(repeats):
        cell = f"cell{r}"
        td = {7: nodes[7]}
        for k in (6, 5, 4, 3):
            lateral = resample(nodes[k], f"{cell}_p{k}_td_input")
            up = resample(td[k + 1], f"{cell}_p{k + 1}_up_input")
            up = up.repeat(2, axis=1).repeat(2, axis=2)
            # P6 and P7 come from "same" pooling: they round up.
            method = align if k + 1 <= 5 else "crop"
            up = numpy_align(up, lateral.shape[1:3], method)
            td[k] = combine([lateral, up], f"{cell}_p{k}_td")
        out = {3: td[3]}
        for k in (4, 5, 6, 7):
            maps = [resample(nodes[k], f"{cell}_p{k}_out_input")]
            if k != 7:
                maps.append(td[k])
            down = numpy_max_pool(out[k - 1])
            maps.append(numpy_align(down, maps[0].shape[1:3], "crop"))
            out[k] = combine(maps, f"{cell}_p{k}_out")
        nodes = out
    return {f"P{k}": v for k, v in nodes.items()}


def _all_weights(neck):
    """Every sublayer's weights by the name the NumPy BiFPN uses: a
    fusion's by `fusion_...` (its `WeightedAdd`'s), a convolution's and a
    BatchNorm's by their own."""
    found = {}
    layers = list(neck.network.layers)
    while layers:
        layer = layers.pop()
        if isinstance(layer, keras.Model):
            layers.extend(layer.layers)
        elif isinstance(layer, Recompute):
            layers.append(layer.layer)
        elif layer.weights:
            found[layer.name] = [
                to_numpy(w).astype("float64") for w in layer.weights
            ]
    return found


@pytest.mark.parametrize(
    "sizes, align", [(ROUNDED_UP, "crop"), (ROUNDED_DOWN, "pad")]
)
def test_neck_matches_numpy_bifpn(sizes, align):
    levels = _levels(sizes, channels=BACKBONE)
    neck = BiFPN(num_filters=4, num_repeats=2, align=align)
    neck(levels)
    # Moving statistics away from 0 and 1, fusion weights away from 1,
    # so that BatchNorm and the fusion's normalization both show.
    rng = np.random.default_rng(3)
    for variable in neck.weights:
        value = rng.uniform(0.5, 1.5, variable.shape)
        if "moving_mean" in variable.path or "beta" in variable.path:
            value = value - 1.0
        if "kernel" in variable.path:
            value = rng.normal(0, 0.3, variable.shape)
        variable.assign(value.astype("float32"))
    outputs = neck(levels, training=False)
    expected = numpy_bifpn(
        levels, _all_weights(neck), 2, 4, neck.batch_norm_epsilon, align
    )
    for key, value in expected.items():
        assert outputs[key].shape == value.shape, key
        np.testing.assert_allclose(
            to_numpy(outputs[key]), value, rtol=0, atol=1e-5, err_msg=key
        )


@pytest.fixture
def in_float64():
    """Build and run the test's models in float64. Recomputation is
    exact, but in float32 two cells of BatchNorm over a batch of 2 sum in
    orders that differ by up to 4e-5 of a gradient's scale between the
    plain and the recompiled (JAX's remat) step; float64 shows the
    arithmetic, not the rounding."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def test_each_cell_is_recomputed_and_trains_as_the_plain_neck(
    in_float64, request
):
    if BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            # JAX computes float64 only with x64 set before it starts.
            run_with_jax_x64(request)
            return
    repeats = 2
    keras.utils.set_random_seed(0)
    plain = _flat_model(BiFPN(num_filters=4, num_repeats=repeats))
    neck = BiFPN(num_filters=4, num_repeats=repeats, recompute=True)
    ours = _flat_model(neck)
    cells = [
        layer for layer in neck.network.layers if isinstance(layer, Recompute)
    ]
    assert [cell.name for cell in cells] == [
        f"cell{r}_recompute" for r in range(repeats)
    ]
    # The suite's y * sin(y) loss: each level ends in BatchNorm, so its
    # outputs are O(1), and a mean of squares would be constant in the
    # inputs (BatchNorm normalizes it away). It sums every pixel of five
    # levels: its gradients reach 1e6, and a larger step would send the
    # weights far off within 3 steps.
    assert_trains_as_the_plain_neck(ours, plain, learning_rate=1e-4)


def test_keras_file_round_trip(tmp_path):
    neck = BiFPN(num_filters=4, num_repeats=2, normalization="softmax")
    model = _flat_model(neck)
    levels = list(_levels(ROUNDED_UP).values())
    expected = model.predict(levels, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(levels, verbose=0), expected)
    config = neck.get_config()
    assert BiFPN.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs, trainable, non_trainable",
    [
        # P6 from P5 (7 channels): a 1x1 kernel and BatchNorm (gamma,
        # beta; 2 moving statistics); P7 pools P6 (4 channels already).
        # The first cell resamples P3, P4, P5 for the top-down pass and P4,
        # P5 for the bottom-up one: 5 x (kernel, gamma, beta). Per cell, 8
        # nodes of a fusion weight, depthwise and pointwise kernels, gamma
        # and beta.
        ({"num_filters": 4, "num_repeats": 2}, 3 + 15 + 2 * 40, 2 + 10 + 32),
        (
            {
                "num_filters": 4,
                "num_repeats": 2,
                "weight_per_channel": True,
                "normalization": "softmax",
                "recompute": True,
            },
            98,
            44,
        ),
        # concat: no fusion weight, a 1x1 projection with bias per node.
        (
            {"num_filters": 4, "num_repeats": 1, "fusion": "concat"},
            3 + 15 + 48,
            2 + 10 + 16,
        ),
    ],
    ids=["fastattn", "channel_attn_recompute", "concat"],
)
def test_layer_checks(kwargs, trainable, non_trainable, tmp_path):
    run_neck_layer_test(BiFPN, kwargs, trainable, non_trainable, tmp_path)


@pytest.mark.slow
@EXPORT_FORMATS
def test_export_runs_without_keras_fusion(export_format, tmp_path):
    # One cell: the second is the same operations again, and each cell
    # adds ~25 s to a SavedModel export here.
    run_neck_export_test(
        BiFPN,
        {"num_filters": 4, "num_repeats": 1},
        export_format,
        tmp_path,
        atol=1e-5,
        max_pooling=True,
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: BiFPN(num_repeats=0), "`num_repeats`"),
        (lambda: BiFPN(batch_norm=False), "`batch_norm` does not apply"),
        (lambda: BiFPN(use_p5=True), "`use_p5` does not apply"),
        (lambda: BiFPN.efficientdet("d9"), "`variant` should be one of"),
    ],
)
def test_arguments_are_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()
