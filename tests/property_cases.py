"""Hypothesis strategies, NumPy references and execution modes shared by
the property tests of the ops (`tests/ops/test_properties.py`) and of the
fusion layers (`tests/layers/test_properties.py`).

A case is drawn as shapes, not arrays: a rank (1D, 2D or 3D feature maps),
a data format, batch sizes, channel counts, spatial sizes (1 to 9, odd and
even, 1 more often; 1 to 5 in 3D), which sizes a traced signature leaves
`None`, and a seed for the values (`tests.layer_test_case.make_inputs`).
Hypothesis then shrinks a failure to the smallest shapes, and prints them.

Each property states the same thing in every execution mode: where the
inputs are valid, the result is the NumPy reference written here (centre
crop with `d // 2` before and `d - d // 2` after, zero padding split the
same way); where they are not, the call raises (`ValueError` in eager code
or when a layer is built or traced; `tf.errors.InvalidArgumentError` when a
TensorFlow graph runs), never returning a result. The references know
nothing of keras_fusion.

How many examples a property runs comes from the Hypothesis profile that
`conftest.py` loads ("ci", "dev" or "long"), scaled by `examples`: traced
and compiled modes cost a trace or an XLA compilation per example, a
SavedModel a save and a load.
"""

import dataclasses
import os
import tempfile

import keras
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st

from tests.backend_utils import to_numpy
from tests.layer_test_case import make_inputs

DATA_FORMATS = ("channels_last", "channels_first")
TF_GRAPHS = (
    "tf.function and XLA trace sizes left None as run-time tensors; JAX "
    "traces static sizes and PyTorch's are ints"
)
TF_SAVED_MODEL = "tf.saved_model is TensorFlow's"
JAX_JIT = "jax.jit"
# The share of `max_examples` that eager properties (and functional models,
# which run op by op) run: outside `jax.jit`, JAX compiles each op for each
# new shape, which makes an example cost it 10 to 50 times what it costs
# TensorFlow or PyTorch.
EAGER = 0.25 if keras.backend.backend() == "jax" else 1.0


def examples(share):
    """Settings for a property that runs `share` of the profile's
    `max_examples` (at least 2)."""
    return settings(
        max_examples=max(2, round(settings.default.max_examples * share))
    )


# Shapes.


def channel_axis(rank, data_format):
    return 1 if data_format == "channels_first" else rank - 1


def spatial_axes(rank, data_format):
    first = 2 if data_format == "channels_first" else 1
    return tuple(range(first, first + rank - 2))


def spatial_sizes(shape, data_format):
    return tuple(shape[a] for a in spatial_axes(len(shape), data_format))


def mask_shape(shape, data_format):
    """The shape of a feature map's mask: its shape without channels."""
    channel = channel_axis(len(shape), data_format)
    return tuple(s for axis, s in enumerate(shape) if axis != channel)


@dataclasses.dataclass(frozen=True)
class Maps:
    """Feature maps: their shapes, data format, the axes that traced
    signatures leave `None` (`unknown`, per input and axis) and the seed
    of their values."""

    shapes: tuple
    data_format: str
    unknown: tuple
    seed: int

    @property
    def rank(self):
        return len(self.shapes[0])

    @property
    def channel_axis(self):
        return channel_axis(self.rank, self.data_format)

    def arrays(self):
        return make_inputs(list(self.shapes), seed=self.seed)

    def signatures(self):
        """Each input's shape with its unknown sizes `None`."""
        return [
            tuple(None if u else s for s, u in zip(shape, unknown, strict=True))
            for shape, unknown in zip(self.shapes, self.unknown, strict=True)
        ]


def _rarely():
    """A bool that is True one time in four (False when shrunk)."""
    return st.sampled_from((False, False, False, True))


@st.composite
def feature_maps(
    draw,
    num_inputs=(2, 3),
    same_batch=False,
    same_spatial=False,
    same_channels=False,
):
    """`Maps` of one rank and data format. Unless told to keep them
    equal, batch sizes and channel counts differ one time in four, spatial
    sizes one time in two (each drawn for each input then). A size is 1
    one time in five or more: where a size of 1 meets another, an
    element-wise op broadcasts instead of failing."""
    rank = draw(st.sampled_from((3, 4, 5)))
    data_format = draw(st.sampled_from(DATA_FORMATS))
    n = draw(st.integers(*num_inputs))
    largest = 9 if rank < 5 else 5
    sizes = st.sampled_from((1, *range(1, largest + 1)))

    def per_input(values, same, differ):
        if not same and draw(differ):
            return draw(st.lists(values, min_size=n, max_size=n))
        return [draw(values)] * n

    batches = per_input(st.integers(1, 3), same_batch, _rarely())
    channels = per_input(st.integers(1, 3), same_channels, _rarely())
    differ = not same_spatial and draw(st.booleans())
    spatial = [
        per_input(sizes, not differ, st.just(True)) for _ in range(rank - 2)
    ]
    shapes = []
    for i in range(n):
        shape = [batches[i]] + [s[i] for s in spatial]
        shape.insert(channel_axis(rank, data_format), channels[i])
        shapes.append(tuple(shape))
    # Static, all unknown (batch and spatial sizes) or mixed; channel
    # counts stay known, as the layers with weights need them.
    kind = draw(st.sampled_from(("static", "unknown", "mixed")))
    channel = channel_axis(rank, data_format)
    unknown = []
    for _ in range(n):
        unknown.append(
            tuple(
                axis != channel
                and (
                    kind == "unknown"
                    or (kind == "mixed" and draw(st.booleans()))
                )
                for axis in range(rank)
            )
        )
    seed = draw(st.integers(0, 2**16))
    return Maps(tuple(shapes), data_format, tuple(unknown), seed)


# NumPy references.


class Invalid:
    """The reference of invalid inputs: an error, for `reason`."""

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return f"Invalid({self.reason!r})"


def np_center_crop(x, size, data_format):
    """`x` centre-cropped to `size` (one entry per spatial axis, `None`
    keeps it): `d // 2` removed before, `d - d // 2` after."""
    index = [slice(None)] * x.ndim
    for axis, target in zip(
        spatial_axes(x.ndim, data_format), size, strict=True
    ):
        if target is not None:
            before = (x.shape[axis] - target) // 2
            index[axis] = slice(before, before + target)
    return x[tuple(index)]


def np_center_pad(x, size, data_format, value=0):
    """`x` padded with `value` to `size`: `d // 2` before, the rest after."""
    pad_width = [(0, 0)] * x.ndim
    for axis, target in zip(
        spatial_axes(x.ndim, data_format), size, strict=True
    ):
        if target is not None:
            d = target - x.shape[axis]
            pad_width[axis] = (d // 2, d - d // 2)
    return np.pad(x, pad_width, constant_values=value)


def np_crop_to_smallest(arrays, data_format):
    smallest = [
        min(a.shape[axis] for a in arrays)
        for axis in spatial_axes(arrays[0].ndim, data_format)
    ]
    return [np_center_crop(a, smallest, data_format) for a in arrays]


def np_pad_to_largest(arrays, data_format, value=0):
    largest = [
        max(a.shape[axis] for a in arrays)
        for axis in spatial_axes(arrays[0].ndim, data_format)
    ]
    return [np_center_pad(a, largest, data_format, value) for a in arrays]


def np_align(arrays, align, data_format, value=0):
    if align == "crop":
        return np_crop_to_smallest(arrays, data_format)
    if align == "pad":
        return np_pad_to_largest(arrays, data_format, value)
    return list(arrays)


def np_weighted_add(arrays, fusion_epsilon=1e-4):
    """BiFPN's fast normalized fusion with every weight at its initial 1:
    `sum(relu(w) * x) / (sum(relu(w)) + fusion_epsilon)`."""
    weights = np.maximum(np.ones(len(arrays), "float32"), 0)
    weights = weights / (weights.sum() + np.float32(fusion_epsilon))
    return sum(w * a for w, a in zip(weights, arrays, strict=True))


def np_fused_mask(shapes, masks, align, data_format):
    """Each input's mask (all True for `None`) aligned as its input is
    (cropped with its offsets, padded with False), then "valid where any
    input is valid"."""
    channel = channel_axis(len(shapes[0]), data_format)
    aligned = []
    for shape, m in zip(shapes, masks, strict=True):
        if m is None:
            m = np.ones(mask_shape(shape, data_format), bool)
        aligned.append(np.expand_dims(np.asarray(m, bool), channel))
    aligned = np_align(aligned, align, data_format, value=False)
    return np.any(np.concatenate(aligned, axis=channel), axis=channel)


# Checking a result against its reference.


def assert_result_or_error(compute, reference, errors=(ValueError,)):
    """`compute()` gives `reference` (an array, a list of arrays, or `None`
    for no mask) or, where `reference` is `Invalid`, raises one of
    `errors`: never a result."""
    if isinstance(reference, Invalid):
        try:
            result = compute()
        except errors:
            return
        pytest.fail(
            f"{reference.reason}: expected an error, got a result "
            f"({_describe(result)})"
        )
    assert_same(compute(), reference)


def assert_same(result, reference):
    if reference is None:
        assert result is None, f"expected no mask, got {_describe(result)}"
        return
    if isinstance(reference, list):
        assert isinstance(result, (list, tuple)), _describe(result)
        assert len(result) == len(reference)
        for r, e in zip(result, reference, strict=True):
            assert_same(r, e)
        return
    assert result is not None, f"expected shape {reference.shape}, got None"
    result = to_numpy(result)
    assert result.shape == reference.shape
    if reference.dtype == bool:
        np.testing.assert_array_equal(result, reference)
    else:
        np.testing.assert_allclose(result, reference, rtol=1e-5, atol=1e-6)


def _describe(result):
    if result is None:
        return "None"
    if isinstance(result, (list, tuple)):
        return ", ".join(_describe(r) for r in result)
    return f"shape {tuple(result.shape)}"


# Execution modes.


def tf_graph_errors():
    """What a TensorFlow graph may raise for invalid inputs: `ValueError`
    when it is traced, `InvalidArgumentError` when it runs."""
    import tensorflow as tf

    return (ValueError, tf.errors.InvalidArgumentError)


def tensor_specs(signatures, dtype="float32"):
    import tensorflow as tf

    return [tf.TensorSpec(s, dtype) for s in signatures]


def run_tf_function(function, signature, args, jit_compile=False):
    """`function(*args)` traced by `tf.function` with `signature` (sizes
    left `None` are run-time tensors), XLA-compiled with `jit_compile`."""
    import tensorflow as tf

    traced = tf.function(
        function, input_signature=signature, jit_compile=jit_compile
    )
    return traced(*args)


def run_saved_model(function, signature, args, trackable=None):
    """`function(*args)` through a SavedModel: a `tf.Module` holding
    `function` traced with `signature` (and `trackable`, the layer whose
    variables it reads), saved, loaded and called."""
    import tensorflow as tf

    module = tf.Module()
    module.trackable = trackable
    module.function = tf.function(function, input_signature=signature)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "saved_model")
        tf.saved_model.save(module, path)
        loaded = tf.saved_model.load(path)
        return loaded.function(*args)


def run_jax_jit(function, args):
    import jax

    return jax.jit(function)(*args)


def keras_inputs(signatures, dtype="float32"):
    """`keras.Input`s of these full shapes (batch included)."""
    return [
        keras.Input(shape=s[1:], batch_size=s[0], dtype=dtype)
        for s in signatures
    ]
