import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
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
        expected_output_shape=expected,
    )


@tensorflow_only
@LAYER_CASES
def test_saved_model_export(input_shape, data_format, expected, tmp_path):
    run_export_test(
        CropAndConcat, {"data_format": data_format}, input_shape, tmp_path
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
