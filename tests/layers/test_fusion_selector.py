import os
import re
import warnings

import keras
import numpy as np
import pytest

import keras_fusion
from keras_fusion import CropAndConcat
from keras_fusion import FusionSelector
from keras_fusion import WeightedAdd
from tests.backend_utils import to_numpy
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import make_inputs
from tests.layer_test_case import missing_float16_kernels
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test
from tests.layer_test_case import skip_unless_channels_first_convolution_runs

# keras.layers.BatchNormalization's default epsilon, passed to both sides
# where FusionSelector's BatchNorm sublayers are compared with it.
BN_EPSILON = 1e-3


def sublayer_variables(layer, sublayer_name):
    """The variables of one sublayer, by name (`gamma`, `kernel`, ...)."""
    return {
        v.path.rsplit("/", 1)[-1]: v
        for v in layer.variables
        if v.path.split("/")[-2] == sublayer_name
    }


def random_masks(arrays, data_format="channels_last", seed=0):
    """One random boolean mask per array: its shape without channels."""
    rng = np.random.default_rng(seed)
    channel = arrays[0].ndim - 1 if data_format == "channels_last" else 1
    return [rng.random(np.delete(a.shape, channel)) < 0.4 for a in arrays]


def numpy_fused_mask(arrays, masks, align, data_format="channels_last"):
    """Independent reference for the output mask: each mask (all True for
    `None`) centre-cropped or padded with False as its array is, then a
    logical or over the inputs."""
    rank = arrays[0].ndim
    if data_format == "channels_last":
        data_axes = range(1, rank - 1)
    else:
        data_axes = range(2, rank)
    reduce = max if align == "pad" else min
    targets = [reduce(a.shape[axis] for a in arrays) for axis in data_axes]
    output = None
    for a, m in zip(arrays, masks, strict=True):
        sizes = [a.shape[axis] for axis in data_axes]
        if m is None:
            m = np.ones((a.shape[0], *sizes), dtype=bool)
        m = np.asarray(m)
        if align == "pad":
            pad_width = [(0, 0)]
            for size, target in zip(sizes, targets, strict=True):
                before = (target - size) // 2
                pad_width.append((before, target - size - before))
            m = np.pad(m, pad_width, constant_values=False)
        else:
            index = [slice(None)]
            for size, target in zip(sizes, targets, strict=True):
                start = (size - target) // 2
                index.append(slice(start, start + target))
            m = m[tuple(index)]
        output = m if output is None else output | m
    return output


def mask_model(inputs, outputs):
    """A model returning the Keras mask that `outputs` carries."""
    return keras.Model(inputs, outputs._keras_mask)


def masked_arrays(shapes, seed):
    """Random arrays, zero where a random mask is False (where
    `keras.layers.Masking()` masks them out), and those masks."""
    arrays = make_inputs(shapes, seed=seed)
    masks = random_masks(arrays, seed=seed + 1)
    arrays = [a * m[..., None] for a, m in zip(arrays, masks, strict=True)]
    return arrays, masks


# `weights`: the numbers of trainable and non-trainable weights: fusion
# weights (1), a projection's kernel and bias (2), a BatchNormalization's
# gamma and beta (2) and moving mean and variance (2, non-trainable).
LAYER_CASES = pytest.mark.parametrize(
    "init_kwargs, input_shape, expected, weights",
    [
        ({"mode": "add"}, [(2, 9, 8, 4), (2, 9, 8, 4)], (2, 9, 8, 4), (0, 0)),
        ({"mode": "concat"}, [(2, 11, 3), (2, 11, 2)], (2, 11, 5), (0, 0)),
        (
            {"mode": "concat", "data_format": "channels_first"},
            [(2, 2, 5, 4, 3), (2, 3, 5, 4, 3), (2, 1, 5, 4, 3)],
            (2, 6, 5, 4, 3),
            (0, 0),
        ),
        (
            {"mode": "weighted_add"},
            [(2, 7, 6, 3), (2, 7, 6, 3), (2, 7, 6, 3)],
            (2, 7, 6, 3),
            (1, 0),
        ),
        (
            {
                "mode": "weighted_add",
                "weight_per_channel": True,
                "data_format": "channels_first",
            },
            [(2, 3, 7, 6), (2, 3, 7, 6)],
            (2, 3, 7, 6),
            (1, 0),
        ),
        (
            {"mode": "concat", "batch_norm_before_concat": True},
            [(4, 6, 6, 3), (4, 6, 6, 5)],
            (4, 6, 6, 8),
            (4, 4),
        ),
        (
            {"mode": "add", "align": "crop"},
            [(2, 13, 10, 3), (2, 9, 12, 3)],
            (2, 9, 10, 3),
            (0, 0),
        ),
        (
            {"mode": "concat", "align": "pad"},
            [(2, 5, 6, 4, 2), (2, 7, 4, 4, 3)],
            (2, 7, 6, 4, 5),
            (0, 0),
        ),
        (
            {"mode": "add", "projection": 4},
            [(2, 8, 8, 6), (2, 8, 8, 4)],
            (2, 8, 8, 4),
            (2, 0),
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
            (3, 0),
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
def test_layer_checks(init_kwargs, input_shape, expected, weights, tmp_path):
    run_layer_test(
        FusionSelector,
        init_kwargs,
        input_shape,
        tmp_path,
        expected_num_trainable_weights=weights[0],
        expected_num_non_trainable_weights=weights[1],
        expected_output_shape=expected,
        atol=1e-5,
    )


@EXPORT_FORMATS
@LAYER_CASES
def test_export(
    export_format, init_kwargs, input_shape, expected, weights, tmp_path
):
    run_export_test(
        FusionSelector,
        init_kwargs,
        input_shape,
        tmp_path,
        1e-5,
        export_format=export_format,
    )


PROJECTION_CHANNELS_FIRST = {
    "mode": "weighted_add",
    "projection": 3,
    "align": "crop",
    "data_format": "channels_first",
}


def test_layer_checks_projection_channels_first(tmp_path):
    skip_unless_channels_first_convolution_runs()
    run_layer_test(
        FusionSelector,
        PROJECTION_CHANNELS_FIRST,
        [(2, 5, 9, 8), (2, 3, 7, 8)],
        tmp_path,
        # One projection (kernel, bias) and the fusion weights.
        expected_num_trainable_weights=3,
        expected_num_non_trainable_weights=0,
        expected_output_shape=(2, 3, 7, 8),
        float16_kernels_missing=missing_float16_kernels(4, "channels_first"),
        atol=1e-5,
    )


@EXPORT_FORMATS
def test_export_projection_channels_first(export_format, tmp_path):
    skip_unless_channels_first_convolution_runs()
    run_export_test(
        FusionSelector,
        PROJECTION_CHANNELS_FIRST,
        [(2, 5, 9, 8), (2, 3, 7, 8)],
        tmp_path,
        atol=1e-5,
        export_format=export_format,
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
    """A FusionSelector with batch_norm_before_concat and per-input
    BatchNormalization references.

    All start from the same random gamma, beta and moving statistics, so
    that the comparison does not rest on the default ones and zeros.
    """
    layer = FusionSelector(
        mode="concat",
        batch_norm_before_concat=True,
        batch_norm_momentum=momentum,
        batch_norm_epsilon=BN_EPSILON,
    )
    layer.build(shapes)
    references = []
    rng = np.random.default_rng(4)
    for index, shape in enumerate(shapes):
        reference = keras.layers.BatchNormalization(
            momentum=momentum, epsilon=BN_EPSILON
        )
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
    # Inputs on different scales, as the deconvolution and convolution
    # branches of "深度特征融合---理解add和concat之多层特征融合" are: one
    # shared normalization could not fit both.
    arrays = make_inputs(shapes, seed=10 + step)
    return [a * (1 + 4 * i) + 3 * i for i, a in enumerate(arrays)]


def test_batch_norm_before_concat_matches_bn_then_concatenate_in_training():
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
        _assert_moving_statistics_equal(layer, references)


def _assert_moving_statistics_equal(layer, references):
    """`layer`'s BatchNorm sublayer `bn_i` has the moving statistics of
    `references[i]`."""
    for index, reference in enumerate(references):
        variables = sublayer_variables(layer, f"bn_{index}")
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(
                to_numpy(variables[name]),
                to_numpy(getattr(reference, name)),
                rtol=0,
                atol=1e-5,
            )


def test_batch_norm_before_concat_matches_bn_then_concatenate_in_inference():
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


def test_batch_norm_before_concat_fit_steps_match_bn_then_concatenate():
    shapes = [(8, 5, 5, 3), (8, 5, 5, 2)]
    inputs = [keras.Input(s[1:]) for s in shapes]
    model = keras.Model(
        inputs,
        FusionSelector(
            mode="concat",
            batch_norm_before_concat=True,
            batch_norm_momentum=0.9,
            batch_norm_epsilon=BN_EPSILON,
        )(inputs),
    )
    reference_inputs = [keras.Input(s[1:]) for s in shapes]
    reference_model = keras.Model(
        reference_inputs,
        keras.layers.Concatenate()(
            [
                keras.layers.BatchNormalization(
                    momentum=0.9, epsilon=BN_EPSILON
                )(x)
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


def test_batch_norm_before_concat_gives_each_input_its_own_batch_norm():
    layer = FusionSelector(mode="concat", batch_norm_before_concat=True)
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
    "init_kwargs, shapes",
    [
        ({}, [(2, 6, 5, 3)] * 3),
        (
            {"weight_per_channel": True, "data_format": "channels_first"},
            [(2, 3, 6, 5)] * 2,
        ),
        (
            {"weight_per_channel": True, "projection": 3, "align": "crop"},
            [(2, 7, 6, 3), (2, 6, 5, 4)],
        ),
        (
            {"normalization": "softmax", "projection": 3, "align": "crop"},
            [(2, 7, 6, 3), (2, 6, 5, 4), (2, 6, 6, 3)],
        ),
    ],
    ids=[
        "per-input",
        "per-channel-channels-first",
        "projection-crop",
        "softmax-projection-crop",
    ],
)
def test_weighted_add_mode_is_a_weighted_add_after_projection_and_alignment(
    init_kwargs, shapes
):
    # The numerics of the fusion itself are WeightedAdd's tests.
    arrays = make_inputs(shapes, seed=3)
    layer = FusionSelector(mode="weighted_add", name="fuse", **init_kwargs)
    layer.build(shapes)
    weights = np.random.default_rng(3).uniform(
        -0.5, 2.0, layer.fusion_weights.shape
    )
    layer.fusion_weights.assign(weights)
    reference = WeightedAdd(
        weight_per_channel=init_kwargs.get("weight_per_channel", False),
        normalization=init_kwargs.get("normalization", "fast"),
        data_format=init_kwargs.get("data_format"),
    )
    projected = []
    for index, x in enumerate(arrays):
        variables = sublayer_variables(layer, f"projection_{index}")
        if variables:
            kernel = to_numpy(variables["kernel"])[0, 0]
            x = x @ kernel + to_numpy(variables["bias"])
        projected.append(x)
    aligned = keras_fusion.ops.crop_to_smallest(
        projected, data_format=layer.data_format
    )
    reference.build([tuple(x.shape) for x in aligned])
    reference.fusion_weights.assign(weights)
    np.testing.assert_allclose(
        to_numpy(layer(arrays)), to_numpy(reference(aligned)), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    "weight_per_channel, expected_shape", [(False, (3,)), (True, (3, 4))]
)
def test_weighted_add_mode_keeps_its_fusion_weights_reachable(
    weight_per_channel, expected_shape
):
    layer = FusionSelector(
        mode="weighted_add", weight_per_channel=weight_per_channel, name="fuse"
    )
    layer.build([(None, 5, 5, 4)] * 3)
    # The variable of the `weighted_add` sublayer, also an attribute here.
    assert layer.fusion_weights.path == "fuse/weighted_add/fusion_weights"
    assert [v.path for v in layer.trainable_weights] == [
        "fuse/weighted_add/fusion_weights"
    ]
    assert layer.fusion_weights.shape == expected_shape
    np.testing.assert_array_equal(
        to_numpy(layer.fusion_weights), np.ones(expected_shape)
    )


@pytest.mark.parametrize("mode", ["add", "concat"])
def test_fusion_weights_exist_only_in_weighted_add_mode(mode):
    layer = FusionSelector(mode=mode)
    layer.build([(None, 5, 5, 4)] * 2)
    with pytest.raises(AttributeError, match="mode='weighted_add'"):
        layer.fusion_weights  # noqa: B018
    assert not hasattr(layer, "fusion_weights")
    # Other missing attributes keep Python's (or torch.nn.Module's) error.
    with pytest.raises(AttributeError, match="no_such_attribute"):
        layer.no_such_attribute  # noqa: B018


@pytest.mark.parametrize("num_inputs", [2, 3])
def test_add_then_conv_equals_concat_then_conv_with_repeated_kernel(
    num_inputs,
):
    # "深度特征融合---理解add和concat之多层特征融合": add followed by a
    # convolution is concat followed by a convolution whose kernel is
    # shared by (repeated for) every input.
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
        fusion_epsilon=1e-3,
        batch_norm_momentum=0.9,
        batch_norm_epsilon=1e-5,
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
            layer_config["config"]["batch_norm_before_concat"] = True
    switched = keras.Model.from_config(config)
    arrays = make_inputs([(2, 6, 6, 3), (2, 6, 6, 3)], seed=1)
    assert switched.output_shape == (None, 6)
    np.testing.assert_allclose(
        to_numpy(switched(arrays)),
        to_numpy(
            keras.layers.GlobalAveragePooling2D()(
                FusionSelector(mode="concat", batch_norm_before_concat=True)(
                    arrays
                )
            )
        ),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "init_kwargs, shapes",
    [
        (
            {"mode": "concat", "batch_norm_before_concat": True},
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
        {"mode": "concat", "batch_norm_before_concat": True},
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
def test_fusion_selector_errors_if_batch_norm_before_concat_without_concat(
    mode,
):
    with pytest.raises(
        ValueError,
        match="`batch_norm_before_concat=True`.*only be used with "
        "mode='concat'.*"
        f"Received: batch_norm_before_concat=True, mode='{mode}'",
    ):
        FusionSelector(mode=mode, batch_norm_before_concat=True)


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
def test_fusion_selector_errors_if_normalization_without_weighted_add(mode):
    with pytest.raises(
        ValueError,
        match="`normalization` should only be set with mode='weighted_add'. "
        f"Received: normalization='softmax', mode='{mode}'",
    ):
        FusionSelector(mode=mode, normalization="softmax")


def test_fusion_selector_errors_if_normalization_is_unknown():
    with pytest.raises(
        ValueError,
        match=r"`normalization` should be one of \('fast', 'softmax'\)\. "
        "Received: normalization='attn'",
    ):
        FusionSelector(mode="weighted_add", normalization="attn")


def test_fusion_selector_softmax_round_trips_through_get_config():
    layer = FusionSelector(mode="weighted_add", normalization="softmax")
    revived = FusionSelector.from_config(layer.get_config())
    assert revived.get_config() == layer.get_config()
    assert (revived.normalization, revived.fusion_epsilon) == ("softmax", None)


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


@pytest.mark.parametrize(
    "name", ["batch_norm_before_concat", "weight_per_channel"]
)
def test_fusion_selector_errors_if_flag_is_not_a_bool(name):
    with pytest.raises(
        TypeError, match=f"`{name}` should be a bool. Received: {name}='yes'"
    ):
        FusionSelector(mode="weighted_add", **{name: "yes"})


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("fusion_epsilon", 0.0, "a positive, finite number"),
        ("fusion_epsilon", "small", "a positive, finite number"),
        ("batch_norm_epsilon", -1e-3, "a positive, finite float"),
        ("batch_norm_momentum", 1.5, r"a float in \[0, 1\]"),
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
        {"mode": "concat", "batch_norm_before_concat": True},
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


@pytest.mark.parametrize(
    "mode, keras_layer",
    [
        ("add", keras.layers.Add),
        ("weighted_add", keras.layers.Add),
        ("concat", keras.layers.Concatenate),
    ],
)
@pytest.mark.parametrize(
    "masked",
    [(True, True, True), (True, False, True), (False, False, False)],
    ids=["all-masked", "one-unmasked", "none-masked"],
)
def test_masks_combine_as_in_keras_merging_layers(mode, keras_layer, masked):
    arrays = make_inputs([(2, 9, 3)] * 3, seed=1)
    masks = [
        m if keep else None
        for m, keep in zip(random_masks(arrays, seed=2), masked, strict=True)
    ]
    expected = keras_layer().compute_mask(arrays, masks)
    output = FusionSelector(mode=mode).compute_mask(arrays, masks)
    if expected is None:
        assert output is None
    else:
        np.testing.assert_array_equal(to_numpy(output), to_numpy(expected))


@pytest.mark.parametrize(
    "init_kwargs, keras_layer",
    [
        ({"mode": "add"}, keras.layers.Add),
        ({"mode": "weighted_add"}, keras.layers.Add),
        ({"mode": "add", "projection": 4}, keras.layers.Add),
        ({"mode": "concat"}, keras.layers.Concatenate),
        (
            {"mode": "concat", "batch_norm_before_concat": True},
            keras.layers.Concatenate,
        ),
    ],
)
def test_mask_propagates_through_a_functional_model_as_in_keras(
    init_kwargs, keras_layer
):
    arrays, _ = masked_arrays([(3, 7, 3), (3, 7, 3)], seed=3)
    inputs = [keras.Input((7, 3)), keras.Input((7, 3))]
    masked = [keras.layers.Masking()(x) for x in inputs]
    expected = to_numpy(mask_model(inputs, keras_layer()(masked))(arrays))
    assert not expected.all()
    output = mask_model(inputs, FusionSelector(**init_kwargs)(masked))(arrays)
    np.testing.assert_array_equal(to_numpy(output), expected)


@pytest.mark.parametrize("mode", ["add", "concat"])
@pytest.mark.parametrize(
    "shapes, data_format",
    [
        ([(2, 11, 3), (2, 8, 3)], "channels_last"),
        ([(2, 12, 3), (2, 8, 3)], "channels_last"),
        ([(2, 13, 10, 3), (2, 9, 13, 3), (2, 11, 11, 3)], "channels_last"),
        ([(2, 3, 13, 10), (2, 3, 9, 13)], "channels_first"),
        ([(1, 3, 9, 8, 7), (1, 3, 6, 8, 4)], "channels_first"),
    ],
    ids=[
        "1d-odd",
        "1d-even",
        "2d-three-inputs",
        "2d-channels-first",
        "3d-channels-first",
    ],
)
def test_align_crop_crops_masks_with_the_data(mode, shapes, data_format):
    arrays = make_inputs(shapes, seed=4)
    masks = random_masks(arrays, data_format, seed=5)
    layer = FusionSelector(mode=mode, align="crop", data_format=data_format)
    np.testing.assert_array_equal(
        to_numpy(layer.compute_mask(arrays, masks)),
        numpy_fused_mask(arrays, masks, "crop", data_format),
    )


@pytest.mark.parametrize("mode", ["add", "weighted_add", "concat"])
@pytest.mark.parametrize(
    "shapes, data_format, masked",
    [
        ([(2, 11, 3), (2, 8, 3)], "channels_last", (True, True)),
        ([(2, 11, 3), (2, 8, 3)], "channels_last", (True, False)),
        ([(2, 12, 3), (2, 8, 3)], "channels_last", (True, True)),
        ([(2, 9, 6, 3), (2, 6, 9, 3)], "channels_last", (True, False)),
        ([(2, 3, 9, 6), (2, 3, 6, 9)], "channels_first", (False, True)),
    ],
    ids=[
        "1d-odd",
        "1d-unmasked-input-padded",
        "1d-even",
        "2d-unmasked-input-padded",
        "2d-channels-first",
    ],
)
def test_align_pad_masks_out_padded_positions(
    mode, shapes, data_format, masked
):
    arrays = make_inputs(shapes, seed=6)
    masks = [
        m if keep else None
        for m, keep in zip(
            random_masks(arrays, data_format, seed=7), masked, strict=True
        )
    ]
    layer = FusionSelector(mode=mode, align="pad", data_format=data_format)
    output = to_numpy(layer.compute_mask(arrays, masks))
    expected = numpy_fused_mask(arrays, masks, "pad", data_format)
    assert not expected.all()
    np.testing.assert_array_equal(output, expected)


@pytest.mark.parametrize("align", ["crop", "pad"])
def test_masks_with_none_spatial_sizes_follow_runtime_shapes(align):
    inputs = [keras.Input((None, None, 2)), keras.Input((None, None, 2))]
    fused = FusionSelector(mode="add", align=align)(
        [keras.layers.Masking()(x) for x in inputs]
    )
    assert tuple(fused._keras_mask.shape) == (None, None, None)
    model = mask_model(inputs, fused)
    for shapes in ([(1, 10, 7, 2), (1, 8, 9, 2)], [(2, 5, 5, 2), (2, 6, 4, 2)]):
        arrays, masks = masked_arrays(shapes, seed=8)
        expected = numpy_fused_mask(arrays, masks, align)
        np.testing.assert_array_equal(to_numpy(model(arrays)), expected)
        np.testing.assert_array_equal(model.predict_on_batch(arrays), expected)


@pytest.mark.parametrize("mode", ["add", "weighted_add", "concat"])
@pytest.mark.parametrize("align", [None, "crop", "pad"])
def test_inputs_without_masks_give_no_mask(mode, align):
    arrays = make_inputs([(2, 9, 3), (2, 9, 3)])
    layer = FusionSelector(mode=mode, align=align)
    assert layer.compute_mask(arrays, None) is None
    assert layer.compute_mask(arrays, [None, None]) is None
    outputs = layer([keras.Input((9, 3)), keras.Input((9, 3))])
    assert getattr(outputs, "_keras_mask", None) is None


@pytest.mark.parametrize(
    "init_kwargs, shapes",
    [
        ({"mode": "add"}, [(2, 7, 3), (2, 7, 3)]),
        (
            {"mode": "concat", "batch_norm_before_concat": True},
            [(2, 7, 3), (2, 7, 2)],
        ),
        (
            {"mode": "weighted_add", "projection": 4, "align": "pad"},
            [(2, 7, 3), (2, 5, 4)],
        ),
    ],
    ids=["add", "bn-before-concat", "weighted-add-projection-pad"],
)
def test_masked_inputs_keep_their_mask_without_a_keras_warning(
    init_kwargs, shapes
):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = [keras.Input(s[1:]) for s in shapes]
        fused = FusionSelector(**init_kwargs)(
            [keras.layers.Masking()(x) for x in inputs]
        )
        model = keras.Model(inputs, fused)
        model(make_inputs(shapes), training=True)
        model(make_inputs(shapes), training=False)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "destroy the mask" in m], messages
    assert fused._keras_mask is not None


@pytest.mark.parametrize(
    "init_kwargs, shapes, mask_shape, expected",
    [
        (
            {"mode": "add"},
            [(2, 9, 8, 3), (2, 9, 8, 3)],
            (2, 9, 8, 3),
            r"\(axis 3\): \(2, 9, 8\) for input 0 of shape \(2, 9, 8, 3\)",
        ),
        (
            {"mode": "concat", "align": "crop"},
            [(2, 9, 8, 3), (2, 7, 8, 2)],
            (2, 7, 8),
            r"\(axis 3\): \(2, 9, 8\) for input 0",
        ),
        (
            {"mode": "concat", "data_format": "channels_first"},
            [(2, 3, 9, 8), (2, 2, 9, 8)],
            (2, 3, 9),
            r"\(axis 1\): \(2, 9, 8\) for input 0",
        ),
    ],
    ids=["with-channel-axis", "wrong-size", "channels-first"],
)
def test_fusion_selector_errors_if_mask_shape_is_wrong(
    init_kwargs, shapes, mask_shape, expected
):
    arrays = make_inputs(shapes)
    mask = [np.ones(mask_shape, dtype=bool), None]
    layer = FusionSelector(**init_kwargs)
    message = (
        f"`mask` should hold one mask per input.*{expected}.*"
        rf"Received: mask\[0\]\.shape={re.escape(str(mask_shape))}"
    )
    with pytest.raises(ValueError, match=message):
        layer(arrays, mask=mask)
    with pytest.raises(ValueError, match=message):
        layer.compute_mask(arrays, mask)


def test_fusion_selector_errors_if_mask_count_differs_from_inputs():
    arrays = make_inputs([(2, 9, 3), (2, 9, 3)])
    with pytest.raises(
        ValueError,
        match=r"`mask` should be a list of one mask \(or None\) per input.*"
        "2 here. Received: a list of length 1",
    ):
        FusionSelector(mode="add").compute_mask(arrays, [None])


def _masked_bn_models(shapes, momentum, masking=True):
    """FusionSelector(batch_norm_before_concat=True) and the plain Keras wiring
    (BatchNormalization per input, then Concatenate), both after
    `keras.layers.Masking` (or without it), from one random initial state."""
    inputs = [keras.Input(s[1:]) for s in shapes]
    masked = [keras.layers.Masking()(x) if masking else x for x in inputs]
    ours = keras.Model(
        inputs,
        FusionSelector(
            mode="concat",
            batch_norm_before_concat=True,
            batch_norm_momentum=momentum,
            batch_norm_epsilon=BN_EPSILON,
        )(masked),
    )
    by_hand = keras.Model(
        inputs,
        keras.layers.Concatenate()(
            [
                keras.layers.BatchNormalization(
                    momentum=momentum, epsilon=BN_EPSILON
                )(x)
                for x in masked
            ]
        ),
    )
    rng = np.random.default_rng(6)
    state = [
        rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in ours.weights
    ]
    ours.set_weights(state)
    by_hand.set_weights(state)
    return ours, by_hand


def test_batch_norm_before_concat_with_masks_matches_masked_batch_norm():
    shapes = [(8, 5, 5, 3), (8, 5, 5, 2)]
    ours, by_hand = _masked_bn_models(shapes, momentum=0.9)
    unmasked, _ = _masked_bn_models(shapes, momentum=0.9, masking=False)
    for step in range(2):
        arrays, masks = masked_arrays(shapes, seed=20 + step)
        # Inputs on different scales, as in the tests without masks, and
        # zero where masked.
        arrays = [
            (a * (1 + 4 * i) + 3 * i) * m[..., None]
            for i, (a, m) in enumerate(zip(arrays, masks, strict=True))
        ]
        for training in (True, False):
            np.testing.assert_allclose(
                to_numpy(ours(arrays, training=training)),
                to_numpy(by_hand(arrays, training=training)),
                rtol=0,
                atol=1e-5,
            )
        # Moving statistics of the valid positions only, updated once.
        for weight, reference in zip(
            ours.weights, by_hand.weights, strict=True
        ):
            np.testing.assert_allclose(
                to_numpy(weight), to_numpy(reference), rtol=0, atol=1e-5
            )
        unmasked(arrays, training=True)
    # The masks change the statistics: they are what is compared.
    assert not np.allclose(
        to_numpy(unmasked.weights[2]), to_numpy(ours.weights[2]), atol=1e-4
    )


def test_batch_norm_before_concat_normalizes_with_masks_passed_explicitly():
    shapes = [(8, 5, 5, 3), (8, 5, 5, 2)]
    layer, references = _bn_layers_with_shared_initial_state(shapes, 0.9)
    arrays = _batches(shapes, 0)
    masks = [random_masks(arrays, seed=9)[0], None]
    output = layer(arrays, mask=masks, training=True)
    expected = keras.layers.Concatenate()(
        [
            bn(x, mask=m, training=True)
            for bn, x, m in zip(references, arrays, masks, strict=True)
        ]
    )
    np.testing.assert_allclose(
        to_numpy(output), to_numpy(expected), rtol=0, atol=1e-5
    )
    _assert_moving_statistics_equal(layer, references)


def test_batch_norm_before_concat_errors_if_masked_with_channels_first():
    arrays = make_inputs([(2, 3, 5, 5), (2, 2, 5, 5)])
    layer = FusionSelector(
        mode="concat",
        batch_norm_before_concat=True,
        data_format="channels_first",
    )
    with pytest.raises(
        ValueError,
        match="`batch_norm_before_concat=True` does not take masked inputs "
        "with data_format='channels_first'.*data_format='channels_last'.*"
        r"Received: masks for inputs \[1\]",
    ):
        layer(arrays, mask=[None, np.ones((2, 5, 5), dtype=bool)])
    # Without masks, channels_first works as before.
    assert tuple(layer(arrays, mask=[None, None]).shape) == (2, 5, 5, 5)


def test_projection_convolutions_get_their_own_regularizer():
    layer = FusionSelector(
        mode="add", projection=4, kernel_regularizer=keras.regularizers.L2(0.1)
    )
    layer.build([(None, 5, 5, 6), (None, 5, 5, 2)])
    first = sublayer_variables(layer, "projection_0")["kernel"].regularizer
    second = sublayer_variables(layer, "projection_1")["kernel"].regularizer
    assert first is not second
    assert all(r is not layer.kernel_regularizer for r in (first, second))
    for regularizer in (first, second):
        assert regularizer.get_config() == layer.kernel_regularizer.get_config()
