import re

import keras
import numpy as np
import pytest

from keras_fusion import ops as kf_ops
from tests.backend_utils import TF_RUN_TIME_SIZES
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.layer_test_case import check_export_refuses

# The 3x3 image of the ZeroPadding2D examples in "【深度学习】深入浅出神经网络
# 框架的模型元件(常用层和卷积层)".
IMAGE_3X3 = np.arange(1, 10, dtype="float32").reshape((1, 3, 3, 1))


def test_center_pad_matches_numpy_pad():
    x = np.random.default_rng(0).random((2, 4, 7, 3), dtype="float32")
    # 4 -> 9: 2 before, 3 after; 7 -> 8: 0 before, 1 after.
    y = kf_ops.center_pad(x, (9, 8))
    np.testing.assert_array_equal(
        to_numpy(y), np.pad(x, ((0, 0), (2, 3), (0, 1), (0, 0)))
    )


def test_center_pad_channels_first_3d_matches_numpy_pad():
    x = np.random.default_rng(0).random((1, 2, 5, 8, 3), dtype="float32")
    y = kf_ops.center_pad(x, (8, None, 4), data_format="channels_first")
    np.testing.assert_array_equal(
        to_numpy(y), np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 0), (0, 1)))
    )


def test_center_pad_1d_matches_numpy_pad():
    x = np.random.default_rng(0).random((2, 5, 3), dtype="float32")
    y = kf_ops.center_pad(x, (10,))
    np.testing.assert_array_equal(
        to_numpy(y), np.pad(x, ((0, 0), (2, 3), (0, 0)))
    )


@pytest.mark.parametrize(
    "size, padding",
    [
        ((5, 5), ((1, 1), (1, 1))),
        ((4, 4), ((0, 1), (0, 1))),
        ((6, 3), ((1, 2), (0, 0))),
    ],
)
def test_center_pad_matches_zero_padding2d_on_a_3x3_image(size, padding):
    expected = keras.layers.ZeroPadding2D(padding)(IMAGE_3X3)
    np.testing.assert_array_equal(
        to_numpy(kf_ops.center_pad(IMAGE_3X3, size)),
        to_numpy(expected),
    )


@pytest.mark.parametrize(
    "shape, size",
    [((1, 3, 3, 1), (5, 4)), ((2, 6, 7, 2), (9, 12)), ((1, 4, 5), (11,))],
)
def test_center_crop_undoes_center_pad(shape, size):
    x = np.random.default_rng(1).random(shape, dtype="float32")
    padded = kf_ops.center_pad(x, size)
    np.testing.assert_array_equal(
        to_numpy(kf_ops.center_crop(padded, shape[1:-1])), x
    )


def test_pad_to_largest_pads_each_axis_independently():
    a = np.random.default_rng(0).random((1, 10, 7, 3), dtype="float32")
    b = np.random.default_rng(1).random((1, 8, 9, 2), dtype="float32")
    pa, pb = kf_ops.pad_to_largest([a, b])
    np.testing.assert_array_equal(
        to_numpy(pa), np.pad(a, ((0, 0), (0, 0), (1, 1), (0, 0)))
    )
    np.testing.assert_array_equal(
        to_numpy(pb), np.pad(b, ((0, 0), (1, 1), (0, 0), (0, 0)))
    )


def test_equal_sizes_pass_through_unpadded():
    x = np.random.default_rng(0).random((1, 4, 4, 2), dtype="float32")
    assert kf_ops.center_pad(x, (4, 4)) is x


def test_symbolic_center_pad_knows_static_sizes():
    x = keras.Input((5, None, 3))
    assert tuple(kf_ops.center_pad(x, (9, 8)).shape) == (None, 9, 8, 3)
    a, b = kf_ops.pad_to_largest(
        [keras.Input((9, 5, 1)), keras.Input((7, None, 2))]
    )
    assert tuple(a.shape) == (None, 9, None, 1)
    assert tuple(b.shape) == (None, 9, None, 2)


def test_ops_pad_symbolic_tensors_with_unknown_sizes():
    a, b = keras.Input((None, None, 3)), keras.Input((None, None, 2))
    padded = kf_ops.pad_to_largest([a, b])
    assert [tuple(t.shape) for t in padded] == [
        (None, None, None, 3),
        (None, None, None, 2),
    ]
    model = keras.Model([a, b], padded)
    x = np.random.default_rng(0).random((2, 5, 8, 3)).astype("float32")
    y = np.zeros((2, 8, 6, 2), "float32")
    pa, pb = model([x, y])
    np.testing.assert_array_equal(
        to_numpy(pa), np.pad(x, ((0, 0), (1, 2), (0, 0), (0, 0)))
    )
    assert tuple(pb.shape) == (2, 8, 8, 2)


@pytest.mark.backends(
    "tensorflow", reason="tf.function with run-time spatial sizes"
)
def test_center_pad_inside_tf_function_with_unknown_sizes():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 1))])
    def pad(x):
        return kf_ops.center_pad(x, (tf.shape(x)[1] + 3, 5))

    np.testing.assert_array_equal(
        pad(IMAGE_3X3).numpy(),
        np.pad(IMAGE_3X3, ((0, 0), (1, 2), (1, 1), (0, 0))),
    )


def test_center_pad_errors_if_size_is_smaller_than_input():
    with pytest.raises(
        ValueError, match="smaller than the input.*size=\\(7, 5\\)"
    ):
        kf_ops.center_pad(np.zeros((1, 6, 6, 1)), (7, 5))


def test_symbolic_center_pad_errors_if_size_is_smaller_than_input():
    with pytest.raises(ValueError, match="smaller than the input"):
        kf_ops.center_pad(keras.Input((6, 6, 1)), (7, 5))


def test_center_pad_errors_if_size_has_wrong_length():
    with pytest.raises(ValueError, match="list of 2 sizes.*size=\\(8,\\)"):
        kf_ops.center_pad(np.zeros((1, 6, 6, 1)), (8,))


def test_center_pad_errors_if_rank_is_unsupported():
    with pytest.raises(ValueError, match="rank 3, 4 or 5.*shape \\(6, 6\\)"):
        kf_ops.center_pad(np.zeros((6, 6)), (8,))


def test_pad_to_largest_errors_if_not_given_a_list():
    with pytest.raises(ValueError, match="list of at least 2 feature maps"):
        kf_ops.pad_to_largest(np.zeros((1, 6, 6, 1)))


def test_pad_to_largest_errors_if_ranks_differ():
    with pytest.raises(ValueError, match=r"same rank.*ranks \[4, 3\]"):
        kf_ops.pad_to_largest([np.zeros((1, 6, 6, 1)), np.zeros((1, 6, 1))])


# A pad to a size smaller than the input, known only at run time: input
# spatial size (6, 7), requested (4, 12).
LARGE = np.zeros((2, 6, 7, 3), "float32")
SMALLER_SIZE = (4, 12)
PAD_TOO_SMALL = "smaller than the input.*" + re.escape(
    "Received: input shape (2, 6, 7, 3), size=(4, 12)"
)
# What XLA says: it drops run-time assertions; its Pad rejects the negative
# amounts (6 -> 4: -1 before, -1 after) when it compiles.
XLA_PAD_TOO_SMALL = (
    "(?s)Paddings must be non-negative: -1 -1"
    ".*center_pad_to_at_least_the_input_size"
)


def dynamic_pad_model(size):
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, kf_ops.center_pad(inputs, size))


def test_center_pad_accepts_eager_integer_tensors_and_numpy_integers():
    x = np.random.default_rng(0).random((2, 4, 7, 3), dtype="float32")
    y = kf_ops.center_pad(x, (keras.ops.convert_to_tensor(9), np.int64(8)))
    np.testing.assert_array_equal(
        to_numpy(y), np.pad(x, ((0, 0), (2, 3), (0, 1), (0, 0)))
    )


def test_center_pad_errors_if_eager_tensor_size_is_smaller_than_input():
    with pytest.raises(ValueError, match=PAD_TOO_SMALL):
        kf_ops.center_pad(LARGE, (keras.ops.convert_to_tensor(4), 12))


@pytest.mark.parametrize(
    "size, received",
    [
        ((8, "9"), "size=(8, '9'), whose entry 1 is of type str"),
        (((8, 9), 9), "size=((8, 9), 9), whose entry 0 is of type tuple"),
        ((8.0, 9), "size=(8.0, 9), whose entry 0 is of type float"),
        ((False, 9), "size=(False, 9), whose entry 0 is of type bool"),
    ],
)
def test_center_pad_errors_if_size_entries_are_malformed(size, received):
    with pytest.raises(
        TypeError,
        match="`size` should have, for each spatial dimension, an int, "
        "`None` or a scalar integer tensor.*" + re.escape(received),
    ):
        kf_ops.center_pad(np.zeros((1, 6, 6, 1)), size)


def test_model_with_unknown_sizes_errors_if_pad_size_is_smaller():
    with pytest.raises(ValueError, match=PAD_TOO_SMALL):
        dynamic_pad_model(SMALLER_SIZE)(LARGE)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_pad_errors_at_run_time_in_tf_function():
    import tensorflow as tf

    pad = tf.function(
        lambda x: kf_ops.center_pad(x, SMALLER_SIZE),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=PAD_TOO_SMALL):
        pad(LARGE)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_pad_errors_under_xla_if_size_is_smaller_than_input():
    import tensorflow as tf

    pad = tf.function(
        lambda x: kf_ops.center_pad(x, SMALLER_SIZE),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
        jit_compile=True,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=XLA_PAD_TOO_SMALL):
        pad(LARGE)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_center_pad_under_xla_with_unknown_sizes_matches_numpy_pad():
    import tensorflow as tf

    spec = tf.TensorSpec((None, None, None, 3))
    pad = tf.function(
        lambda x, other: (
            kf_ops.center_pad(x, (tf.shape(x)[1] + 3, 9)),
            *kf_ops.pad_to_largest([x, other]),
        ),
        input_signature=[spec, spec],
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 4, 7, 3), dtype="float32")
    other = rng.random((2, 5, 6, 3), dtype="float32")
    by_size, x_padded, other_padded = pad(x, other)
    np.testing.assert_array_equal(
        by_size, np.pad(x, ((0, 0), (1, 2), (1, 1), (0, 0)))
    )
    np.testing.assert_array_equal(
        x_padded, np.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
    )
    np.testing.assert_array_equal(
        other_padded, np.pad(other, ((0, 0), (0, 0), (0, 1), (0, 0)))
    )


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_pad_to_largest_with_unknown_sizes_needs_no_run_time_check():
    # The largest size fits every input, so unlike `center_pad` the graph
    # holds no assertion that could never fail.
    import tensorflow as tf

    # A known batch size: batch sizes known only at run time are checked
    # (they may differ), spatial sizes need no check.
    spec = tf.TensorSpec((2, None, None, 3))
    pad = tf.function(
        lambda x, other: kf_ops.pad_to_largest([x, other]),
        input_signature=[spec, spec],
    )
    graph = pad.get_concrete_function().graph
    assert "Assert" not in {op.type for op in graph.get_operations()}
    rng = np.random.default_rng(0)
    x = rng.random((2, 4, 7, 3), dtype="float32")
    other = rng.random((2, 5, 6, 3), dtype="float32")
    x_padded, other_padded = pad(x, other)
    np.testing.assert_array_equal(
        x_padded, np.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
    )
    np.testing.assert_array_equal(
        other_padded, np.pad(other, ((0, 0), (0, 0), (0, 1), (0, 0)))
    )


@tensorflow_only(TF_RUN_TIME_SIZES)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_predict_errors_after_retracing_if_pad_size_is_smaller(
    jit_compile,
):
    import tensorflow as tf

    model = dynamic_pad_model(SMALLER_SIZE)
    model.compile(jit_compile=jit_compile)
    valid = np.random.default_rng(0).random((2, 3, 10, 3), dtype="float32")
    np.testing.assert_array_equal(
        model.predict(valid, verbose=0),
        np.pad(valid, ((0, 0), (0, 1), (1, 1), (0, 0))),
    )
    # A second input size makes Keras retrace with `None` spatial sizes.
    match = XLA_PAD_TOO_SMALL if jit_compile else PAD_TOO_SMALL
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        model.predict(LARGE, verbose=0)


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_exported_saved_model_errors_if_pad_size_is_smaller(tmp_path):
    import tensorflow as tf

    dynamic_pad_model(SMALLER_SIZE).export(str(tmp_path), verbose=False)
    serve = tf.saved_model.load(str(tmp_path)).serve
    valid = np.random.default_rng(0).random((2, 3, 10, 3), dtype="float32")
    np.testing.assert_array_equal(
        serve(valid), np.pad(valid, ((0, 0), (0, 1), (1, 1), (0, 0)))
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=PAD_TOO_SMALL):
        serve(LARGE)


# The converters drop the run-time `Assert`: LiteRT's own Pad fails on a
# negative amount, and ONNX's Pad, which crops there, is followed by a
# reshape to the padded size that fails (its node named after the pad).
EXPORTED_PAD_TOO_SMALL = {
    "litert": "Pad value has to be greater than equal to 0.*PAD",
    "onnx": "Reshape node.*center_pad_to_at_least_the_input_size_size",
}


@pytest.mark.backends(
    "tensorflow", reason="sizes known only at run time are TensorFlow's"
)
@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_exported_pad_fails_if_size_is_smaller_than_input(
    export_format, tmp_path
):
    check_export_refuses(
        dynamic_pad_model(SMALLER_SIZE),
        valid := np.random.default_rng(0).random((2, 3, 10, 3), "float32"),
        np.pad(valid, ((0, 0), (0, 1), (1, 1), (0, 0))),
        LARGE,
        tmp_path,
        export_format,
        EXPORTED_PAD_TOO_SMALL[export_format],
    )


@pytest.mark.backends("jax", reason="jax.jit traces with static shapes")
def test_center_pad_errors_under_jax_jit_if_size_is_smaller_than_input():
    import jax

    with pytest.raises(ValueError, match=PAD_TOO_SMALL):
        jax.jit(lambda x: kf_ops.center_pad(x, SMALLER_SIZE))(LARGE)


@pytest.mark.backends("jax", reason="jax.jit traces with static shapes")
def test_center_pad_errors_under_jax_jit_if_size_is_traced():
    import jax

    pad = jax.jit(lambda x, target: kf_ops.center_pad(x, (target, 9)))
    with pytest.raises(ValueError, match="should be known when it is traced"):
        pad(LARGE, 8)


@pytest.mark.backends("jax", reason="a jitted predict step per input shape")
def test_jitted_model_predict_errors_on_a_second_smaller_pad_size():
    model = dynamic_pad_model(SMALLER_SIZE)
    model.compile(jit_compile=True)
    valid = np.random.default_rng(0).random((2, 3, 10, 3), dtype="float32")
    np.testing.assert_array_equal(
        model.predict(valid, verbose=0),
        np.pad(valid, ((0, 0), (0, 1), (1, 1), (0, 0))),
    )
    with pytest.raises(ValueError, match=PAD_TOO_SMALL):
        model.predict(LARGE, verbose=0)


@tensorflow_only("the crash was in TensorFlow's oneDNN fused convolution")
@pytest.mark.parametrize("align", ["pad", "crop"])
def test_padded_map_added_to_a_biased_convolution_in_tf_function(align):
    # An FPN lateral (a 1x1 convolution with bias) fused with the padded
    # level above. With oneDNN on, Grappler fuses Conv2D + BiasAdd + Add
    # into one op, which crashed the process (segmentation fault) when the
    # added map came from a `Pad` op (keras_fusion.backend.size_checks).
    import tensorflow as tf

    from keras_fusion import FusionSelector

    keras.utils.set_random_seed(0)
    lateral_input = keras.Input((None, None, 8))
    above = keras.Input((None, None, 16))
    convolution = keras.layers.Conv2D(16, 1)
    lateral = convolution(lateral_input)
    upsampled = keras.layers.UpSampling2D(2)(above)
    fused = FusionSelector(mode="add", align=align)([lateral, upsampled])
    model = keras.Model([lateral_input, above], fused)
    rng = np.random.default_rng(0)
    x = rng.random((1, 25, 33, 8), dtype="float32")
    y = rng.random((1, 12, 16, 16), dtype="float32")
    traced = tf.function(lambda x, y: model([x, y]))(x, y)
    # NumPy: the lateral, and the upsampled map zero-padded after (one row
    # and one column) or the lateral cropped (one before, none after).
    kernel, bias = (to_numpy(w) for w in convolution.weights)
    expected_lateral = x @ kernel[0, 0] + bias
    expected_above = np.repeat(np.repeat(y, 2, axis=1), 2, axis=2)
    if align == "pad":
        expected_above = np.pad(
            expected_above, ((0, 0), (0, 1), (0, 1), (0, 0))
        )
    else:
        expected_lateral = expected_lateral[:, 0:24, 0:32]
    np.testing.assert_allclose(
        to_numpy(traced),
        expected_lateral + expected_above,
        rtol=1e-5,
        atol=1e-5,
    )
