import re

import keras
import numpy as np
import pytest

from keras_fusion import ops as kf_ops
from tests.backend_utils import TF_RUN_TIME_SIZES
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.layer_test_case import check_export_refuses


@pytest.mark.parametrize(
    "size, target, expected",
    [(61, 52, (4, 5)), (64, 56, (4, 4)), (10, 10, (0, 0)), (5, 0, (2, 3))],
)
def test_center_crop_offsets(size, target, expected):
    assert kf_ops.center_crop_offsets(size, target) == expected


def test_center_crop_offsets_with_tensors():
    before, after = kf_ops.center_crop_offsets(
        keras.ops.convert_to_tensor(61), keras.ops.convert_to_tensor(52)
    )
    assert (int(before), int(after)) == (4, 5)


def test_center_crop_offsets_errors_if_target_is_larger():
    with pytest.raises(ValueError, match="size=4, target=6"):
        kf_ops.center_crop_offsets(4, 6)


def test_center_crop_matches_numpy_slicing():
    x = np.random.default_rng(0).random((2, 9, 12, 3))
    y = kf_ops.center_crop(x, (4, 7))
    np.testing.assert_array_equal(to_numpy(y), x[:, 2:6, 2:9, :])


def test_center_crop_channels_first_3d():
    x = np.random.default_rng(0).random((1, 2, 9, 8, 7))
    y = kf_ops.center_crop(x, (6, None, 4), data_format="channels_first")
    np.testing.assert_array_equal(to_numpy(y), x[:, :, 1:7, :, 1:5])


def test_center_crop_to_uses_reference_spatial_size():
    x = np.random.default_rng(0).random((2, 64, 61, 3))
    reference = np.zeros((2, 56, 52, 7))
    y = kf_ops.center_crop_to(x, reference)
    np.testing.assert_array_equal(to_numpy(y), x[:, 4:60, 4:56, :])


def test_crop_to_smallest_crops_each_axis_independently():
    a = np.random.default_rng(0).random((1, 10, 7, 3))
    b = np.random.default_rng(1).random((1, 8, 9, 2))
    ca, cb = kf_ops.crop_to_smallest([a, b])
    np.testing.assert_array_equal(to_numpy(ca), a[:, 1:9, :, :])
    np.testing.assert_array_equal(to_numpy(cb), b[:, :, 1:8, :])


def test_ops_build_symbolic_tensors_with_unknown_sizes():
    x = keras.Input((None, None, 3))
    reference = keras.Input((None, None, 5))
    cropped = kf_ops.center_crop_to(x, reference)
    assert tuple(cropped.shape) == (None, None, None, 3)
    model = keras.Model([x, reference], cropped)
    data = np.random.default_rng(0).random((2, 13, 11, 3)).astype("float32")
    ref = np.zeros((2, 8, 11, 5), "float32")
    np.testing.assert_array_equal(to_numpy(model([data, ref])), data[:, 2:10])


def test_symbolic_center_crop_knows_static_sizes():
    x = keras.Input((20, None, 3))
    assert tuple(kf_ops.center_crop(x, (16, 8)).shape) == (None, 16, 8, 3)
    a, b = kf_ops.crop_to_smallest(
        [keras.Input((9, 5, 1)), keras.Input((7, None, 2))]
    )
    assert tuple(a.shape) == (None, 7, None, 1)
    assert tuple(b.shape) == (None, 7, None, 2)


@pytest.mark.backends(
    "tensorflow", reason="tf.function with run-time spatial sizes"
)
def test_center_crop_inside_tf_function_with_unknown_sizes():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 1))])
    def crop(x):
        return kf_ops.center_crop(x, (tf.shape(x)[1] - 3, 2))

    x = np.arange(7 * 6, dtype="float32").reshape((1, 7, 6, 1))
    np.testing.assert_array_equal(crop(x).numpy(), x[:, 1:5, 2:4])


def test_center_crop_errors_if_size_is_larger_than_input():
    with pytest.raises(
        ValueError, match="larger than the input.*size=\\(5, 9\\)"
    ):
        kf_ops.center_crop(np.zeros((1, 6, 6, 1)), (5, 9))


def test_center_crop_errors_if_size_has_wrong_length():
    with pytest.raises(ValueError, match="list of 2 sizes.*size=\\(5,\\)"):
        kf_ops.center_crop(np.zeros((1, 6, 6, 1)), (5,))


def test_center_crop_errors_if_rank_is_unsupported():
    with pytest.raises(ValueError, match="rank 3, 4 or 5.*shape \\(6, 6\\)"):
        kf_ops.center_crop(np.zeros((6, 6)), (5,))


def test_center_crop_to_errors_if_ranks_differ():
    with pytest.raises(ValueError, match="same rank"):
        kf_ops.center_crop_to(np.zeros((1, 6, 6, 1)), np.zeros((1, 6, 1)))


# A crop to a size larger than the input, known only at run time: input
# spatial size (6, 7), requested (10, 12).
SMALL = np.zeros((2, 6, 7, 3), "float32")
LARGER_SIZE = (10, 12)
CROP_TOO_LARGE = "larger than the input.*" + re.escape(
    "Received: input shape (2, 6, 7, 3), size=(10, 12)"
)
# What XLA says: it drops run-time assertions, so the crop's own slice
# fails when XLA compiles it, with the sizes (input 6, requested 10).
XLA_CROP_TOO_LARGE = (
    r"(?s)Expected size\[1\] in \[0, 6\], but got 10"
    ".*center_crop_to_at_most_the_input_size"
)


def numpy_center_crop(x, size):
    """Independent reference: NumPy slicing with hand-written offsets."""
    index = [slice(None)] * x.ndim
    for axis, target in enumerate(size, start=1):
        start = (x.shape[axis] - target) // 2
        index[axis] = slice(start, start + target)
    return x[tuple(index)]


def dynamic_crop_model(size):
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, kf_ops.center_crop(inputs, size))


def test_numpy_center_crop_reference():
    # 7 -> 4 and 8 -> 5 rows and columns: 1 before, 2 after.
    x = np.arange(7 * 8).reshape((1, 7, 8, 1))
    np.testing.assert_array_equal(
        numpy_center_crop(x, (4, 5))[0, :, :, 0],
        [[9, 10, 11, 12, 13], [17, 18, 19, 20, 21]]
        + [[25, 26, 27, 28, 29], [33, 34, 35, 36, 37]],
    )


def test_center_crop_accepts_eager_integer_tensors_and_numpy_integers():
    x = np.random.default_rng(0).random((2, 9, 12, 3))
    for size in [
        (keras.ops.convert_to_tensor(4), np.int64(7)),
        (np.array(4), np.int32(7)),
    ]:
        np.testing.assert_array_equal(
            to_numpy(kf_ops.center_crop(x, size)), x[:, 2:6, 2:9, :]
        )


def test_center_crop_errors_if_eager_tensor_size_is_larger_than_input():
    with pytest.raises(ValueError, match=CROP_TOO_LARGE):
        kf_ops.center_crop(
            SMALL, (keras.ops.convert_to_tensor(10), np.int64(12))
        )


def test_center_crop_offsets_errors_if_eager_tensor_target_is_larger():
    with pytest.raises(ValueError, match="size=6, target=10"):
        kf_ops.center_crop_offsets(
            keras.ops.convert_to_tensor(6), keras.ops.convert_to_tensor(10)
        )


@pytest.mark.parametrize(
    "size, received",
    [
        ((2, "3"), "size=(2, '3'), whose entry 1 is of type str"),
        (
            ((1, 2), (3, 4, 5)),
            "size=((1, 2), (3, 4, 5)), whose entry 0 is of type tuple",
        ),
        ((2.0, 3), "size=(2.0, 3), whose entry 0 is of type float"),
        ((2, True), "size=(2, True), whose entry 1 is of type bool"),
        ((np.float32(2), 3), "whose entry 0 is of type float32"),
        (
            (2, np.array([3, 4])),
            "whose entry 1 is a tensor of dtype int64 and shape (2,)",
        ),
    ],
)
def test_center_crop_errors_if_size_entries_are_malformed(size, received):
    with pytest.raises(
        TypeError,
        match=re.escape(
            "`size` should have, for each spatial dimension, an int, `None` "
            "or a scalar integer tensor. Received: "
        )
        + ".*"
        + re.escape(received),
    ):
        kf_ops.center_crop(np.zeros((1, 6, 6, 1)), size)


def test_center_crop_errors_if_size_is_a_float_tensor():
    with pytest.raises(
        TypeError, match="whose entry 0 is a tensor of dtype float32"
    ):
        kf_ops.center_crop(
            np.zeros((1, 6, 6, 1)), (keras.ops.convert_to_tensor(2.0), 3)
        )


def test_center_crop_errors_if_size_is_negative():
    with pytest.raises(ValueError, match=re.escape("size=(-1, 3)")):
        kf_ops.center_crop(np.zeros((1, 6, 6, 1)), (-1, 3))


def test_model_with_unknown_sizes_errors_if_size_is_larger_than_input():
    model = dynamic_crop_model(LARGER_SIZE)
    with pytest.raises(ValueError, match=CROP_TOO_LARGE):
        model(SMALL)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_crop_errors_at_run_time_in_tf_function():
    import tensorflow as tf

    crop = tf.function(
        lambda x: kf_ops.center_crop(x, LARGER_SIZE),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=CROP_TOO_LARGE):
        crop(SMALL)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_crop_to_errors_at_run_time_in_tf_function():
    import tensorflow as tf

    spec = tf.TensorSpec((None, None, None, 3))
    crop_to = tf.function(kf_ops.center_crop_to, input_signature=[spec] * 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=CROP_TOO_LARGE):
        crop_to(SMALL, np.zeros((1, 10, 12, 3), "float32"))


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_crop_errors_at_run_time_if_run_time_size_is_negative():
    import tensorflow as tf

    crop = tf.function(
        lambda x: kf_ops.center_crop(x, (tf.shape(x)[1] - 7, 2)),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=re.escape("input shape (2, 6, 7, 3), size=(-1, 2)"),
    ):
        crop(SMALL)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_crop_errors_under_xla_if_size_is_larger_than_input():
    import tensorflow as tf

    crop = tf.function(
        lambda x: kf_ops.center_crop(x, LARGER_SIZE),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
        jit_compile=True,
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=XLA_CROP_TOO_LARGE
    ):
        crop(SMALL)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_crop_errors_under_xla_if_run_time_size_is_minus_one():
    # tf.slice reads a size of -1 as "to the end of the axis".
    import tensorflow as tf

    crop = tf.function(
        lambda x: kf_ops.center_crop(x, (tf.shape(x)[1] - 7, 2)),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
        jit_compile=True,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected size"):
        crop(SMALL)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_crop_under_xla_with_unknown_sizes_matches_numpy():
    import tensorflow as tf

    spec = tf.TensorSpec((None, None, None, 3))
    crop = tf.function(
        lambda x, reference, other: (
            kf_ops.center_crop(x, (tf.shape(x)[1] - 3, 5)),
            kf_ops.center_crop_to(x, reference),
            *kf_ops.crop_to_smallest([x, other]),
        ),
        input_signature=[spec] * 3,
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 9, 12, 3), dtype="float32")
    reference = np.zeros((2, 6, 10, 3), "float32")
    other = rng.random((2, 7, 14, 3), dtype="float32")
    by_size, to_reference, x_cropped, other_cropped = crop(x, reference, other)
    np.testing.assert_array_equal(by_size, numpy_center_crop(x, (6, 5)))
    np.testing.assert_array_equal(to_reference, x[:, 1:7, 1:11, :])
    np.testing.assert_array_equal(x_cropped, x[:, 1:8, :, :])
    np.testing.assert_array_equal(other_cropped, other[:, :, 1:13, :])


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_crop_to_smallest_with_unknown_sizes_needs_no_run_time_check():
    # The smallest size fits every input, so unlike `center_crop` the graph
    # holds no assertion that could never fail.
    import tensorflow as tf

    # A known batch size: batch sizes known only at run time are checked
    # (they may differ), spatial sizes need no check.
    spec = tf.TensorSpec((2, None, None, 3))
    crop = tf.function(
        lambda x, other: kf_ops.crop_to_smallest([x, other]),
        input_signature=[spec, spec],
    )
    graph = crop.get_concrete_function().graph
    assert "Assert" not in {op.type for op in graph.get_operations()}
    rng = np.random.default_rng(0)
    x = rng.random((2, 9, 12, 3), dtype="float32")
    other = rng.random((2, 7, 14, 3), dtype="float32")
    x_cropped, other_cropped = crop(x, other)
    np.testing.assert_array_equal(x_cropped, x[:, 1:8, :, :])
    np.testing.assert_array_equal(other_cropped, other[:, :, 1:13, :])


@tensorflow_only(TF_RUN_TIME_SIZES)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_predict_errors_after_retracing_with_unknown_sizes(jit_compile):
    import tensorflow as tf

    model = dynamic_crop_model(LARGER_SIZE)
    model.compile(jit_compile=jit_compile)
    valid = np.random.default_rng(0).random((2, 16, 17, 3), dtype="float32")
    np.testing.assert_array_equal(
        model.predict(valid, verbose=0), numpy_center_crop(valid, LARGER_SIZE)
    )
    # A second input size makes Keras retrace with `None` spatial sizes.
    match = XLA_CROP_TOO_LARGE if jit_compile else CROP_TOO_LARGE
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        model.predict(SMALL, verbose=0)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_exported_saved_model_errors_if_size_is_larger_than_input(tmp_path):
    import tensorflow as tf

    dynamic_crop_model(LARGER_SIZE).export(str(tmp_path), verbose=False)
    serve = tf.saved_model.load(str(tmp_path)).serve
    valid = np.random.default_rng(0).random((2, 13, 12, 3), dtype="float32")
    np.testing.assert_array_equal(
        serve(valid), numpy_center_crop(valid, LARGER_SIZE)
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=CROP_TOO_LARGE):
        serve(SMALL)


# The converters drop the run-time `Assert`: LiteRT's own Slice fails on
# the sizes, and ONNX's Slice, which clamps, is followed by a reshape to
# the requested size that fails (its node named after the crop).
EXPORTED_CROP_TOO_LARGE = {
    "litert": "Invalid begin and size.*SLICE",
    "onnx": "Reshape node.*center_crop_to_at_most_the_input_size_size",
}


@pytest.mark.backends(
    "tensorflow", reason="sizes known only at run time are TensorFlow's"
)
@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_exported_crop_fails_if_size_is_larger_than_input(
    export_format, tmp_path
):
    check_export_refuses(
        dynamic_crop_model(LARGER_SIZE),
        valid := np.random.default_rng(0).random((2, 13, 12, 3), "float32"),
        numpy_center_crop(valid, LARGER_SIZE),
        SMALL,
        tmp_path,
        export_format,
        EXPORTED_CROP_TOO_LARGE[export_format],
    )


@pytest.mark.backends("jax", reason="jax.jit traces with static shapes")
def test_center_crop_errors_under_jax_jit_if_size_is_larger_than_input():
    import jax

    with pytest.raises(ValueError, match=CROP_TOO_LARGE):
        jax.jit(lambda x: kf_ops.center_crop(x, LARGER_SIZE))(SMALL)
    with pytest.raises(ValueError, match=CROP_TOO_LARGE):
        jax.jit(kf_ops.center_crop_to)(SMALL, np.zeros((1, 10, 12, 3)))


@pytest.mark.backends("jax", reason="jax.jit traces with static shapes")
def test_center_crop_errors_under_jax_jit_if_size_is_traced():
    import jax

    crop = jax.jit(lambda x, target: kf_ops.center_crop(x, (target, 2)))
    with pytest.raises(
        ValueError,
        match="should be known when it is traced.*"
        + re.escape("input shape (2, 6, 7, 3)"),
    ):
        crop(SMALL, 3)


@pytest.mark.backends("jax", reason="a jitted predict step per input shape")
def test_jitted_model_predict_errors_on_a_second_larger_size():
    model = dynamic_crop_model(LARGER_SIZE)
    model.compile(jit_compile=True)
    valid = np.random.default_rng(0).random((2, 16, 17, 3), dtype="float32")
    np.testing.assert_array_equal(
        model.predict(valid, verbose=0), numpy_center_crop(valid, LARGER_SIZE)
    )
    with pytest.raises(ValueError, match=CROP_TOO_LARGE):
        model.predict(SMALL, verbose=0)
