import re
import warnings

import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from tests.backend_utils import to_numpy
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import make_inputs
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test


def numpy_crop_and_concat(arrays, data_format="channels_last"):
    """Independent reference: explicit NumPy slicing + np.concatenate."""
    rank = arrays[0].ndim
    if data_format == "channels_last":
        axes, channel = range(1, rank - 1), rank - 1
    else:
        axes, channel = range(2, rank), 1
    cropped = []
    for a in arrays:
        index = [slice(None)] * rank
        for axis in axes:
            target = min(b.shape[axis] for b in arrays)
            start = (a.shape[axis] - target) // 2
            index[axis] = slice(start, start + target)
        cropped.append(a[tuple(index)])
    return np.concatenate(cropped, axis=channel)


def numpy_crop_and_concat_mask(arrays, masks, data_format="channels_last"):
    """Independent reference for the output mask: each mask (all True for
    `None`) sliced as its array is, then a logical or over the inputs."""
    rank = arrays[0].ndim
    data_axes = (
        range(1, rank - 1)
        if data_format == "channels_last"
        else (range(2, rank))
    )
    targets = [min(a.shape[axis] for a in arrays) for axis in data_axes]
    output = None
    for a, m in zip(arrays, masks, strict=True):
        sizes = [a.shape[axis] for axis in data_axes]
        if m is None:
            m = np.ones((a.shape[0], *sizes), dtype=bool)
        index = [slice(None)]
        for size, target in zip(sizes, targets, strict=True):
            start = (size - target) // 2
            index.append(slice(start, start + target))
        m = np.asarray(m)[tuple(index)]
        output = m if output is None else output | m
    return output


def random_masks(arrays, data_format="channels_last", seed=0):
    """One random boolean mask per array: its shape without channels."""
    rng = np.random.default_rng(seed)
    channel = arrays[0].ndim - 1 if data_format == "channels_last" else 1
    return [rng.random(np.delete(a.shape, channel)) > 0.4 for a in arrays]


def mask_model(inputs, outputs):
    """A model returning the Keras mask that `outputs` carries."""
    return keras.Model(inputs, outputs._keras_mask)


def zero_steps(array, steps):
    """`array` with the given `(sample, step)` positions set to 0, which
    `keras.layers.Masking()` masks out."""
    array = array.copy()
    for sample, step in steps:
        array[sample, step] = 0.0
    return array


LAYER_CASES = pytest.mark.parametrize(
    "input_shape, data_format, expected",
    [
        ([(2, 11, 3), (2, 8, 2)], "channels_last", (2, 8, 5)),
        ([(2, 13, 10, 3), (2, 9, 10, 4)], "channels_last", (2, 9, 10, 7)),
        (
            [(2, 9, 8, 7, 2), (2, 6, 8, 5, 3), (2, 7, 9, 6, 1)],
            "channels_last",
            (2, 6, 8, 5, 6),
        ),
        ([(2, 3, 13, 10), (2, 4, 9, 12)], "channels_first", (2, 7, 9, 10)),
        ([(2, 3, 9, 8, 7), (2, 2, 6, 8, 5)], "channels_first", (2, 5, 6, 8, 5)),
    ],
    ids=["1d", "2d", "3d-three-inputs", "2d-channels-first", "3d-ch-first"],
)


@LAYER_CASES
def test_layer_checks(input_shape, data_format, expected, tmp_path):
    run_layer_test(
        CropAndConcat,
        {"data_format": data_format},
        input_shape,
        tmp_path,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        expected_output_shape=expected,
    )


@EXPORT_FORMATS
@LAYER_CASES
def test_export(export_format, input_shape, data_format, expected, tmp_path):
    run_export_test(
        CropAndConcat,
        {"data_format": data_format},
        input_shape,
        tmp_path,
        export_format=export_format,
    )


@pytest.mark.parametrize(
    "shapes, data_format",
    [
        ([(3, 17, 4), (3, 12, 5)], "channels_last"),
        ([(3, 4, 17), (3, 5, 12)], "channels_first"),
        ([(2, 61, 64, 3), (2, 52, 56, 5)], "channels_last"),
        ([(2, 52, 64, 3), (2, 61, 56, 5), (2, 55, 59, 1)], "channels_last"),
        ([(2, 3, 61, 64), (2, 5, 52, 56)], "channels_first"),
        ([(1, 9, 8, 7, 2), (1, 6, 8, 4, 3)], "channels_last"),
        ([(1, 2, 9, 8, 7), (1, 3, 6, 8, 4)], "channels_first"),
    ],
)
def test_matches_numpy_reference(shapes, data_format):
    arrays = make_inputs(shapes, seed=3)
    output = CropAndConcat(data_format=data_format)(arrays)
    np.testing.assert_array_equal(
        to_numpy(output), numpy_crop_and_concat(arrays, data_format)
    )


def test_matches_cropping2d_and_concatenate_wired_by_hand():
    skip_shape, up_shape = (2, 64, 61, 3), (2, 56, 52, 4)
    skip, up = make_inputs([skip_shape, up_shape], seed=5)
    # 64 -> 56: 4 rows before, 4 after; 61 -> 52: 4 columns before, 5 after.
    skip_in, up_in = keras.Input(skip_shape[1:]), keras.Input(up_shape[1:])
    cropped = keras.layers.Cropping2D(((4, 4), (4, 5)))(skip_in)
    by_hand = keras.Model(
        [skip_in, up_in], keras.layers.Concatenate()([cropped, up_in])
    )
    np.testing.assert_array_equal(
        to_numpy(CropAndConcat()([skip, up])),
        to_numpy(by_hand([skip, up])),
    )


@pytest.mark.parametrize(
    "size, target, first, last", [(61, 52, 4, 55), (64, 56, 4, 59)]
)
def test_crop_keeps_documented_rows(size, target, first, last):
    rows = np.arange(size, dtype="float32").reshape((1, size, 1, 1))
    rows = np.broadcast_to(rows, (1, size, target, 1))
    other = np.zeros((1, target, target, 1), dtype="float32")
    output = to_numpy(CropAndConcat()([rows, other]))
    kept = output[0, :, 0, 0]
    np.testing.assert_array_equal(kept, np.arange(first, last + 1))


def test_equal_sizes_pass_through_uncropped():
    a, b = make_inputs([(2, 7, 5, 3), (2, 7, 5, 2)], seed=7)
    output = to_numpy(CropAndConcat()([a, b]))
    np.testing.assert_array_equal(output, np.concatenate([a, b], axis=-1))


def test_none_spatial_sizes_crop_from_runtime_shapes():
    skip_in = keras.Input((None, None, 3))
    up_in = keras.Input((None, None, 2))
    outputs = CropAndConcat()([skip_in, up_in])
    assert tuple(outputs.shape) == (None, None, None, 5)
    model = keras.Model([skip_in, up_in], outputs)
    for shapes in (
        [(1, 20, 17, 3), (1, 12, 16, 2)],
        [(2, 9, 9, 3), (2, 9, 4, 2)],
    ):
        arrays = make_inputs(shapes, seed=11)
        np.testing.assert_array_equal(
            to_numpy(model(arrays)), numpy_crop_and_concat(arrays)
        )


def test_compute_output_shape_keeps_none_it_cannot_know():
    layer = CropAndConcat()
    shape = layer.compute_output_shape([(None, 64, None, 3), (4, 56, 10, None)])
    assert shape == (4, 56, None, None)


def test_explicit_channel_axis_is_accepted():
    a, b = make_inputs([(2, 3, 9, 8), (2, 2, 7, 8)], seed=2)
    np.testing.assert_array_equal(
        to_numpy(CropAndConcat(axis=1, data_format="channels_first")([a, b])),
        to_numpy(CropAndConcat(axis=-3, data_format="channels_first")([a, b])),
    )
    c, d = make_inputs([(2, 9, 8, 3), (2, 7, 8, 2)], seed=2)
    np.testing.assert_array_equal(
        to_numpy(CropAndConcat(axis=3)([c, d])),
        to_numpy(CropAndConcat(axis=-1)([c, d])),
    )


def test_crop_and_concat_errors_if_fewer_than_two_inputs():
    x = np.zeros((1, 4, 4, 2), dtype="float32")
    with pytest.raises(ValueError, match="list of at least 2 inputs.*1 input"):
        CropAndConcat()([x])
    with pytest.raises(ValueError, match="list of at least 2 inputs"):
        CropAndConcat()(x)


def test_crop_and_concat_errors_if_ranks_differ():
    with pytest.raises(ValueError, match=r"same rank.*ranks \[4, 3\]"):
        CropAndConcat()([keras.Input((4, 4, 2)), keras.Input((4, 2))])


def test_crop_and_concat_errors_if_rank_is_not_3_4_or_5():
    with pytest.raises(ValueError, match="rank 3, 4 or 5.*rank 2"):
        CropAndConcat()([keras.Input((4,)), keras.Input((4,))])


def test_crop_and_concat_errors_if_batch_sizes_differ():
    a = np.zeros((2, 6, 6, 1), dtype="float32")
    b = np.zeros((3, 4, 4, 1), dtype="float32")
    with pytest.raises(ValueError, match=r"same batch size.*\[2, 3\]"):
        CropAndConcat()([a, b])


def test_crop_and_concat_errors_if_batch_sizes_differ_at_run_time():
    layer = CropAndConcat()
    inputs = [keras.Input((None, None, 1)), keras.Input((None, None, 1))]
    keras.Model(inputs, layer(inputs))
    a = np.zeros((2, 6, 6, 1), dtype="float32")
    b = np.zeros((3, 4, 4, 1), dtype="float32")
    with pytest.raises(ValueError, match=r"same batch size.*\[2, 3\]"):
        layer([a, b])


def test_crop_and_concat_errors_if_data_format_is_invalid():
    with pytest.raises(
        ValueError, match="`data_format`.*Received: data_format='NHWC'"
    ):
        CropAndConcat(data_format="NHWC")


@pytest.mark.parametrize(
    "axis, data_format, what",
    [
        (1, "channels_last", "a spatial axis"),
        (-2, "channels_last", "a spatial axis"),
        (-1, "channels_first", "a spatial axis"),
        (-4, "channels_last", "the batch axis"),
        (7, "channels_last", "out of range"),
    ],
)
def test_crop_and_concat_errors_if_axis_is_not_the_channel_axis(
    axis, data_format, what
):
    layer = CropAndConcat(axis=axis, data_format=data_format)
    with pytest.raises(ValueError, match=f"channel axis.*{what}.*axis={axis}"):
        layer([keras.Input((3, 4, 4)), keras.Input((3, 4, 4))])


def test_crop_and_concat_errors_if_axis_is_the_batch_axis():
    with pytest.raises(ValueError, match="not the batch axis 0.*axis=0"):
        CropAndConcat(axis=0)


def test_crop_and_concat_errors_if_axis_is_not_an_int():
    with pytest.raises(TypeError, match="`axis` should be an int.*'channels'"):
        CropAndConcat(axis="channels")


def test_default_data_format_follows_keras_config():
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        layer = CropAndConcat()
    finally:
        keras.config.set_image_data_format(previous)
    assert layer.data_format == "channels_first"
    a, b = make_inputs([(1, 2, 9, 9), (1, 3, 7, 7)], seed=4)
    np.testing.assert_array_equal(
        to_numpy(layer([a, b])),
        numpy_crop_and_concat([a, b], "channels_first"),
    )


@pytest.mark.parametrize(
    "shapes, data_format",
    [
        ([(2, 11, 3), (2, 8, 2)], "channels_last"),
        ([(2, 12, 3), (2, 8, 2)], "channels_last"),
        ([(2, 61, 64, 3), (2, 52, 56, 5)], "channels_last"),
        ([(2, 52, 64, 3), (2, 61, 56, 5), (2, 55, 59, 1)], "channels_last"),
        ([(2, 3, 61, 64), (2, 5, 52, 56)], "channels_first"),
        ([(1, 9, 8, 7, 2), (1, 6, 8, 4, 3)], "channels_last"),
        ([(1, 2, 9, 8, 7), (1, 3, 6, 8, 4)], "channels_first"),
    ],
    ids=[
        "1d-odd",
        "1d-even",
        "2d-odd-rows-even-columns",
        "2d-three-inputs",
        "2d-channels-first",
        "3d",
        "3d-channels-first",
    ],
)
def test_mask_is_cropped_with_the_data(shapes, data_format):
    arrays = make_inputs(shapes, seed=3)
    masks = random_masks(arrays, data_format, seed=4)
    mask = CropAndConcat(data_format=data_format).compute_mask(arrays, masks)
    np.testing.assert_array_equal(
        to_numpy(mask), numpy_crop_and_concat_mask(arrays, masks, data_format)
    )


@pytest.mark.parametrize("masked", [(True, True), (True, False), (False, True)])
def test_mask_matches_cropping2d_and_concatenate_wired_by_hand(masked):
    skip, up = make_inputs([(2, 64, 61, 3), (2, 56, 52, 4)], seed=5)
    masks = [
        m if keep else None
        for m, keep in zip(
            random_masks([skip, up], seed=6), masked, strict=True
        )
    ]
    # 64 -> 56: 4 rows before, 4 after; 61 -> 52: 4 columns before, 5 after.
    crop = keras.layers.Cropping2D(((4, 4), (4, 5)))
    cropped_masks = [
        None
        if masks[0] is None
        else keras.ops.cast(
            crop(masks[0][..., None].astype("float32")), "bool"
        )[..., 0],
        masks[1],
    ]
    expected = keras.layers.Concatenate().compute_mask(
        [crop(skip), up], cropped_masks
    )
    np.testing.assert_array_equal(
        to_numpy(CropAndConcat().compute_mask([skip, up], masks)),
        to_numpy(expected),
    )


def test_mask_propagates_through_a_functional_model():
    long, short = make_inputs([(3, 9, 2), (3, 6, 3)], seed=8)
    long = zero_steps(long, [(0, 1), (0, 2), (1, 7), (2, 4)])
    short = zero_steps(short, [(0, 0), (0, 1), (1, 5), (2, 3)])
    long_in, short_in = keras.Input((9, 2)), keras.Input((6, 3))
    fused = CropAndConcat()(
        [keras.layers.Masking()(long_in), keras.layers.Masking()(short_in)]
    )
    # 9 -> 6: one step before, two after. Cropping1D drops masks, so the
    # model wired by hand masks after cropping.
    by_hand = keras.layers.Concatenate()(
        [
            keras.layers.Masking()(keras.layers.Cropping1D((1, 2))(long_in)),
            keras.layers.Masking()(short_in),
        ]
    )
    expected = to_numpy(mask_model([long_in, short_in], by_hand)([long, short]))
    assert not expected.all()
    np.testing.assert_array_equal(
        to_numpy(mask_model([long_in, short_in], fused)([long, short])),
        expected,
    )


@pytest.mark.parametrize("consumer", ["lstm", "global_average_pooling"])
def test_masked_sequences_reach_mask_consumers_as_in_keras_wiring(consumer):
    long, short = make_inputs([(3, 9, 2), (3, 6, 3)], seed=9)
    long = zero_steps(long, [(0, 1), (0, 2), (2, 4), (2, 5)])
    short = zero_steps(short, [(0, 0), (0, 1), (2, 3), (2, 4)])
    # One layer shared by the three models, so that they share weights.
    if consumer == "lstm":
        consume = keras.layers.LSTM(4)
    else:
        consume = keras.layers.GlobalAveragePooling1D()
    long_in, short_in = keras.Input((None, 2)), keras.Input((None, 3))
    inputs = [long_in, short_in]
    masked = [keras.layers.Masking()(x) for x in inputs]
    ours = keras.Model(inputs, consume(CropAndConcat()(masked)))
    by_hand = keras.Model(
        inputs,
        consume(
            keras.layers.Concatenate()(
                [
                    keras.layers.Masking()(
                        keras.layers.Cropping1D((1, 2))(long_in)
                    ),
                    masked[1],
                ]
            )
        ),
    )
    unmasked = keras.Model(inputs, consume(CropAndConcat()(inputs)))
    expected = to_numpy(by_hand([long, short]))
    np.testing.assert_allclose(
        to_numpy(ours([long, short])), expected, rtol=0, atol=1e-6
    )
    # The masked steps change the result: the mask is what is compared.
    assert not np.allclose(
        to_numpy(unmasked([long, short])), expected, rtol=0, atol=1e-4
    )


def test_mask_with_none_spatial_sizes_is_cropped_from_runtime_shapes():
    inputs = [keras.Input((None, None, 3)), keras.Input((None, None, 2))]
    fused = CropAndConcat()([keras.layers.Masking()(x) for x in inputs])
    assert tuple(fused._keras_mask.shape) == (None, None, None)
    model = mask_model(inputs, fused)
    for shapes in (
        [(1, 20, 17, 3), (1, 12, 16, 2)],
        [(2, 9, 9, 3), (2, 9, 4, 2)],
    ):
        arrays = make_inputs(shapes, seed=11)
        masks = random_masks(arrays, seed=12)
        # Zeros where the mask is False, which Masking masks out again.
        arrays = [a * m[..., None] for a, m in zip(arrays, masks, strict=True)]
        expected = numpy_crop_and_concat_mask(arrays, masks)
        np.testing.assert_array_equal(to_numpy(model(arrays)), expected)
        np.testing.assert_array_equal(model.predict_on_batch(arrays), expected)


def test_inputs_without_masks_give_no_mask():
    arrays = make_inputs([(2, 9, 3), (2, 6, 2)])
    layer = CropAndConcat()
    assert layer.compute_mask(arrays, None) is None
    assert layer.compute_mask(arrays, [None, None]) is None
    outputs = layer([keras.Input((9, 3)), keras.Input((6, 2))])
    assert getattr(outputs, "_keras_mask", None) is None


def test_masked_inputs_keep_their_mask_without_a_keras_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = [keras.Input((9, 2)), keras.Input((6, 3))]
        fused = CropAndConcat()([keras.layers.Masking()(x) for x in inputs])
        keras.Model(inputs, fused)(make_inputs([(2, 9, 2), (2, 6, 3)]))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "destroy the mask" in m], messages
    assert fused._keras_mask is not None


@pytest.mark.parametrize(
    "shapes, data_format, mask_shape, expected",
    [
        (
            [(2, 9, 8, 3), (2, 7, 8, 2)],
            "channels_last",
            (2, 9, 8, 3),
            r"\(axis 3\): \(2, 9, 8\) for input 0 of shape \(2, 9, 8, 3\)",
        ),
        (
            [(2, 9, 8, 3), (2, 7, 8, 2)],
            "channels_last",
            (2, 7, 8),
            r"\(axis 3\): \(2, 9, 8\) for input 0",
        ),
        (
            [(2, 3, 9, 8), (2, 2, 7, 8)],
            "channels_first",
            (2, 3, 9),
            r"\(axis 1\): \(2, 9, 8\) for input 0",
        ),
    ],
    ids=["with-channel-axis", "wrong-size", "channels-first"],
)
def test_crop_and_concat_errors_if_mask_shape_is_wrong(
    shapes, data_format, mask_shape, expected
):
    arrays = make_inputs(shapes)
    mask = [np.ones(mask_shape, dtype=bool), None]
    layer = CropAndConcat(data_format=data_format)
    message = (
        f"`mask` should hold one mask per input.*{expected}.*"
        rf"Received: mask\[0\]\.shape={re.escape(str(mask_shape))}"
    )
    with pytest.raises(ValueError, match=message):
        layer(arrays, mask=mask)
    with pytest.raises(ValueError, match=message):
        layer.compute_mask(arrays, mask)


def test_crop_and_concat_errors_if_mask_count_differs_from_inputs():
    arrays = make_inputs([(2, 9, 3), (2, 6, 2)])
    with pytest.raises(
        ValueError,
        match=r"`mask` should be a list of one mask \(or None\) per input.*"
        "2 here. Received: a list of length 3",
    ):
        CropAndConcat().compute_mask(arrays, [None, None, None])


@pytest.mark.backends("jax", reason="JAX crops to static sizes only")
def test_onnx_export_of_none_sizes_says_to_fix_the_sizes(tmp_path):
    # jax2onnx traces each input's `None` sizes as symbols of their own.
    first, second = keras.Input((None, None, 3)), keras.Input((None, None, 4))
    model = keras.Model([first, second], CropAndConcat()([first, second]))
    model(make_inputs([(1, 9, 9, 3), (1, 7, 7, 4)]))
    match = (
        r"(?s)CropAndConcat.*should be known when they are traced.*fixed "
        r"spatial sizes, or pass `input_signature`.*Received: input shapes"
    )
    with pytest.raises(ValueError, match=match):
        model.export(str(tmp_path / "model.onnx"), format="onnx", verbose=False)
