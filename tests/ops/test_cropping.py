import keras
import numpy as np
import pytest

from keras_fusion import ops as kf_ops
from tests.backend_utils import to_numpy


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
