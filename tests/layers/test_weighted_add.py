import os
import re
import warnings

import keras
import numpy as np
import pytest

from keras_fusion import WeightedAdd
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import make_inputs
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test


def numpy_weighted_add(
    arrays, weights, epsilon=1e-4, channel_axis=-1, normalization="fast"
):
    """EfficientDet's weighted fusion, written as in the paper: the fast
    normalized fusion (`fastattn`, `channel_fastattn`) or the softmax over
    the inputs (`attn`, `channel_attn`)."""
    weights = np.asarray(weights, dtype="float64")
    if normalization == "fast":
        weights = np.maximum(weights, 0.0)
        weights = weights / (weights.sum(axis=0) + epsilon)
    else:
        exponentials = np.exp(weights - weights.max(axis=0))
        weights = exponentials / exponentials.sum(axis=0)
    if weights.ndim == 2:
        shape = [1] * arrays[0].ndim
        shape[channel_axis] = weights.shape[1]
        weights = [w.reshape(shape) for w in weights]
    return sum(w * x for w, x in zip(weights, arrays, strict=True))


def random_masks(arrays, data_format="channels_last", seed=0):
    """One random boolean mask per array: its shape without channels."""
    rng = np.random.default_rng(seed)
    channel = arrays[0].ndim - 1 if data_format == "channels_last" else 1
    return [rng.random(np.delete(a.shape, channel)) < 0.4 for a in arrays]


def grads_of_sum(layer, arrays):
    """The gradient of `sum(layer(arrays))` with respect to the layer's
    fusion weights. Through a model: `value_and_grads` calls it with
    `training`, which `WeightedAdd.call`, like `keras.layers.Add.call`,
    does not take."""
    inputs = [keras.Input(a.shape[1:]) for a in arrays]
    model = keras.Model(inputs, layer(inputs))
    _, grads = value_and_grads(model, arrays, loss_fn=keras.ops.sum)
    (gradient,) = grads[1:]
    return gradient


def mask_model(inputs, outputs):
    """A model returning the Keras mask that `outputs` carries."""
    return keras.Model(inputs, outputs._keras_mask)


# One trainable weight (the fusion weights) in every case.
LAYER_CASES = pytest.mark.parametrize(
    "init_kwargs, input_shape",
    [
        ({}, [(2, 7, 6, 3), (2, 7, 6, 3), (2, 7, 6, 3)]),
        ({"weight_per_channel": True}, [(2, 9, 5), (2, 9, 5)]),
        (
            {"weight_per_channel": True, "data_format": "channels_first"},
            [(2, 3, 7, 6), (2, 3, 7, 6)],
        ),
        (
            {"weight_per_channel": True, "axis": -1, "fusion_epsilon": 1e-3},
            [(2, 4, 5, 3, 2), (2, 4, 5, 3, 2)],
        ),
        (
            {"normalization": "softmax", "weight_per_channel": True},
            [(2, 5, 6, 3)] * 3,
        ),
    ],
    ids=[
        "2d-three-inputs",
        "per-channel-1d",
        "per-channel-2d-channels-first",
        "per-channel-3d-explicit-axis",
        "softmax-per-channel-2d",
    ],
)


@LAYER_CASES
def test_layer_checks(init_kwargs, input_shape, tmp_path):
    run_layer_test(
        WeightedAdd,
        init_kwargs,
        input_shape,
        tmp_path,
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        expected_output_shape=input_shape[0],
        atol=1e-5,
    )


@EXPORT_FORMATS
@LAYER_CASES
def test_export(export_format, init_kwargs, input_shape, tmp_path):
    run_export_test(
        WeightedAdd,
        init_kwargs,
        input_shape,
        tmp_path,
        1e-5,
        export_format=export_format,
    )


@pytest.mark.parametrize(
    "weights, data_format, fusion_epsilon, normalization",
    [
        ([1.0, 1.0], "channels_last", 1e-4, "fast"),
        ([0.3, 2.0, -0.5], "channels_last", 1e-4, "fast"),
        ([[0.5, 1.0, 0.0], [2.0, -1.0, 1.5]], "channels_last", 1e-4, "fast"),
        ([[0.5, 1.0, 0.0], [2.0, -1.0, 1.5]], "channels_first", 1e-4, "fast"),
        ([0.3, 2.0], "channels_last", 0.5, "fast"),
        ([1.0, 1.0], "channels_last", None, "softmax"),
        ([0.3, 2.0, -0.5], "channels_last", None, "softmax"),
        ([[0.5, 1.0, 0.0], [2.0, -1.0, 1.5]], "channels_last", None, "softmax"),
        (
            [[0.5, 1.0, 0.0], [2.0, -1.0, 1.5]],
            "channels_first",
            None,
            "softmax",
        ),
        # exp(90) overflows float32: the softmax must be the stable one.
        ([90.0, 88.0], "channels_last", None, "softmax"),
    ],
    ids=[
        "fastattn-initial",
        "fastattn-negative-clipped",
        "channel-fastattn",
        "channel-fastattn-ch-first",
        "fastattn-fusion-epsilon",
        "attn-initial",
        "attn",
        "channel-attn",
        "channel-attn-ch-first",
        "attn-large-weights",
    ],
)
def test_weighted_add_matches_numpy_formula(
    weights, data_format, fusion_epsilon, normalization
):
    weights = np.asarray(weights, dtype="float32")
    per_channel = weights.ndim == 2
    shape = (2, 3, 6, 5) if data_format == "channels_first" else (2, 6, 5, 3)
    arrays = make_inputs([shape] * len(weights), seed=3)
    layer = WeightedAdd(
        weight_per_channel=per_channel,
        normalization=normalization,
        fusion_epsilon=fusion_epsilon,
        data_format=data_format,
    )
    layer.build([shape] * len(weights))
    layer.fusion_weights.assign(weights)
    channel_axis = 1 if data_format == "channels_first" else -1
    np.testing.assert_allclose(
        to_numpy(layer(arrays)),
        numpy_weighted_add(
            arrays,
            weights,
            epsilon=fusion_epsilon,
            channel_axis=channel_axis,
            normalization=normalization,
        ),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("normalization", ["fast", "softmax"])
@pytest.mark.parametrize("weight_per_channel", [False, True])
def test_mixed_precision_normalizes_the_weights_in_float32(
    normalization, weight_per_channel
):
    shape = (2, 6, 5, 4)
    arrays = [a.astype("float16") for a in make_inputs([shape] * 3, seed=4)]
    layer = WeightedAdd(
        weight_per_channel=weight_per_channel,
        normalization=normalization,
        dtype="mixed_float16",
    )
    layer.build([shape] * 3)
    rng = np.random.default_rng(5)
    weights = rng.uniform(-1.0, 3.0, layer.fusion_weights.shape)
    weights = weights.astype("float32")
    layer.fusion_weights.assign(weights)
    assert keras.backend.standardize_dtype(layer.fusion_weights.dtype) == (
        "float32"
    )
    output = layer(arrays)
    assert keras.backend.standardize_dtype(output.dtype) == "float16"
    np.testing.assert_allclose(
        to_numpy(output).astype("float64"),
        numpy_weighted_add(
            [a.astype("float64") for a in arrays],
            weights,
            normalization=normalization,
        ),
        rtol=1e-3,
        atol=1e-3,
    )


@pytest.mark.parametrize(
    "weight_per_channel, expected_shape", [(False, (3,)), (True, (3, 4))]
)
def test_weighted_add_weights_start_at_one(weight_per_channel, expected_shape):
    layer = WeightedAdd(weight_per_channel=weight_per_channel, name="fuse")
    layer.build([(None, 5, 5, 4)] * 3)
    assert layer.fusion_weights.shape == expected_shape
    assert layer.fusion_weights.trainable
    assert layer.fusion_weights.path == "fuse/fusion_weights"
    np.testing.assert_array_equal(
        to_numpy(layer.fusion_weights), np.ones(expected_shape)
    )


def test_weighted_add_weights_receive_gradients():
    arrays = make_inputs([(2, 4, 4, 3)] * 3, seed=8)
    weights = np.array([0.5, 2.0, -1.0], dtype="float32")
    layer = WeightedAdd()
    layer.build([tuple(a.shape) for a in arrays])
    layer.fusion_weights.assign(weights)
    gradient = grads_of_sum(layer, arrays)
    # d/dw_j of sum(sum_i w_i x_i / (S + eps)), S = sum of positive w_i,
    # for w_j > 0; relu stops the gradient of the negative weight.
    totals = np.array([a.sum() for a in arrays], dtype="float64")
    positive = np.maximum(weights, 0)
    denominator = positive.sum() + 1e-4
    expected = totals / denominator - positive @ totals / denominator**2
    expected[weights <= 0] = 0.0
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)
    assert np.all(gradient[:2] != 0)


def test_per_channel_weights_receive_gradients_per_channel():
    arrays = make_inputs([(2, 4, 4, 3)] * 2, seed=9)
    weights = np.array([[0.5, 2.0, 1.0], [1.5, 0.5, -1.0]], dtype="float32")
    layer = WeightedAdd(weight_per_channel=True)
    layer.build([tuple(a.shape) for a in arrays])
    layer.fusion_weights.assign(weights)
    gradient = grads_of_sum(layer, arrays)
    # The per-input formula of the test above, channel by channel.
    totals = np.stack([a.sum(axis=(0, 1, 2)) for a in arrays]).astype("float64")
    positive = np.maximum(weights, 0)
    denominator = positive.sum(axis=0) + 1e-4
    expected = (
        totals / denominator - (positive * totals).sum(axis=0) / denominator**2
    )
    expected[weights <= 0] = 0.0
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weight_per_channel", [False, True])
def test_softmax_weights_receive_the_softmax_gradient(weight_per_channel):
    arrays = make_inputs([(2, 4, 4, 3)] * 3, seed=10)
    layer = WeightedAdd(
        weight_per_channel=weight_per_channel, normalization="softmax"
    )
    layer.build([tuple(a.shape) for a in arrays])
    rng = np.random.default_rng(11)
    weights = rng.uniform(-1.0, 2.0, layer.fusion_weights.shape)
    layer.fusion_weights.assign(weights.astype("float32"))
    gradient = grads_of_sum(layer, arrays)
    # d/dw_j of sum_i s_i T_i with s = softmax(w), T_i the sum of input i
    # (per channel: channel by channel): s_j * (T_j - sum_i s_i T_i).
    axes = (0, 1, 2) if weight_per_channel else None
    totals = np.stack([a.astype("float64").sum(axis=axes) for a in arrays])
    softmax = np.exp(weights) / np.exp(weights).sum(axis=0)
    expected = softmax * (totals - (softmax * totals).sum(axis=0))
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-4)


def test_every_option_round_trips_through_get_config():
    layer = WeightedAdd(
        weight_per_channel=True,
        fusion_epsilon=1e-3,
        axis=1,
        data_format="channels_first",
        name="fuse",
    )
    revived = WeightedAdd.from_config(layer.get_config())
    assert revived.get_config() == layer.get_config()
    assert (
        revived.weight_per_channel,
        revived.normalization,
        revived.fusion_epsilon,
        revived.axis,
        revived.data_format,
    ) == (True, "fast", 1e-3, 1, "channels_first")
    softmax = WeightedAdd(normalization="softmax")
    revived = WeightedAdd.from_config(softmax.get_config())
    assert (revived.normalization, revived.fusion_epsilon) == ("softmax", None)


def test_a_config_without_normalization_is_the_fast_fusion():
    # Configs saved before `normalization` existed.
    config = WeightedAdd().get_config()
    del config["normalization"]
    revived = WeightedAdd.from_config(config)
    assert (revived.normalization, revived.fusion_epsilon) == ("fast", 1e-4)


def test_trained_weights_survive_a_keras_file(tmp_path):
    shapes = [(4, 5, 5, 3), (4, 5, 5, 3)]
    inputs = [keras.Input(s[1:]) for s in shapes]
    model = keras.Model(inputs, WeightedAdd(weight_per_channel=True)(inputs))
    rng = np.random.default_rng(2)
    model.set_weights(
        [
            rng.uniform(0.5, 2.0, w.shape).astype("float32")
            for w in model.weights
        ]
    )
    arrays = make_inputs(shapes, seed=3)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        to_numpy(loaded(arrays)), to_numpy(model(arrays))
    )


@pytest.mark.parametrize(
    "masked",
    [(True, True, True), (True, False, True), (False, False, False)],
    ids=["all-masked", "one-unmasked", "none-masked"],
)
def test_masks_combine_as_in_keras_add(masked):
    arrays = make_inputs([(2, 9, 3)] * 3, seed=1)
    masks = [
        m if keep else None
        for m, keep in zip(random_masks(arrays, seed=2), masked, strict=True)
    ]
    expected = keras.layers.Add().compute_mask(arrays, masks)
    output = WeightedAdd().compute_mask(arrays, masks)
    if expected is None:
        assert output is None
    else:
        np.testing.assert_array_equal(to_numpy(output), to_numpy(expected))


def test_mask_propagates_through_a_functional_model_as_in_keras():
    rng = np.random.default_rng(3)
    arrays = make_inputs([(3, 7, 3), (3, 7, 3)], seed=3)
    # Zero where keras.layers.Masking() masks out.
    arrays = [a * (rng.random((3, 7, 1)) < 0.6) for a in arrays]
    inputs = [keras.Input((7, 3)), keras.Input((7, 3))]
    masked = [keras.layers.Masking()(x) for x in inputs]
    expected = to_numpy(mask_model(inputs, keras.layers.Add()(masked))(arrays))
    assert not expected.all()
    output = mask_model(inputs, WeightedAdd()(masked))(arrays)
    np.testing.assert_array_equal(to_numpy(output), expected)


def test_inputs_without_masks_give_no_mask():
    arrays = make_inputs([(2, 9, 3), (2, 9, 3)])
    layer = WeightedAdd()
    assert layer.compute_mask(arrays, None) is None
    assert layer.compute_mask(arrays, [None, None]) is None
    outputs = layer([keras.Input((9, 3)), keras.Input((9, 3))])
    assert getattr(outputs, "_keras_mask", None) is None


def test_masked_inputs_keep_their_mask_without_a_keras_warning():
    shapes = [(2, 7, 3), (2, 7, 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = [keras.Input(s[1:]) for s in shapes]
        fused = WeightedAdd(weight_per_channel=True)(
            [keras.layers.Masking()(x) for x in inputs]
        )
        keras.Model(inputs, fused)(make_inputs(shapes))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "destroy the mask" in m], messages
    assert fused._keras_mask is not None


def test_weighted_add_errors_if_weight_per_channel_is_not_a_bool():
    with pytest.raises(
        TypeError,
        match="`weight_per_channel` should be a bool. "
        "Received: weight_per_channel='yes'",
    ):
        WeightedAdd(weight_per_channel="yes")


@pytest.mark.parametrize("fusion_epsilon", [0.0, -1e-4, "small", True])
def test_weighted_add_errors_if_fusion_epsilon_is_not_positive(fusion_epsilon):
    with pytest.raises(
        ValueError,
        match="`fusion_epsilon` should be a positive, finite number. "
        f"Received: fusion_epsilon={re.escape(repr(fusion_epsilon))}",
    ):
        WeightedAdd(fusion_epsilon=fusion_epsilon)


@pytest.mark.parametrize("normalization", ["attn", "Softmax", None, 1])
def test_weighted_add_errors_if_normalization_is_unknown(normalization):
    with pytest.raises(
        ValueError,
        match=r"`normalization` should be one of \('fast', 'softmax'\)\. "
        f"Received: normalization={re.escape(repr(normalization))}",
    ):
        WeightedAdd(normalization=normalization)


def test_weighted_add_errors_if_softmax_is_given_fusion_epsilon():
    with pytest.raises(
        ValueError,
        match="`fusion_epsilon` is only used with normalization='fast'.*"
        "Received: normalization='softmax', fusion_epsilon=0.001",
    ):
        WeightedAdd(normalization="softmax", fusion_epsilon=1e-3)


def test_weighted_add_errors_if_spatial_sizes_differ():
    with pytest.raises(
        ValueError,
        match=r"same spatial size; crop or pad them.*align='crop'.*"
        r"Received: inputs with shapes \[\(None, 8, 8, 3\), "
        r"\(None, 6, 8, 3\)\]",
    ):
        WeightedAdd()([keras.Input((8, 8, 3)), keras.Input((6, 8, 3))])


def test_weighted_add_errors_if_sizes_differ_at_run_time():
    layer = WeightedAdd()
    inputs = [keras.Input((None, None, 2)), keras.Input((None, None, 2))]
    keras.Model(inputs, layer(inputs))
    arrays = make_inputs([(1, 6, 6, 2), (1, 5, 6, 2)])
    with pytest.raises(ValueError, match="same spatial size"):
        layer(arrays)


def test_weighted_add_errors_if_channels_differ():
    with pytest.raises(
        ValueError,
        match=r"same number of channels \(axis 3\).*"
        r"projection=<channels>.*Received: channels \[3, 5\]",
    ):
        WeightedAdd()([keras.Input((8, 8, 3)), keras.Input((8, 8, 5))])


def test_weighted_add_errors_if_channels_are_unknown_per_channel():
    with pytest.raises(
        ValueError,
        match="weight_per_channel=True needs the channel count.*axis 3",
    ):
        WeightedAdd(weight_per_channel=True)(
            [keras.Input((4, 4, None)), keras.Input((4, 4, None))]
        )


@pytest.mark.parametrize("weight_per_channel", [False, True])
def test_weighted_add_errors_if_inputs_change_after_build(weight_per_channel):
    # Weight i belongs to input i (and, per channel, to its channels).
    layer = WeightedAdd(weight_per_channel=weight_per_channel)
    layer(make_inputs([(1, 4, 4, 2), (1, 4, 4, 2)]))
    with pytest.raises(ValueError, match="expects 2 input.*received 3"):
        layer(make_inputs([(1, 4, 4, 2)] * 3))
    if weight_per_channel:
        with pytest.raises(
            ValueError, match="expected axis 3 of input shape to have value 2"
        ):
            layer(make_inputs([(1, 4, 4, 5), (1, 4, 4, 5)]))


def test_weighted_add_errors_if_given_a_single_input():
    x = np.zeros((1, 4, 4, 2), dtype="float32")
    with pytest.raises(ValueError, match="list of at least 2 inputs.*1 input"):
        WeightedAdd()([x])
    with pytest.raises(ValueError, match="list of at least 2 inputs"):
        WeightedAdd()(x)


def test_weighted_add_errors_if_ranks_differ():
    with pytest.raises(ValueError, match=r"same rank.*ranks \[4, 3\]"):
        WeightedAdd()([keras.Input((4, 4, 2)), keras.Input((4, 2))])


def test_weighted_add_errors_if_axis_is_not_the_channel_axis():
    with pytest.raises(
        ValueError, match="channel axis.*a spatial axis.*axis=1"
    ):
        WeightedAdd(weight_per_channel=True, axis=1)(
            [keras.Input((4, 4, 3)), keras.Input((4, 4, 3))]
        )


def test_weighted_add_errors_if_data_format_is_invalid():
    with pytest.raises(
        ValueError, match="`data_format`.*Received: data_format='NCHW'"
    ):
        WeightedAdd(data_format="NCHW")


def test_weighted_add_errors_if_mask_shape_is_wrong():
    arrays = make_inputs([(2, 9, 8, 3), (2, 9, 8, 3)])
    mask = [np.ones((2, 9, 8, 3), dtype=bool), None]
    message = (
        r"`mask` should hold one mask per input.*\(axis 3\): \(2, 9, 8\) "
        r"for input 0.*Received: mask\[0\]\.shape=\(2, 9, 8, 3\)"
    )
    layer = WeightedAdd()
    with pytest.raises(ValueError, match=message):
        layer(arrays, mask=mask)
    with pytest.raises(ValueError, match=message):
        layer.compute_mask(arrays, mask)
