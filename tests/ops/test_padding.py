import keras
import numpy as np
import pytest

from keras_fusion import ops as kf_ops
from tests.backend_utils import to_numpy

# Seed 003's ZeroPadding2D example image.
SEED_003_IMAGE = np.arange(1, 10, dtype="float32").reshape((1, 3, 3, 1))


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
def test_center_pad_matches_zero_padding2d_on_seed_003_image(size, padding):
    expected = keras.layers.ZeroPadding2D(padding)(SEED_003_IMAGE)
    np.testing.assert_array_equal(
        to_numpy(kf_ops.center_pad(SEED_003_IMAGE, size)),
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
        pad(SEED_003_IMAGE).numpy(),
        np.pad(SEED_003_IMAGE, ((0, 0), (1, 2), (1, 1), (0, 0))),
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
