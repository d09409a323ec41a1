"""Property-based tests of `keras_fusion.ops` against NumPy references.

For random 1D/2D/3D feature maps in either data format, with crop and pad
targets inside and outside the input (negative too), given as ints or as
scalar tensors: each op gives the NumPy reference where its arguments are
valid and raises where they are not, in eager code, in a functional model
on inputs with static, `None` and mixed sizes, in a `tf.function` with
`None` sizes in its signature, XLA-compiled, under `jax.jit` and, for a
sample, through a SavedModel. Strategies, references and execution modes:
`tests/property_cases.py`.
"""

import dataclasses

import keras
import numpy as np
import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from keras_fusion import ops as kf_ops
from tests.property_cases import EAGER
from tests.property_cases import JAX_JIT
from tests.property_cases import TF_GRAPHS
from tests.property_cases import TF_SAVED_MODEL
from tests.property_cases import Invalid
from tests.property_cases import Maps
from tests.property_cases import assert_result_or_error
from tests.property_cases import examples
from tests.property_cases import feature_maps
from tests.property_cases import keras_inputs
from tests.property_cases import np_center_crop
from tests.property_cases import np_center_pad
from tests.property_cases import np_crop_to_smallest
from tests.property_cases import np_pad_to_largest
from tests.property_cases import run_jax_jit
from tests.property_cases import run_saved_model
from tests.property_cases import run_tf_function
from tests.property_cases import spatial_sizes
from tests.property_cases import tensor_specs
from tests.property_cases import tf_graph_errors

OPS = (
    "center_crop",
    "center_crop_to",
    "crop_to_smallest",
    "center_pad",
    "pad_to_largest",
)


@dataclasses.dataclass(frozen=True)
class OpCase:
    """An op, its feature maps and, for `center_crop` and `center_pad`,
    the target `size` and which of its entries are passed as scalar
    tensors (`size_is_tensor`)."""

    op: str
    maps: Maps
    size: tuple = None
    size_is_tensor: tuple = ()


@st.composite
def op_cases(draw, op):
    num_inputs = {"center_crop": 1, "center_pad": 1, "center_crop_to": 2}
    n = num_inputs.get(op)
    maps = draw(feature_maps(num_inputs=(n, n) if n else (2, 3)))
    if op not in ("center_crop", "center_pad"):
        return OpCase(op, maps)
    size = []
    for s in spatial_sizes(maps.shapes[0], maps.data_format):
        if draw(st.sampled_from((False, False, False, True))):
            size.append(None)  # that axis is left as it is
        elif op == "center_crop":
            size.append(s - draw(st.integers(-2, s + 1)))
        else:
            size.append(s + draw(st.integers(-3, 4)))
    is_tensor = tuple(t is not None and draw(st.booleans()) for t in size)
    return OpCase(op, maps, tuple(size), is_tensor)


def op_reference(case, arrays):
    """The NumPy result of `case`, or `Invalid` with the reason."""
    data_format = case.maps.data_format
    if case.op in ("center_crop", "center_pad"):
        sizes = spatial_sizes(arrays[0].shape, data_format)
        targets = [
            (s, t)
            for s, t in zip(sizes, case.size, strict=True)
            if t is not None
        ]
        if case.op == "center_crop":
            if any(not 0 <= t <= s for s, t in targets):
                return Invalid(f"a crop of sizes {sizes} to {case.size}")
            return np_center_crop(arrays[0], case.size, data_format)
        if any(t < s for s, t in targets):
            return Invalid(f"a pad of sizes {sizes} to {case.size}")
        return np_center_pad(arrays[0], case.size, data_format)
    if case.op == "center_crop_to":
        x, reference = arrays
        size = spatial_sizes(reference.shape, data_format)
        if any(
            t > s
            for s, t in zip(
                spatial_sizes(x.shape, data_format), size, strict=True
            )
        ):
            return Invalid(f"a crop of {x.shape} to {reference.shape}")
        return np_center_crop(x, size, data_format)
    if len({a.shape[0] for a in arrays}) > 1:
        return Invalid(f"batch sizes of {[a.shape for a in arrays]} differ")
    if case.op == "crop_to_smallest":
        return np_crop_to_smallest(arrays, data_format)
    return np_pad_to_largest(arrays, data_format)


def call_op(case, xs, size):
    """The op of `case` on the feature maps `xs`, with `size` for
    `center_crop` and `center_pad`."""
    data_format = case.maps.data_format
    if case.op == "center_crop":
        return kf_ops.center_crop(xs[0], size, data_format=data_format)
    if case.op == "center_pad":
        return kf_ops.center_pad(xs[0], size, data_format=data_format)
    if case.op == "center_crop_to":
        return kf_ops.center_crop_to(xs[0], xs[1], data_format=data_format)
    op = getattr(kf_ops, case.op)
    return op(list(xs), data_format=data_format)


def size_with_tensors(case, tensors):
    """`case.size` with the entries marked as tensors taken, in order,
    from `tensors`."""
    if case.size is None:
        return None
    tensors = iter(tensors)
    return tuple(
        next(tensors) if is_tensor else t
        for t, is_tensor in zip(case.size, case.size_is_tensor, strict=True)
    )


def tensor_sizes(case):
    return [
        np.int32(t)
        for t, is_tensor in zip(
            case.size or (), case.size_is_tensor, strict=True
        )
        if is_tensor
    ]


@given(size=st.integers(0, 20), target=st.integers(-3, 23))
def test_center_crop_offsets_split_the_difference(size, target):
    if not 0 <= target <= size:
        with pytest.raises(ValueError):
            kf_ops.center_crop_offsets(size, target)
        return
    before, after = kf_ops.center_crop_offsets(size, target)
    assert (before, after) == ((size - target) // 2, size - target - before)


@pytest.mark.parametrize("op", OPS)
@examples(EAGER)
@given(data=st.data())
def test_op_matches_numpy_eagerly(op, data):
    case = data.draw(op_cases(op), label="case")
    arrays = case.maps.arrays()
    size = size_with_tensors(
        case, [keras.ops.convert_to_tensor(t) for t in tensor_sizes(case)]
    )
    assert_result_or_error(
        lambda: call_op(case, arrays, size), op_reference(case, arrays)
    )


@pytest.mark.parametrize("op", OPS)
@examples(EAGER)
@given(data=st.data())
def test_op_matches_numpy_in_a_functional_model(op, data):
    case = data.draw(op_cases(op), label="case")
    arrays = case.maps.arrays()
    inputs = keras_inputs(case.maps.signatures())

    def compute():
        return keras.Model(inputs, call_op(case, inputs, case.size))(arrays)

    assert_result_or_error(compute, op_reference(case, arrays))


def traced_op(case):
    """`case` as a function of tensors, with its signature (`None` where
    `case.maps` leaves sizes unknown, a scalar int32 for each size passed
    as a tensor) and its arguments."""
    import tensorflow as tf

    arrays = case.maps.arrays()
    sizes = tensor_sizes(case)
    signature = tensor_specs(case.maps.signatures())
    signature += [tf.TensorSpec((), tf.int32)] * len(sizes)
    n = len(arrays)

    def function(*args):
        return call_op(case, args[:n], size_with_tensors(case, args[n:]))

    return function, signature, [*arrays, *sizes]


def check_tf_function(case, jit_compile):
    function, signature, args = traced_op(case)
    assert_result_or_error(
        lambda: run_tf_function(function, signature, args, jit_compile),
        op_reference(case, case.maps.arrays()),
        tf_graph_errors(),
    )


# A crop to a size larger than the run-time input, and a pad to the
# largest of inputs whose sizes are all None: explicit examples, which run
# in every profile. The traced TensorFlow modes (tf.function, XLA,
# SavedModel) cost a trace or a compilation per example: one property
# each draws the op too.
CROP_OF_6_BY_7_TO_10_BY_5 = OpCase(
    "center_crop",
    Maps(((2, 6, 7, 3),), "channels_last", ((True, True, True, False),), 0),
    (10, 5),
    (False, False),
)
PAD_TO_LARGEST_OF_NONE_SIZES = OpCase(
    "pad_to_largest",
    Maps(
        ((2, 3, 4, 5), (2, 2, 6, 5)),
        "channels_first",
        ((True, False, True, True),) * 2,
        0,
    ),
)
ALL_OPS = st.sampled_from(OPS).flatmap(op_cases)


@example(case=CROP_OF_6_BY_7_TO_10_BY_5)
@example(case=PAD_TO_LARGEST_OF_NONE_SIZES)
@pytest.mark.backends("tensorflow", reason=TF_GRAPHS)
@examples(0.3)
@given(case=ALL_OPS)
def test_op_matches_numpy_in_tf_function_with_none_sizes(case):
    check_tf_function(case, jit_compile=False)


@example(case=CROP_OF_6_BY_7_TO_10_BY_5)
@example(case=PAD_TO_LARGEST_OF_NONE_SIZES)
@pytest.mark.backends("tensorflow", reason=TF_GRAPHS)
@examples(0.3)
@given(case=ALL_OPS)
def test_op_matches_numpy_under_xla_with_none_sizes(case):
    check_tf_function(case, jit_compile=True)


@pytest.mark.backends("jax", reason=JAX_JIT)
@pytest.mark.parametrize("op", OPS)
@examples(0.25)
@given(data=st.data())
def test_op_matches_numpy_under_jax_jit(op, data):
    case = data.draw(op_cases(op), label="case")
    arrays = case.maps.arrays()
    assert_result_or_error(
        lambda: run_jax_jit(lambda *xs: call_op(case, xs, case.size), arrays),
        op_reference(case, arrays),
    )


@example(case=CROP_OF_6_BY_7_TO_10_BY_5)
@example(case=PAD_TO_LARGEST_OF_NONE_SIZES)
@pytest.mark.backends("tensorflow", reason=TF_SAVED_MODEL)
@examples(0.05)
@given(case=ALL_OPS)
def test_op_matches_numpy_through_a_saved_model(case):
    function, signature, args = traced_op(case)
    assert_result_or_error(
        lambda: run_saved_model(function, signature, args),
        op_reference(case, case.maps.arrays()),
        tf_graph_errors(),
    )
