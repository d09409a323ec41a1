"""`FeaturePyramid` against a NumPy FPN written from Lin et al. 2017 (and
RetinaNet's P6/P7), at odd sizes, recomputed and saved."""

import keras
import numpy as np
import pytest

from keras_fusion import FeaturePyramid
from keras_fusion import Recompute
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.backend_utils import weighted_loss
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import export_limit
from tests.layer_test_case import missing_float16_kernels
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test
from tests.layer_test_case import skip_unless_channels_first_convolution_runs

# A 300x333 image through a backbone whose stride-2 layers pad ("same"):
# each level rounds up. And one whose valid poolings round down.
ROUNDED_UP = {"P3": (38, 42), "P4": (19, 21), "P5": (10, 11)}
ROUNDED_DOWN = {"P3": (37, 41), "P4": (18, 20), "P5": (9, 10)}
CHANNELS = {"P3": 5, "P4": 6, "P5": 7}
P2_CHANNELS = {"P2": 3, **CHANNELS}


def _levels(sizes, seed=0, batch=2, channels=CHANNELS):
    rng = np.random.default_rng(seed)
    return {
        key: rng.normal(size=(batch, *size, channels[key])).astype("float32")
        for key, size in sizes.items()
    }


def numpy_conv(x, kernel, bias, stride=1):
    """A "same" 2D convolution as Keras pads it (the extra pixel after)."""
    _, height, width, _ = x.shape
    kh, kw = kernel.shape[:2]
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + kh - height, 0)
    pad_w = max((out_w - 1) * stride + kw - width, 0)
    x = np.pad(
        x,
        (
            (0, 0),
            (pad_h // 2, pad_h - pad_h // 2),
            (pad_w // 2, pad_w - pad_w // 2),
            (0, 0),
        ),
    )
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :,
                i : i + stride * out_h : stride,
                j : j + stride * out_w : stride,
            ]
            out += np.einsum("nhwc,cf->nhwf", patch, kernel[i, j])
    return out + bias


def numpy_align(x, size, method):
    """Centre-crop or zero-pad `x` to `size`: `d // 2` before, the rest
    after."""
    for axis, target in zip((1, 2), size, strict=True):
        difference = abs(x.shape[axis] - target)
        before, after = difference // 2, difference - difference // 2
        if method == "crop":
            x = np.take(x, range(before, x.shape[axis] - after), axis=axis)
        else:
            widths = [(0, 0)] * 4
            widths[axis] = (before, after)
            x = np.pad(x, widths)
    return x


def numpy_feature_pyramid(
    levels, weights, max_level=7, use_p5=False, align="crop"
):
    """FPN's lateral 1x1 convolutions, top-down nearest upsampling added to
    the laterals, 3x3 output convolutions; RetinaNet's P6 (stride-2 3x3 of
    C5, or P5) and P7 (of ReLU(P6))."""
    exponents = sorted(int(k[1:]) for k in levels)
    x = {int(k[1:]): v.astype("float64") for k, v in levels.items()}
    lateral = {
        k: numpy_conv(x[k], *weights[f"lateral_p{k}"]) for k in exponents
    }
    top = exponents[-1]
    merged = {top: lateral[top]}
    for k in reversed(exponents[:-1]):
        up = merged[k + 1].repeat(2, axis=1).repeat(2, axis=2)
        merged[k] = lateral[k] + numpy_align(up, lateral[k].shape[1:3], align)
    out = {
        k: numpy_conv(merged[k], *weights[f"output_p{k}"]) for k in exponents
    }
    source = out[top] if use_p5 else x[top]
    for k in range(top + 1, max_level + 1):
        if k > top + 1:
            source = np.maximum(source, 0)
        out[k] = numpy_conv(source, *weights[f"output_p{k}"], stride=2)
        source = out[k]
    return {f"P{k}": v for k, v in out.items()}


def _sublayers(neck):
    """Every layer of a neck's network, through its sub-models and their
    `Recompute` wrappers."""
    found, pending = [], [neck.network]
    while pending:
        layer = pending.pop()
        if isinstance(layer, Recompute):
            pending.append(layer.layer)
        elif isinstance(layer, keras.Model):
            pending.extend(layer.layers)
        else:
            found.append(layer)
    return found


def _weights(layer):
    return {
        sublayer.name: [to_numpy(w) for w in sublayer.weights]
        for sublayer in _sublayers(layer)
        if isinstance(sublayer, keras.layers.Conv2D)
    }


@pytest.mark.parametrize(
    "sizes, align", [(ROUNDED_UP, "crop"), (ROUNDED_DOWN, "pad")]
)
@pytest.mark.parametrize("use_p5", [False, True])
def test_pyramid_matches_numpy_fpn(sizes, align, use_p5):
    levels = _levels(sizes)
    layer = FeaturePyramid(num_filters=4, use_p5=use_p5, align=align)
    outputs = layer(levels)
    expected = numpy_feature_pyramid(
        levels, _weights(layer), use_p5=use_p5, align=align
    )
    assert sorted(outputs) == ["P3", "P4", "P5", "P6", "P7"]
    for key, value in expected.items():
        np.testing.assert_allclose(
            to_numpy(outputs[key]), value, rtol=0, atol=1e-5, err_msg=key
        )


def test_levels_outside_min_and_max_level_are_ignored():
    levels = _levels({"P2": (75, 84), **ROUNDED_UP}, channels=P2_CHANNELS)
    layer = FeaturePyramid(num_filters=4, max_level=5)
    outputs = layer(levels)
    assert sorted(outputs) == ["P3", "P4", "P5"]
    del levels["P2"]
    expected = numpy_feature_pyramid(levels, _weights(layer), max_level=5)
    for key, value in expected.items():
        np.testing.assert_allclose(
            to_numpy(outputs[key]), value, rtol=0, atol=1e-5, err_msg=key
        )


def test_output_shapes_follow_the_levels_at_any_size():
    inputs = {
        key: keras.Input((None, None, channels), name=key)
        for key, channels in CHANNELS.items()
    }
    layer = FeaturePyramid(num_filters=8)
    model = keras.Model(inputs, layer(inputs))
    outputs = model.predict(_levels(ROUNDED_UP), verbose=0)
    sizes = [outputs[f"P{k}"].shape[1:3] for k in range(3, 8)]
    assert sizes == [(38, 42), (19, 21), (10, 11), (5, 6), (3, 3)]
    assert layer.compute_output_shape(
        {k: (2, *s, CHANNELS[k]) for k, s in ROUNDED_UP.items()}
    ) == {
        "P3": (2, 38, 42, 8),
        "P4": (2, 19, 21, 8),
        "P5": (2, 10, 11, 8),
        "P6": (2, 5, 6, 8),
        "P7": (2, 3, 3, 8),
    }


def test_upsampled_map_smaller_than_its_lateral_fails_when_cropped():
    # A backbone that rounds down, with `align="crop"`: the upsampled P4
    # (36x40) is smaller than P3 (37x41): an error, not a wrong map.
    with pytest.raises(Exception, match="crop"):
        FeaturePyramid(num_filters=4)(_levels(ROUNDED_DOWN))


def _flat_model(layer):
    """A model of the levels as a list (P3, P4, P5), the pyramid flattened
    into one tensor: what `value_and_grads` takes on every backend."""
    inputs = [
        keras.Input((None, None, channels), name=key)
        for key, channels in CHANNELS.items()
    ]
    outputs = layer(dict(zip(CHANNELS, inputs, strict=True)))
    flat = [keras.layers.Flatten()(outputs[f"P{k}"]) for k in range(3, 8)]
    return keras.Model(inputs, keras.layers.Concatenate()(flat))


def _mean_of_squares(y):
    # Outputs reach 1e2 here, where the suite's y * sin(y) loss would turn
    # float32 rounding of y into gradient noise of 1e-4; a sum's steps
    # would make the weights diverge.
    return keras.ops.mean(keras.ops.square(keras.ops.cast(y, "float32")))


def assert_trains_as_the_plain_neck(
    ours, plain, loss_fn=weighted_loss, learning_rate=0.1
):
    """`ours` (a recomputing neck's `_flat_model`) trains as `plain` over 3
    SGD steps on levels in `keras.config.floatx()`: outputs to 1e-6 and
    every gradient (the inputs' first) to 1e-5 of each tensor's largest
    magnitude, non-trainable variables to 1e-6 after each step; both take
    the plain model's update. Recompiled apart (JAX's remat), float32
    sums round apart, hence tolerances of each tensor's scale."""
    ours.set_weights(plain.get_weights())
    optimizer = keras.optimizers.SGD(learning_rate)
    for step in range(3):
        levels = [
            x.astype(keras.config.floatx())
            for x in _levels(ROUNDED_UP, seed=step).values()
        ]
        y_plain, g_plain = value_and_grads(plain, levels, loss_fn)
        y_ours, g_ours = value_and_grads(ours, levels, loss_fn)
        scale = np.max(np.abs(y_plain))
        np.testing.assert_allclose(y_ours, y_plain, rtol=0, atol=1e-6 * scale)
        for mine, reference in zip(
            [*g_ours[0], *g_ours[1:]], [*g_plain[0], *g_plain[1:]], strict=True
        ):
            scale = np.max(np.abs(reference))
            np.testing.assert_allclose(
                mine, reference, rtol=0, atol=1e-5 * scale
            )
        for mine, reference in zip(
            ours.non_trainable_weights, plain.non_trainable_weights, strict=True
        ):
            np.testing.assert_allclose(
                to_numpy(mine), to_numpy(reference), atol=1e-6
            )
        optimizer.apply(
            [keras.ops.convert_to_tensor(g) for g in g_plain[1:]],
            plain.trainable_variables,
        )
        ours.set_weights(plain.get_weights())


@pytest.mark.parametrize("fusion", ["add", "weighted_add"])
def test_recomputed_pyramid_trains_as_the_plain_one(fusion):
    keras.utils.set_random_seed(0)
    kwargs = {"num_filters": 4, "batch_norm": True, "fusion": fusion}
    plain = _flat_model(FeaturePyramid(**kwargs))
    neck = FeaturePyramid(recompute=True, **kwargs)
    ours = _flat_model(neck)
    assert isinstance(neck.network, Recompute)
    assert_trains_as_the_plain_neck(ours, plain, _mean_of_squares)


def test_keras_file_round_trip(tmp_path):
    layer = FeaturePyramid(
        num_filters=4, fusion="weighted_add", normalization="softmax"
    )
    model = _flat_model(layer)
    levels = list(_levels(ROUNDED_UP).values())
    expected = model.predict(levels, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(levels, verbose=0), expected)
    config = layer.get_config()
    assert FeaturePyramid.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_filters": 0}, ValueError, "`num_filters`"),
        ({"min_level": 5, "max_level": 4}, ValueError, "`max_level`"),
        ({"fusion": "max"}, ValueError, "`fusion` should be one of"),
        ({"align": "resize"}, ValueError, "`align` should be one of"),
        ({"normalization": "softmax"}, ValueError, "fusion='weighted_add'"),
        ({"use_p5": "yes"}, TypeError, "`use_p5` should be a bool"),
    ],
)
def test_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        FeaturePyramid(**kwargs)


@pytest.mark.parametrize(
    "levels, match",
    [
        ({"P4": (19, 21), "P5": (10, 11)}, r"from P3 \(`min_level`\)"),
        ({"P3": (38, 42), "P5": (10, 11)}, r"levels \['P3', 'P5'\]"),
    ],
)
def test_missing_levels_are_named(levels, match):
    with pytest.raises(ValueError, match=match):
        FeaturePyramid(num_filters=4)(_levels(levels))


def test_inputs_must_be_a_dict_of_levels():
    x = np.zeros((1, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="dict of backbone levels"):
        FeaturePyramid()([x, x])
    with pytest.raises(ValueError, match="keyed 'Pk'"):
        FeaturePyramid()({"C3": x})


# From a 257x263 image ("same" stride-2 layers): a second odd size.
ROUNDED_UP_SQUARE = {"P3": (33, 33), "P4": (17, 17), "P5": (9, 9)}


def level_shapes(sizes, batch=2, channels=CHANNELS):
    """The harness's input shapes: a dict of full level shapes."""
    return {key: (batch, *size, channels[key]) for key, size in sizes.items()}


@pytest.mark.parametrize(
    "kwargs, trainable, non_trainable",
    [
        # 3 laterals and 5 output convolutions (P3-P7), kernel and bias.
        ({"num_filters": 4}, 16, 0),
        ({"num_filters": 4, "recompute": True}, 16, 0),
        # BatchNorm after the 5 3x3 convolutions, which lose their bias:
        # 3 laterals (6), 5 kernels, 5 gammas and betas (10 trainable,
        # 10 moving statistics), one fusion weight each at P3 and P4.
        (
            {
                "num_filters": 4,
                "fusion": "weighted_add",
                "weight_per_channel": True,
                "normalization": "softmax",
                "batch_norm": True,
            },
            23,
            10,
        ),
        # A 1x1 projection (kernel, bias) after each of the 2 concats.
        ({"num_filters": 4, "fusion": "concat", "use_p5": True}, 20, 0),
    ],
    ids=["add", "recompute", "weighted_add_batch_norm", "concat_use_p5"],
)
def test_layer_checks(kwargs, trainable, non_trainable, tmp_path):
    run_neck_layer_test(
        FeaturePyramid, kwargs, trainable, non_trainable, tmp_path
    )


def run_neck_layer_test(neck_cls, kwargs, trainable, non_trainable, tmp_path):
    """The layer harness on a neck of 4 filters, P3-P7 from the rounded-up
    levels P3-P5 (batch 2)."""
    run_layer_test(
        neck_cls,
        kwargs,
        level_shapes(ROUNDED_UP),
        tmp_path,
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        expected_output_shape={
            "P3": (2, 38, 42, 4),
            "P4": (2, 19, 21, 4),
            "P5": (2, 10, 11, 4),
            "P6": (2, 5, 6, 4),
            "P7": (2, 3, 3, 4),
        },
        float16_kernels_missing=missing_float16_kernels(4, "channels_last"),
        atol=1e-5,
    )


@pytest.mark.slow
@EXPORT_FORMATS
@pytest.mark.parametrize("fusion", ["add", "weighted_add"])
def test_export_runs_without_keras_fusion(fusion, export_format, tmp_path):
    run_neck_export_test(
        FeaturePyramid,
        {"num_filters": 4, "fusion": fusion},
        export_format,
        tmp_path,
        # LiteRT and ONNX Runtime convolve in their own order.
        atol=1e-6 if export_format == "tf_saved_model" else 1e-5,
    )


def run_neck_export_test(
    neck_cls, kwargs, export_format, tmp_path, atol, max_pooling=False
):
    """The harness's export check on a neck, at the rounded-up levels and
    at a second, square odd size."""
    run_export_test(
        neck_cls,
        kwargs,
        level_shapes(ROUNDED_UP),
        tmp_path,
        atol=atol,
        export_format=export_format,
        fails_with=export_limit(export_format, max_pooling=max_pooling),
        second_input_shape=level_shapes(ROUNDED_UP_SQUARE),
    )


def test_mixed_precision_computes_in_float16_with_float32_variables():
    levels = _levels(ROUNDED_UP)
    layer = FeaturePyramid(num_filters=4, dtype="mixed_float16")
    outputs = layer(levels)
    for key, value in outputs.items():
        assert keras.backend.standardize_dtype(value.dtype) == "float16", key
    assert {v.dtype for v in layer.variables} == {"float32"}
    reference = FeaturePyramid(num_filters=4)
    reference(levels)
    reference.set_weights(layer.get_weights())
    expected = reference(levels)
    for key, value in expected.items():
        value = to_numpy(value)
        np.testing.assert_allclose(
            to_numpy(outputs[key]).astype("float32"),
            value,
            rtol=0,
            atol=1e-2 * np.max(np.abs(value)),
            err_msg=key,
        )
    model = _flat_model(FeaturePyramid(num_filters=4, dtype="mixed_float16"))
    model.compile("sgd", "mse")
    inputs = list(levels.values())
    history = model.fit(
        inputs, np.zeros(model.predict(inputs, verbose=0).shape), verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def test_channels_first_matches_channels_last():
    skip_unless_channels_first_convolution_runs()
    levels = _levels(ROUNDED_UP)
    last = FeaturePyramid(num_filters=4, use_p5=True)
    expected = last(levels)
    first = FeaturePyramid(
        num_filters=4, use_p5=True, data_format="channels_first"
    )
    transposed = {k: np.transpose(v, (0, 3, 1, 2)) for k, v in levels.items()}
    first(transposed)
    first.set_weights(last.get_weights())
    outputs = first(transposed)
    for key, value in expected.items():
        np.testing.assert_allclose(
            np.transpose(to_numpy(outputs[key]), (0, 2, 3, 1)),
            to_numpy(value),
            rtol=0,
            atol=1e-5,
            err_msg=key,
        )
