import re

import keras
import numpy as np
import pytest

from keras_fusion._internal.checks import check_spatial_size
from keras_fusion._internal.checks import common_channel_count
from keras_fusion._internal.checks import common_spatial_shape
from keras_fusion._internal.checks import is_static_size
from keras_fusion._internal.checks import largest_spatial_shape
from keras_fusion._internal.checks import smallest_spatial_shape


def test_largest_and_smallest_spatial_shape_keep_unknown_sizes():
    shapes = [(None, 9, None, 4, 2), (1, 7, 5, 6, 3)]
    assert largest_spatial_shape(shapes, "channels_last") == (9, None, 6)
    assert smallest_spatial_shape(shapes, "channels_last") == (7, None, 4)


def test_largest_spatial_shape_channels_first():
    shapes = [(1, 3, 9, 4), (1, 2, 7, 6)]
    assert largest_spatial_shape(shapes, "channels_first") == (9, 6)


def test_common_spatial_shape_takes_the_size_any_input_knows():
    shapes = [(None, 8, None, 3), (None, None, None, 5), (2, 8, None, 1)]
    assert common_spatial_shape(shapes, "channels_last", "L", "r") == (
        8,
        None,
    )


def test_common_spatial_shape_errors_if_sizes_differ():
    with pytest.raises(
        ValueError,
        match=r"`Fuse` should have the same spatial size; align them\. "
        r"Received: inputs with shapes \[\(1, 3, 8\), \(1, 3, 6\)\]",
    ):
        common_spatial_shape(
            [(1, 3, 8), (1, 3, 6)], "channels_first", "Fuse", "align them"
        )


def test_common_channel_count():
    shapes = [(None, 4, None), (None, 4, 6), (None, 4, None)]
    assert common_channel_count(shapes, 2, "L", "r") == 6
    assert common_channel_count([(1, 4, None)] * 2, 2, "L", "r") is None


def test_common_channel_count_errors_if_counts_differ():
    with pytest.raises(
        ValueError,
        match=r"same number of channels \(axis 1\); project them\. "
        r"Received: channels \[3, 5\]",
    ):
        common_channel_count([(1, 3, 8), (1, 5, 8)], 1, "Fuse", "project them")


def test_is_static_size():
    assert is_static_size(3) and is_static_size(np.int64(3))
    assert not is_static_size(True)
    assert not is_static_size(3.0)
    assert not is_static_size(keras.ops.convert_to_tensor(3))


def test_check_spatial_size_reads_known_sizes_as_ints():
    size = check_spatial_size(
        (np.int64(3), None, keras.ops.convert_to_tensor(4)), rank=5
    )
    assert size == (3, None, 4)
    assert all(type(s) is int for s in (size[0], size[2]))


@pytest.mark.parametrize(
    "size, error, match",
    [
        ((2, "3"), TypeError, "whose entry 1 is of type str"),
        (((1, 2), (3, 4, 5)), TypeError, "whose entry 0 is of type tuple"),
        ((2, 3.5), TypeError, "whose entry 1 is of type float"),
        ((True, 3), TypeError, "whose entry 0 is of type bool"),
        ((np.array([2]), 3), TypeError, "a tensor of dtype int64 and shape"),
        ((2, -3), ValueError, "negative sizes. Received: size=(2, -3)"),
        ((2,), ValueError, "a list of 2 sizes"),
        (3, ValueError, "a list of 2 sizes"),
    ],
)
def test_check_spatial_size_errors(size, error, match):
    with pytest.raises(error, match=re.escape(match)):
        check_spatial_size(size, rank=4)
