import os

import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from keras_fusion import FusionSelector
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.layer_test_case import float16_kernels_run
from tests.layer_test_case import make_inputs
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test


def sublayer_variables(layer, sublayer_name):
    """The variables of one sublayer, by name (`gamma`, `kernel`, ...)."""
    return {
        v.path.rsplit("/", 1)[-1]: v
        for v in layer.variables
        if v.path.split("/")[-2] == sublayer_name
    }


def numpy_weighted_add(arrays, weights, epsilon=1e-4, channel_axis=-1):
    """BiFPN's fast normalized fusion, written as in the paper."""
    weights = np.maximum(np.asarray(weights, dtype="float64"), 0.0)
    if weights.ndim == 2:
        shape = [1] * arrays[0].ndim
        shape[channel_axis] = weights.shape[1]
        weights = [w.reshape(shape) for w in weights]
    numerator = sum(w * x for w, x in zip(weights, arrays, strict=True))
    return numerator / (sum(weights) + epsilon)


LAYER_CASES = pytest.mark.parametrize(
    "init_kwargs, input_shape, expected",
    [
        ({"mode": "add"}, [(2, 9, 8, 4), (2, 9, 8, 4)], (2, 9, 8, 4)),
        ({"mode": "concat"}, [(2, 11, 3), (2, 11, 2)], (2, 11, 5)),
        (
            {"mode": "concat", "data_format": "channels_first"},
            [(2, 2, 5, 4, 3), (2, 3, 5, 4, 3), (2, 1, 5, 4, 3)],
            (2, 6, 5, 4, 3),
        ),
        (
            {"mode": "weighted_add"},
            [(2, 7, 6, 3), (2, 7, 6, 3), (2, 7, 6, 3)],
            (2, 7, 6, 3),
        ),
        (
            {
                "mode": "weighted_add",
                "weight_per_channel": True,
                "data_format": "channels_first",
            },
            [(2, 3, 7, 6), (2, 3, 7, 6)],
            (2, 3, 7, 6),
        ),
        (
            {"mode": "concat", "bn_before_concat": True},
            [(4, 6, 6, 3), (4, 6, 6, 5)],
            (4, 6, 6, 8),
        ),
        (
            {"mode": "add", "align": "crop"},
            [(2, 13, 10, 3), (2, 9, 12, 3)],
            (2, 9, 10, 3),
        ),
        (
            {"mode": "concat", "align": "pad"},
            [(2, 5, 6, 4, 2), (2, 7, 4, 4, 3)],
            (2, 7, 6, 4, 5),
        ),
        (
            {"mode": "add", "projection": 4},
            [(2, 8, 8, 6), (2, 8, 8, 4)],
            (2, 8, 8, 4),
        ),
        (
            {
                "mode": "weighted_add",
                "projection": 3,
                "weight_per_channel": True,
                "align": "pad",
            },
            [(2, 9, 5), (2, 6, 3)],
            (2, 9, 3),
        ),
    ],
    ids=[
        "add-2d",
        "concat-1d",
        "concat-3d-channels-first-three-inputs",
        "weighted-add-three-inputs",
        "weighted-add-per-channel-channels-first",
        "bn-before-concat",
        "add-align-crop",
        "concat-align-pad-3d",
        "add-projection",
        "weighted-add-projection-pad-1d",
    ],
)


@LAYER_CASES
def test_layer_checks(init_kwargs, input_shape, expected, tmp_path):
    run_layer_test(
        FusionSelector,
        init_kwargs,
        input_shape,
        tmp_path,
        expected_output_shape=expected,
        atol=1e-5,
    )


@tensorflow_only
@LAYER_CASES
def test_saved_model_export(init_kwargs, input_shape, expected, tmp_path):
    run_export_test(FusionSelector, init_kwargs, input_shape, tmp_path, 1e-5)


PROJECTION_CHANNELS_FIRST = {
    "mode": "weighted_add",
    "projection": 3,
    "align": "crop",
    "data_format": "channels_first",
}


def test_layer_checks_projection_channels_first(tmp_path):
    run_layer_test(
        FusionSelector,
        PROJECTION_CHANNELS_FIRST,
        [(2, 5, 9, 8), (2, 3, 7, 8)],
        tmp_path,
        expected_output_shape=(2, 3, 7, 8),
        run_mixed_precision=float16_kernels_run(4, "channels_first"),
        atol=1e-5,
    )


@tensorflow_only
def test_saved_model_export_projection_channels_first(tmp_path):
    run_export_test(
        FusionSelector,
        PROJECTION_CHANNELS_FIRST,
        [(2, 5, 9, 8), (2, 3, 7, 8)],
        tmp_path,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "shapes, data_format",
    [
        ([(2, 9, 4), (2, 9, 4)], "channels_last"),
        ([(2, 7, 6, 3), (2, 7, 6, 3), (2, 7, 6, 3)], "channels_last"),
        ([(2, 3, 5, 4, 6), (2, 3, 5, 4, 6)], "channels_first"),
    ],
)
def test_add_matches_keras_add(shapes, data_format):
    arrays = make_inputs(shapes, seed=1)
    output = FusionSelector(mode="add", data_format=data_format)(arrays)
    np.testing.assert_allclose(
        to_numpy(output),
        to_numpy(keras.layers.Add()(arrays)),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "shapes, data_format, axis",
    [
        ([(2, 9, 4), (2, 9, 2)], "channels_last", -1),
        ([(2, 7, 6, 3), (2, 7, 6, 1), (2, 7, 6, 5)], "channels_last", -1),
        ([(2, 3, 5, 4), (2, 2, 5, 4)], "channels_first", 1),
    ],
)
def test_concat_matches_keras_concatenate(shapes, data_format, axis):
    arrays = make_inputs(shapes, seed=2)
    output = FusionSelector(mode="concat", data_format=data_format)(arrays)
    np.testing.assert_array_equal(
        to_numpy(output),
        to_numpy(keras.layers.Concatenate(axis=axis)(arrays)),
    )


def reference_bn_concat(batch_norms, arrays, training):
    """Per-input `BatchNormalization` followed by `Concatenate`."""
    normalized = [
        bn(x, training=training)
        for bn, x in zip(batch_norms, arrays, strict=True)
    ]
    return to_numpy(keras.layers.Concatenate()(normalized))


def _bn_layers_with_shared_initial_state(shapes, momentum):
    """A FusionSelector with bn_before_concat and per-input BN references.

    All start from the same random gamma, beta and moving statistics, so
    that the comparison does not rest on the default ones and zeros.
    """
    layer = FusionSelector(
        mode="concat", bn_before_concat=True, momentum=momentum
    )
    layer.build(shapes)
    references = []
    rng = np.random.default_rng(4)
    for index, shape in enumerate(shapes):
        reference = keras.layers.BatchNormalization(momentum=momentum)
        reference.build(shape)
        channels = shape[-1]
        state = [
            rng.uniform(0.5, 1.5, channels),
            rng.standard_normal(channels),
            rng.standard_normal(channels),
            rng.uniform(0.5, 2.0, channels),
        ]
        reference.set_weights(state)
        variables = sublayer_variables(layer, f"bn_{index}")
        for name, value in zip(
            ("gamma", "beta", "moving_mean", "moving_variance"),
            state,
            strict=True,
        ):
            variables[name].assign(value)
        references.append(reference)
    return layer, references


def _batches(shapes, step):
    # Inputs on different scales, as in the article's deconvolution and
    # convolution branches: one shared normalization could not fit both.
    arrays = make_inputs(shapes, seed=10 + step)
    return [a * (1 + 4 * i) + 3 * i for i, a in enumerate(arrays)]


def test_bn_before_concat_matches_bn_then_concatenate_in_training():
    shapes = [(8, 5, 5, 3), (8, 5, 5, 2)]
    layer, references = _bn_layers_with_shared_initial_state(shapes, 0.9)
    for step in range(2):
        arrays = _batches(shapes, step)
        output = layer(arrays, training=True)
        expected = reference_bn_concat(references, arrays, training=True)
        np.testing.assert_allclose(
            to_numpy(output), expected, rtol=0, atol=1e-5
        )
        # Equal moving statistics after each step: updated exactly once
        # per step, each from its own input.
        for index, reference in enumerate(references):
            variables = sublayer_variables(layer, f"bn_{index}")
            for name in ("moving_mean", "moving_variance"):
                np.testing.assert_allclose(
                    to_numpy(variables[name]),
                    to_numpy(getattr(reference, name)),
                    rtol=0,
                    atol=1e-5,
                )


def test_bn_before_concat_matches_bn_then_concatenate_in_inference():
    shapes = [(4, 5, 5, 3), (4, 5, 5, 2)]
    layer, references = _bn_layers_with_shared_initial_state(shapes, 0.99)
    arrays = _batches(shapes, 0)
    expected = reference_bn_concat(references, arrays, training=False)
    np.testing.assert_allclose(
        to_numpy(layer(arrays, training=False)), expected, rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(layer(arrays)), expected, rtol=0, atol=1e-5
    )


def test_bn_before_concat_fit_steps_match_bn_then_concatenate():
    shapes = [(8, 5, 5, 3), (8, 5, 5, 2)]
    inputs = [keras.Input(s[1:]) for s in shapes]
    model = keras.Model(
        inputs,
        FusionSelector(mode="concat", bn_before_concat=True, momentum=0.9)(
            inputs
        ),
    )
    reference_inputs = [keras.Input(s[1:]) for s in shapes]
    reference_model = keras.Model(
        reference_inputs,
        keras.layers.Concatenate()(
            [
                keras.layers.BatchNormalization(momentum=0.9)(x)
                for x in reference_inputs
            ]
        ),
    )
    rng = np.random.default_rng(6)
    state = [
        rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.weights
    ]
    model.set_weights(state)
    reference_model.set_weights(state)
    for m in (model, reference_model):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    target = rng.standard_normal((8, 5, 5, 5)).astype("float32")
    for step in range(2):
        arrays = _batches(shapes, step)
        for m in (model, reference_model):
            m.fit(arrays, target, batch_size=8, epochs=1, verbose=0)
        # gamma and beta (gradients), moving statistics (one update each).
        for weight, reference in zip(
            model.weights, reference_model.weights, strict=True
        ):
            np.testing.assert_allclose(
                to_numpy(weight), to_numpy(reference), rtol=0, atol=1e-5
            )


def test_bn_before_concat_gives_each_input_its_own_batch_normalization():
    layer = FusionSelector(mode="concat", bn_before_concat=True)
    layer.build([(None, 6, 6, 3), (None, 6, 6, 5), (None, 6, 6, 2)])
    for index, channels in enumerate((3, 5, 2)):
        variables = sublayer_variables(layer, f"bn_{index}")
        assert sorted(variables) == [
            "beta",
            "gamma",
            "moving_mean",
            "moving_variance",
        ]
        assert all(v.shape == (channels,) for v in variables.values())
    assert len(layer.trainable_variables) == 6


@pytest.mark.parametrize(
    "weights, data_format",
    [
        ([1.0, 1.0], "channels_last"),
        ([0.3, 2.0, -0.5], "channels_last"),
        ([[0.5, 1.0, 0.0], [2.0, -1.0, 1.5]], "channels_last"),
        ([[0.5, 1.0, 0.0], [2.0, -1.0, 1.5]], "channels_first"),
    ],
    ids=["initial", "negative-clipped", "per-channel", "per-channel-ch-first"],
)
def test_weighted_add_matches_numpy_formula(weights, data_format):
    weights = np.asarray(weights, dtype="float32")
    per_channel = weights.ndim == 2
    shape = (2, 3, 6, 5) if data_format == "channels_first" else (2, 6, 5, 3)
    arrays = make_inputs([shape] * len(weights), seed=3)
    layer = FusionSelector(
        mode="weighted_add",
        weight_per_channel=per_channel,
        data_format=data_format,
    )
    layer.build([shape] * len(weights))
    layer.fusion_weights.assign(weights)
    channel_axis = 1 if data_format == "channels_first" else -1
    np.testing.assert_allclose(
        to_numpy(layer(arrays)),
        numpy_weighted_add(arrays, weights, channel_axis=channel_axis),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "weight_per_channel, expected_shape", [(False, (3,)), (True, (3, 4))]
)
def test_weighted_add_weights_start_at_one(weight_per_channel, expected_shape):
    layer = FusionSelector(
        mode="weighted_add", weight_per_channel=weight_per_channel
    )
    layer.build([(None, 5, 5, 4)] * 3)
    assert layer.fusion_weights.shape == expected_shape
    assert layer.fusion_weights.trainable
    np.testing.assert_array_equal(
        to_numpy(layer.fusion_weights), np.ones(expected_shape)
    )


def test_weighted_add_weights_receive_gradients():
    arrays = make_inputs([(2, 4, 4, 3)] * 3, seed=8)
    weights = np.array([0.5, 2.0, -1.0], dtype="float32")
    layer = FusionSelector(mode="weighted_add")
    layer.build([tuple(a.shape) for a in arrays])
    layer.fusion_weights.assign(weights)
    _, grads = value_and_grads(layer, arrays, loss_fn=keras.ops.sum)
    (gradient,) = grads[1:]
    # d/dw_j of sum(sum_i w_i x_i / (S + eps)), S = sum of positive w_i,
    # for w_j > 0; relu stops the gradient of the negative weight.
    totals = np.array([a.sum() for a in arrays], dtype="float64")
    positive = np.maximum(weights, 0)
    denominator = positive.sum() + 1e-4
    expected = totals / denominator - positive @ totals / denominator**2
    expected[weights <= 0] = 0.0
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)
    assert np.all(gradient[:2] != 0)


@pytest.mark.parametrize("num_inputs", [2, 3])
def test_add_then_conv_equals_concat_then_conv_with_repeated_kernel(
    num_inputs,
):
    # Seed 004: add followed by a convolution is concat followed by a
    # convolution whose kernel is shared by (repeated for) every input.
    channels, filters, size = 3, 4, 3
    arrays = make_inputs([(2, 9, 9, channels)] * num_inputs, seed=5)
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((size, size, channels, filters))
    bias = rng.standard_normal(filters)
    conv_after_add = keras.layers.Conv2D(filters, size)
    conv_after_add.build((None, 9, 9, channels))
    conv_after_add.set_weights([kernel, bias])
    conv_after_concat = keras.layers.Conv2D(filters, size)
    conv_after_concat.build((None, 9, 9, num_inputs * channels))
    conv_after_concat.set_weights(
        [np.concatenate([kernel] * num_inputs, axis=2), bias]
    )
    np.testing.assert_allclose(
        to_numpy(conv_after_add(FusionSelector(mode="add")(arrays))),
        to_numpy(conv_after_concat(FusionSelector(mode="concat")(arrays))),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("num_inputs", [2, 3, 4])
def test_conv_after_concat_has_n_times_the_parameters_of_conv_after_add(
    num_inputs,
):
    channels, filters, size = 8, 16, 3
    inputs = [keras.Input((9, 9, channels)) for _ in range(num_inputs)]

    def count_params(mode):
        # No bias: with one, the ratio would be off by (N - 1) * filters.
        fused = FusionSelector(mode=mode)(inputs)
        conv = keras.layers.Conv2D(filters, size, use_bias=False)
        return keras.Model(inputs, conv(fused)).count_params()

    assert count_params("add") == size * size * channels * filters
    assert count_params("concat") == num_inputs * count_params("add")


def test_align_crop_concat_matches_crop_and_concat():
    arrays = make_inputs([(2, 13, 10, 3), (2, 9, 12, 4), (2, 11, 11, 2)])
    np.testing.assert_array_equal(
        to_numpy(FusionSelector(mode="concat", align="crop")(arrays)),
        to_numpy(CropAndConcat()(arrays)),
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_align_pad_add_matches_zero_padding2d_then_add(data_format):
    if data_format == "channels_last":
        shapes = [(2, 9, 6, 3), (2, 6, 9, 3)]
    else:
        shapes = [(2, 3, 9, 6), (2, 3, 6, 9)]
    small_rows, small_cols = make_inputs(shapes, seed=6)
    # 6 -> 9: one zero before, two after (d // 2 before, the rest after).
    expected = keras.layers.Add()(
        [
            keras.layers.ZeroPadding2D(
                ((0, 0), (1, 2)), data_format=data_format
            )(small_rows),
            keras.layers.ZeroPadding2D(
                ((1, 2), (0, 0)), data_format=data_format
            )(small_cols),
        ]
    )
    output = FusionSelector(mode="add", align="pad", data_format=data_format)(
        [small_rows, small_cols]
    )
    np.testing.assert_array_equal(to_numpy(output), to_numpy(expected))


@pytest.mark.parametrize("align", ["crop", "pad"])
def test_align_with_none_spatial_sizes_uses_runtime_shapes(align):
    inputs = [keras.Input((None, None, 2)), keras.Input((None, None, 2))]
    outputs = FusionSelector(mode="concat", align=align)(inputs)
    assert tuple(outputs.shape) == (None, None, None, 4)
    model = keras.Model(inputs, outputs)
    reference = FusionSelector(mode="concat", align=align)
    for shapes in ([(1, 10, 7, 2), (1, 8, 9, 2)], [(2, 5, 5, 2), (2, 6, 4, 2)]):
        arrays = make_inputs(shapes, seed=9)
        np.testing.assert_array_equal(
            to_numpy(model(arrays)), to_numpy(reference(arrays))
        )


def test_projection_applies_a_1x1_convolution_to_mismatched_inputs_only():
    arrays = make_inputs([(2, 5, 5, 6), (2, 5, 5, 4), (2, 5, 5, 3)], seed=7)
    layer = FusionSelector(mode="add", projection=4)
    output = to_numpy(layer(arrays))
    assert sublayer_variables(layer, "projection_1") == {}
    projected = []
    for index in (0, 2):
        variables = sublayer_variables(layer, f"projection_{index}")
        kernel = to_numpy(variables["kernel"])
        assert kernel.shape == (1, 1, arrays[index].shape[-1], 4)
        projected.append(
            arrays[index] @ kernel[0, 0] + to_numpy(variables["bias"])
        )
    np.testing.assert_allclose(
        output, projected[0] + arrays[1] + projected[1], rtol=0, atol=1e-5
    )


def test_projection_convolutions_draw_different_kernels():
    layer = FusionSelector(mode="add", projection=4)
    layer.build([(None, 5, 5, 6), (None, 5, 5, 6)])
    first = to_numpy(sublayer_variables(layer, "projection_0")["kernel"])
    second = to_numpy(sublayer_variables(layer, "projection_1")["kernel"])
    assert not np.allclose(first, second)


def test_projection_happens_before_padding():
    # Padding after the projection leaves the border at zero; padding
    # before it would put the projection's bias there.
    small, large = make_inputs([(1, 5, 5, 6), (1, 7, 7, 4)], seed=8)
    layer = FusionSelector(
        mode="add", projection=4, align="pad", kernel_initializer="ones"
    )
    layer.build([small.shape, large.shape])
    sublayer_variables(layer, "projection_0")["bias"].assign(np.ones(4))
    output = to_numpy(layer([small, large]))
    np.testing.assert_allclose(output[:, 0], large[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        output[:, 1:6, 1:6],
        large[:, 1:6, 1:6] + small.sum(-1, keepdims=True) + 1.0,
        rtol=0,
        atol=1e-5,
    )


def test_projection_kernel_regularizer_adds_one_loss_per_projection():
    layer = FusionSelector(
        mode="add", projection=4, kernel_regularizer=keras.regularizers.L2(0.1)
    )
    layer(make_inputs([(1, 3, 3, 6), (1, 3, 3, 4), (1, 3, 3, 2)]))
    assert len(layer.losses) == 2


def test_every_option_round_trips_through_get_config():
    layer = FusionSelector(
        mode="weighted_add",
        align="pad",
        projection=8,
        weight_per_channel=True,
        epsilon=1e-3,
        momentum=0.9,
        bn_epsilon=1e-5,
        kernel_initializer=keras.initializers.HeNormal(seed=3),
        kernel_regularizer=keras.regularizers.L2(0.01),
        axis=1,
        data_format="channels_first",
        name="fuse",
    )
    revived = FusionSelector.from_config(layer.get_config())
    assert revived.get_config() == layer.get_config()
    assert isinstance(revived.kernel_initializer, keras.initializers.HeNormal)
    assert revived.kernel_regularizer.l2 == pytest.approx(0.01)
    assert (revived.mode, revived.align, revived.projection) == (
        "weighted_add",
        "pad",
        8,
    )


def test_switching_a_saved_models_fusion_is_a_config_edit(tmp_path):
    inputs = [keras.Input((6, 6, 3)), keras.Input((6, 6, 3))]
    fused = FusionSelector(mode="add", name="fuse")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(fused))
    config = model.get_config()
    for layer_config in config["layers"]:
        if layer_config["name"] == "fuse":
            layer_config["config"]["mode"] = "concat"
            layer_config["config"]["bn_before_concat"] = True
    switched = keras.Model.from_config(config)
    arrays = make_inputs([(2, 6, 6, 3), (2, 6, 6, 3)], seed=1)
    assert switched.output_shape == (None, 6)
    np.testing.assert_allclose(
        to_numpy(switched(arrays)),
        to_numpy(
            keras.layers.GlobalAveragePooling2D()(
                FusionSelector(mode="concat", bn_before_concat=True)(arrays)
            )
        ),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "init_kwargs, shapes",
    [
        (
            {"mode": "concat", "bn_before_concat": True},
            [(4, 5, 5, 3), (4, 5, 5, 2)],
        ),
        (
            {"mode": "weighted_add", "weight_per_channel": True},
            [(4, 5, 5, 3), (4, 5, 5, 3)],
        ),
    ],
    ids=["bn-statistics", "fusion-weights"],
)
def test_trained_state_survives_a_keras_file(init_kwargs, shapes, tmp_path):
    inputs = [keras.Input(s[1:]) for s in shapes]
    model = keras.Model(inputs, FusionSelector(**init_kwargs)(inputs))
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
    "init_kwargs, shapes, expected",
    [
        (
            {"mode": "add"},
            [(None, 8, None, 3), (4, None, None, 3)],
            (4, 8, None, 3),
        ),
        (
            {"mode": "add"},
            [(None, 8, 8, None), (None, 8, 8, None)],
            (None, 8, 8, None),
        ),
        (
            {"mode": "concat"},
            [(None, 8, 8, None), (None, 8, 8, 2)],
            (None, 8, 8, None),
        ),
        (
            {"mode": "concat", "align": "crop"},
            [(None, 9, None, 2), (None, 7, 5, 3)],
            (None, 7, None, 5),
        ),
        (
            {"mode": "concat", "align": "pad"},
            [(None, 9, None, 2), (None, 7, 5, 3)],
            (None, 9, None, 5),
        ),
        (
            {"mode": "add", "projection": 6},
            [(None, None, 4, 3), (None, None, 4, 5)],
            (None, None, 4, 6),
        ),
    ],
)
def test_compute_output_shape_keeps_none_it_cannot_know(
    init_kwargs, shapes, expected
):
    assert (
        FusionSelector(**init_kwargs).compute_output_shape(shapes) == expected
    )


@pytest.mark.parametrize("mode", ["add", "concat"])
def test_layer_without_weights_can_be_reused_on_more_inputs(mode):
    layer = FusionSelector(mode=mode)
    two = make_inputs([(1, 4, 4, 2)] * 2)
    three = make_inputs([(1, 4, 4, 2)] * 3)
    layer(two)
    reference = FusionSelector(mode=mode)(three)
    np.testing.assert_array_equal(to_numpy(layer(three)), to_numpy(reference))


@pytest.mark.parametrize(
    "init_kwargs",
    [
        {"mode": "weighted_add"},
        {"mode": "concat", "bn_before_concat": True},
        {"mode": "add", "projection": 2},
    ],
)
def test_fusion_selector_errors_if_inputs_change_after_build(init_kwargs):
    # Weights that belong to input i tie the layer to the inputs it was
    # built for.
    layer = FusionSelector(**init_kwargs)
    layer(make_inputs([(1, 4, 4, 2), (1, 4, 4, 2)]))
    with pytest.raises(ValueError, match="expects 2 input.*received 3"):
        layer(make_inputs([(1, 4, 4, 2)] * 3))
    if init_kwargs["mode"] == "concat":
        with pytest.raises(
            ValueError, match="expected axis 3 of input shape to have value 2"
        ):
            layer(make_inputs([(1, 4, 4, 2), (1, 4, 4, 5)]))


def test_fusion_selector_errors_if_mode_is_unknown():
    with pytest.raises(
        ValueError,
        match="`mode` should be one of 'add', 'concat' or 'weighted_add'.*"
        "Received: mode='sum'",
    ):
        FusionSelector(mode="sum")


@pytest.mark.parametrize("mode", ["add", "weighted_add"])
def test_fusion_selector_errors_if_bn_before_concat_without_concat(mode):
    with pytest.raises(
        ValueError,
        match="`bn_before_concat=True`.*only be used with mode='concat'.*"
        f"Received: bn_before_concat=True, mode='{mode}'",
    ):
        FusionSelector(mode=mode, bn_before_concat=True)


def test_fusion_selector_errors_if_given_a_single_input():
    x = np.zeros((1, 4, 4, 2), dtype="float32")
    with pytest.raises(ValueError, match="list of at least 2 inputs.*1 input"):
        FusionSelector(mode="add")([x])
    with pytest.raises(ValueError, match="list of at least 2 inputs"):
        FusionSelector(mode="add")(x)


@pytest.mark.parametrize("mode", ["add", "concat", "weighted_add"])
def test_fusion_selector_errors_if_spatial_sizes_differ_without_align(mode):
    with pytest.raises(
        ValueError,
        match=r"same spatial size; pass align='crop' or align='pad'.*"
        r"Received: inputs with shapes \[\(None, 8, 8, 3\), "
        r"\(None, 6, 8, 3\)\]",
    ):
        FusionSelector(mode=mode)(
            [keras.Input((8, 8, 3)), keras.Input((6, 8, 3))]
        )


@pytest.mark.parametrize("mode", ["add", "weighted_add"])
def test_fusion_selector_errors_if_channels_differ_without_projection(mode):
    with pytest.raises(
        ValueError,
        match=r"same number of channels \(axis 3\).*pass "
        r"projection=<channels>.*Received: channels \[3, 5\]",
    ):
        FusionSelector(mode=mode)(
            [keras.Input((8, 8, 3)), keras.Input((8, 8, 5))]
        )


def test_fusion_selector_errors_if_sizes_differ_at_run_time():
    layer = FusionSelector(mode="add")
    inputs = [keras.Input((None, None, 2)), keras.Input((None, None, 2))]
    keras.Model(inputs, layer(inputs))
    arrays = make_inputs([(1, 6, 6, 2), (1, 5, 6, 2)])
    with pytest.raises(ValueError, match="same spatial size.*align='crop'"):
        layer(arrays)


def test_fusion_selector_errors_if_ranks_differ():
    with pytest.raises(ValueError, match=r"same rank.*ranks \[4, 3\]"):
        FusionSelector(mode="add")(
            [keras.Input((4, 4, 2)), keras.Input((4, 2))]
        )


@pytest.mark.parametrize("align", ["center", "resize", True])
def test_fusion_selector_errors_if_align_is_invalid(align):
    with pytest.raises(
        ValueError,
        match=f"`align` should be one of None, 'crop' or 'pad'. "
        f"Received: align={align!r}",
    ):
        FusionSelector(align=align)


@pytest.mark.parametrize("projection", [0, -4, 2.5, True, "max"])
def test_fusion_selector_errors_if_projection_is_not_a_positive_int(
    projection,
):
    with pytest.raises(
        ValueError,
        match="`projection` should be None or a positive int.*"
        f"Received: projection={projection!r}",
    ):
        FusionSelector(mode="add", projection=projection)


def test_fusion_selector_errors_if_projection_with_concat():
    with pytest.raises(
        ValueError,
        match="`projection` should only be used with mode='add' or "
        "'weighted_add'.*Received: projection=8, mode='concat'",
    ):
        FusionSelector(mode="concat", projection=8)


@pytest.mark.parametrize("mode", ["add", "concat"])
def test_fusion_selector_errors_if_weight_per_channel_without_weighted_add(
    mode,
):
    with pytest.raises(
        ValueError,
        match="`weight_per_channel=True` should only be used with "
        f"mode='weighted_add'. Received: .*mode='{mode}'",
    ):
        FusionSelector(mode=mode, weight_per_channel=True)


@pytest.mark.parametrize("name", ["bn_before_concat", "weight_per_channel"])
def test_fusion_selector_errors_if_flag_is_not_a_bool(name):
    with pytest.raises(
        TypeError, match=f"`{name}` should be a bool. Received: {name}='yes'"
    ):
        FusionSelector(mode="weighted_add", **{name: "yes"})


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("epsilon", 0.0, "a positive number"),
        ("epsilon", "small", "a positive number"),
        ("bn_epsilon", -1e-3, "a positive number"),
        ("momentum", 1.5, r"a number in \[0, 1\]"),
    ],
)
def test_fusion_selector_errors_if_number_is_out_of_range(
    name, value, expected
):
    with pytest.raises(
        ValueError,
        match=f"`{name}` should be {expected}. Received: {name}={value!r}",
    ):
        FusionSelector(**{name: value})


@pytest.mark.parametrize(
    "init_kwargs",
    [
        {"mode": "concat", "bn_before_concat": True},
        {"mode": "add", "projection": 4},
        {"mode": "weighted_add", "weight_per_channel": True},
    ],
)
def test_fusion_selector_errors_if_channels_are_unknown_with_weights(
    init_kwargs,
):
    with pytest.raises(ValueError, match="needs the channel count.*axis 3"):
        FusionSelector(**init_kwargs)(
            [keras.Input((4, 4, None)), keras.Input((4, 4, None))]
        )


def test_fusion_selector_errors_if_axis_is_not_the_channel_axis():
    layer = FusionSelector(axis=1)
    with pytest.raises(
        ValueError, match="channel axis.*a spatial axis.*axis=1"
    ):
        layer([keras.Input((4, 4, 3)), keras.Input((4, 4, 3))])


def test_fusion_selector_errors_if_data_format_is_invalid():
    with pytest.raises(
        ValueError, match="`data_format`.*Received: data_format='NCHW'"
    ):
        FusionSelector(data_format="NCHW")
