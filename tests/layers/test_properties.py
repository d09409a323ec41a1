"""Property-based tests of the fusion layers against NumPy references.

`CropAndConcat`, `FusionSelector` (every `mode` and `align`) and
`WeightedAdd` on random 1D/2D/3D feature maps in either data format, with
batch sizes, spatial sizes and channel counts that agree or differ: each
gives the NumPy reference where its inputs are valid and raises where they
are not, in eager code, in a functional model on inputs with static,
`None` and mixed sizes, in a `tf.function` with `None` sizes in its
signature, XLA-compiled, under `jax.jit` and, for a sample, through a
SavedModel. Masks (each input's shape without the channel axis, or
`None`, sometimes of a wrong shape) follow their inputs: cropped with the
same offsets, padded with False, combined as "valid where any input is
valid", by the rules of each layer's docstring. Strategies, references and
execution modes: `tests/property_cases.py`.
"""

import dataclasses

import keras
import numpy as np
import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from keras_fusion import CropAndConcat
from keras_fusion import FusionSelector
from keras_fusion import WeightedAdd
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
from tests.property_cases import mask_shape
from tests.property_cases import np_align
from tests.property_cases import np_crop_to_smallest
from tests.property_cases import np_fused_mask
from tests.property_cases import np_weighted_add
from tests.property_cases import run_jax_jit
from tests.property_cases import run_saved_model
from tests.property_cases import run_tf_function
from tests.property_cases import spatial_sizes
from tests.property_cases import tensor_specs
from tests.property_cases import tf_graph_errors

LAYERS = {
    "CropAndConcat": CropAndConcat,
    "FusionSelector": FusionSelector,
    "WeightedAdd": WeightedAdd,
}


@dataclasses.dataclass(frozen=True)
class FusionCase:
    """A fusion layer's class name and arguments, its feature maps and,
    for the mask properties, each input's mask shape (`None`: no mask)."""

    layer: str
    config: tuple
    maps: Maps
    mask_shapes: tuple = None

    @property
    def options(self):
        return dict(self.config)

    def make_layer(self):
        return LAYERS[self.layer](
            data_format=self.maps.data_format, **self.options
        )

    def sums(self):
        """Whether the layer adds its inputs (of one channel count)."""
        if self.layer == "FusionSelector":
            return self.options["mode"] != "concat"
        return self.layer == "WeightedAdd"

    def aligns(self):
        """Whether the layer takes inputs of different spatial sizes."""
        if self.layer == "FusionSelector":
            return self.options["align"] is not None
        return self.layer == "CropAndConcat"

    def masks(self):
        """Random boolean masks of `mask_shapes`."""
        rng = np.random.default_rng(self.maps.seed + 1)
        return [
            None if shape is None else rng.random(shape) < 0.6
            for shape in self.mask_shapes
        ]

    def mask_signatures(self):
        """Each mask's shape with `None` where its input's size is `None`
        in `maps.signatures()` (masked inputs only)."""
        signatures = []
        for shape, signature in zip(
            self.mask_shapes, self.maps.signatures(), strict=True
        ):
            if shape is None:
                continue
            known = mask_shape(signature, self.maps.data_format)
            signatures.append(
                tuple(
                    None if i < len(known) and known[i] is None else s
                    for i, s in enumerate(shape)
                )
            )
        return signatures


@st.composite
def fusion_cases(draw, layer, masks=False):
    """A `FusionCase` of `layer`. With `masks`, its inputs are valid and
    each has a mask, none, or (one time in five) a mask of a wrong shape."""
    config = {}
    if layer == "FusionSelector":
        config["mode"] = draw(
            st.sampled_from(("add", "concat", "weighted_add"))
        )
        config["align"] = draw(st.sampled_from((None, "crop", "pad")))
    if layer == "WeightedAdd" or config.get("mode") == "weighted_add":
        config["weight_per_channel"] = draw(st.booleans())
    case = FusionCase(layer, tuple(sorted(config.items())), None)
    maps = draw(
        feature_maps(
            same_batch=masks,
            same_spatial=masks and not case.aligns(),
            same_channels=masks and case.sums(),
        )
    )
    case = dataclasses.replace(case, maps=maps)
    if not masks:
        return case
    mask_shapes = []
    for shape in maps.shapes:
        expected = mask_shape(shape, maps.data_format)
        kind = draw(st.sampled_from(("mask", "none", "mask", "none", "wrong")))
        if kind == "none":
            mask_shapes.append(None)
        elif kind == "mask":
            mask_shapes.append(expected)
        elif draw(st.sampled_from((False, False, False, True))):
            mask_shapes.append(expected[:-1])  # a wrong rank
        else:
            axis = draw(st.integers(0, len(expected) - 1))
            size = draw(
                st.integers(1, expected[axis] + 2).filter(
                    lambda s, wrong=expected[axis]: s != wrong
                )
            )
            mask_shapes.append((*expected[:axis], size, *expected[axis + 1 :]))
    return dataclasses.replace(case, mask_shapes=tuple(mask_shapes))


def invalid_inputs(case):
    """Why the inputs of `case` are invalid, or `None`."""
    shapes, data_format = case.maps.shapes, case.maps.data_format
    if len({s[0] for s in shapes}) > 1:
        return f"batch sizes of {shapes} differ"
    if (
        not case.aligns()
        and len({spatial_sizes(s, data_format) for s in shapes}) > 1
    ):
        return f"spatial sizes of {shapes} differ without align"
    if case.sums() and len({s[case.maps.channel_axis] for s in shapes}) > 1:
        return f"channel counts of {shapes} differ"
    return None


def invalid_masks(case):
    """Why the masks of `case` are invalid, or `None`."""
    for index, (shape, received) in enumerate(
        zip(case.maps.shapes, case.mask_shapes, strict=True)
    ):
        expected = mask_shape(shape, case.maps.data_format)
        if received is not None and received != expected:
            return f"mask {index} of shape {received} for input {shape}"
    return None


def output_reference(case, arrays):
    """The NumPy output of the untrained layer of `case`, or `Invalid`."""
    reason = invalid_inputs(case)
    if reason:
        return Invalid(reason)
    data_format, channel = case.maps.data_format, case.maps.channel_axis
    if case.layer == "CropAndConcat":
        return np.concatenate(
            np_crop_to_smallest(arrays, data_format), axis=channel
        )
    if case.layer == "WeightedAdd":
        return np_weighted_add(arrays)
    options = case.options
    aligned = np_align(arrays, options["align"], data_format)
    if options["mode"] == "concat":
        return np.concatenate(aligned, axis=channel)
    if options["mode"] == "add":
        return sum(aligned)
    return np_weighted_add(aligned)


def mask_reference(case, masks):
    """The NumPy output mask of `case` (`None`: no mask), or `Invalid`."""
    reason = invalid_inputs(case) or invalid_masks(case)
    if reason:
        return Invalid(reason)
    if all(m is None for m in masks):
        return None
    shapes, data_format = case.maps.shapes, case.maps.data_format
    if case.layer == "CropAndConcat":
        return np_fused_mask(shapes, masks, "crop", data_format)
    align = case.options.get("align")
    if case.sums() and align != "pad" and any(m is None for m in masks):
        # As keras.layers.Add: an unmasked input is valid everywhere.
        return None
    return np_fused_mask(shapes, masks, align, data_format)


def with_masks(mask_shapes, masks):
    """One entry per input: the next of `masks` where the input has a
    mask, else `None`."""
    masks = iter(masks)
    return [None if shape is None else next(masks) for shape in mask_shapes]


def present(masks):
    return [m for m in masks if m is not None]


@pytest.mark.parametrize("layer", LAYERS)
@examples(EAGER)
@given(data=st.data())
def test_output_matches_numpy_eagerly(layer, data):
    case = data.draw(fusion_cases(layer), label="case")
    arrays = case.maps.arrays()
    assert_result_or_error(
        lambda: case.make_layer()(arrays), output_reference(case, arrays)
    )


@pytest.mark.parametrize("layer", LAYERS)
@examples(EAGER)
@given(data=st.data())
def test_mask_matches_numpy_eagerly(layer, data):
    case = data.draw(fusion_cases(layer, masks=True), label="case")
    arrays, masks = case.maps.arrays(), case.masks()
    tensors = [
        None if m is None else keras.ops.convert_to_tensor(m) for m in masks
    ]
    fusion = case.make_layer()
    reason = invalid_masks(case)
    assert_result_or_error(
        lambda: fusion(arrays, mask=tensors),
        Invalid(reason) if reason else output_reference(case, arrays),
    )
    assert_result_or_error(
        lambda: fusion.compute_mask(arrays, tensors),
        mask_reference(case, masks),
    )


@pytest.mark.parametrize("layer", LAYERS)
@examples(EAGER)
@given(data=st.data())
def test_output_matches_numpy_in_a_functional_model(layer, data):
    case = data.draw(fusion_cases(layer), label="case")
    arrays = case.maps.arrays()
    inputs = keras_inputs(case.maps.signatures())
    assert_result_or_error(
        lambda: keras.Model(inputs, case.make_layer()(inputs))(arrays),
        output_reference(case, arrays),
    )


@pytest.mark.parametrize("layer", LAYERS)
@examples(EAGER)
@given(data=st.data())
def test_mask_matches_numpy_in_a_functional_model(layer, data):
    case = data.draw(fusion_cases(layer, masks=True), label="case")
    arrays, masks = case.maps.arrays(), case.masks()
    inputs = keras_inputs(case.maps.signatures())
    mask_inputs = keras_inputs(case.mask_signatures(), dtype="bool")

    def compute():
        fused = case.make_layer()(
            inputs, mask=with_masks(case.mask_shapes, mask_inputs)
        )
        mask = getattr(fused, "_keras_mask", None)
        model = keras.Model(
            [*inputs, *mask_inputs], [fused] if mask is None else [fused, mask]
        )
        outputs = model([*arrays, *present(masks)])
        return None if mask is None else outputs[1]

    # The model's mask output is the graph of `keras.ops` the layer's
    # `compute_mask` recorded when it ran on the symbolic inputs, where
    # the `None` sizes could not be compared: the model replays those ops,
    # not the layer's checks, so a mask of the wrong shape fails in the
    # backend's op (TensorFlow's LogicalAnd or ConcatV2, a JAX TypeError,
    # a PyTorch RuntimeError) rather than with our ValueError. Never a
    # result, which is the property.
    assert_result_or_error(
        compute, mask_reference(case, masks), replayed_op_errors()
    )


def replayed_op_errors():
    errors = (ValueError, TypeError, RuntimeError)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        errors += (tf.errors.InvalidArgumentError,)
    return errors


def check_output_in_tf_function(case, jit_compile):
    arrays = case.maps.arrays()
    fusion = case.make_layer()
    signatures = case.maps.signatures()

    def compute():
        fusion.build(signatures)
        return run_tf_function(
            lambda *xs: fusion(list(xs)),
            tensor_specs(signatures),
            arrays,
            jit_compile,
        )

    assert_result_or_error(
        compute, output_reference(case, arrays), tf_graph_errors()
    )


def check_mask_in_tf_function(case, jit_compile):
    arrays, masks = case.maps.arrays(), case.masks()
    fusion = case.make_layer()
    n = len(arrays)

    def compute_mask(*args):
        return fusion.compute_mask(
            list(args[:n]), with_masks(case.mask_shapes, args[n:])
        )

    signature = tensor_specs(case.maps.signatures())
    signature += tensor_specs(case.mask_signatures(), "bool")
    assert_result_or_error(
        lambda: run_tf_function(
            compute_mask, signature, [*arrays, *present(masks)], jit_compile
        ),
        mask_reference(case, masks),
        tf_graph_errors(),
    )


# Cases that broadcast where nothing checks the sizes known only at run
# time (None in the signature): an addition of inputs of 5 and 1 steps, a
# weighted addition of batch sizes 2 and 1, and a mask of shape (1, 1) for
# an input of 6 steps. Explicit examples run in every profile.
ADD_OF_5_AND_1_STEPS = FusionCase(
    "FusionSelector",
    (("align", None), ("mode", "add")),
    Maps(
        ((2, 5, 3), (2, 1, 3)), "channels_last", ((True, True, False),) * 2, 0
    ),
)
WEIGHTED_ADD_OF_BATCH_2_AND_1 = FusionCase(
    "WeightedAdd",
    (("weight_per_channel", False),),
    Maps(
        ((2, 3, 4, 2), (1, 3, 4, 2)),
        "channels_first",
        ((True, False, True, True),) * 2,
        0,
    ),
)
MASK_OF_1_STEP_FOR_6 = FusionCase(
    "CropAndConcat",
    (),
    Maps(
        ((1, 6, 2), (1, 4, 3)), "channels_last", ((True, True, False),) * 2, 0
    ),
    mask_shapes=((1, 1), None),
)
# The traced TensorFlow modes (tf.function, XLA, SavedModel) cost a trace
# or a compilation per example: one property each draws the layer too,
# with the cases above as explicit examples.
OUTPUT_CASES = st.sampled_from(list(LAYERS)).flatmap(fusion_cases)
MASK_CASES = st.sampled_from(list(LAYERS)).flatmap(
    lambda layer: fusion_cases(layer, masks=True)
)


@example(case=ADD_OF_5_AND_1_STEPS)
@example(case=WEIGHTED_ADD_OF_BATCH_2_AND_1)
@pytest.mark.backends("tensorflow", reason=TF_GRAPHS)
@examples(1.0)
@given(case=OUTPUT_CASES)
def test_output_matches_numpy_in_tf_function_with_none_sizes(case):
    check_output_in_tf_function(case, jit_compile=False)


@example(case=MASK_OF_1_STEP_FOR_6)
@pytest.mark.backends("tensorflow", reason=TF_GRAPHS)
@examples(0.5)
@given(case=MASK_CASES)
def test_mask_matches_numpy_in_tf_function_with_none_sizes(case):
    check_mask_in_tf_function(case, jit_compile=False)


@example(case=ADD_OF_5_AND_1_STEPS)
@example(case=WEIGHTED_ADD_OF_BATCH_2_AND_1)
@pytest.mark.backends("tensorflow", reason=TF_GRAPHS)
@examples(0.5)
@given(case=OUTPUT_CASES)
def test_output_matches_numpy_under_xla_with_none_sizes(case):
    check_output_in_tf_function(case, jit_compile=True)


@example(case=MASK_OF_1_STEP_FOR_6)
@pytest.mark.backends("tensorflow", reason=TF_GRAPHS)
@examples(0.3)
@given(case=MASK_CASES)
def test_mask_matches_numpy_under_xla_with_none_sizes(case):
    check_mask_in_tf_function(case, jit_compile=True)


@pytest.mark.backends("jax", reason=JAX_JIT)
@pytest.mark.parametrize("layer", LAYERS)
@examples(0.25)
@given(data=st.data())
def test_output_matches_numpy_under_jax_jit(layer, data):
    case = data.draw(fusion_cases(layer), label="case")
    arrays = case.maps.arrays()
    fusion = case.make_layer()

    def compute():
        fusion.build(case.maps.shapes)
        return run_jax_jit(lambda *xs: fusion(list(xs)), arrays)

    assert_result_or_error(compute, output_reference(case, arrays))


@pytest.mark.backends("jax", reason=JAX_JIT)
@pytest.mark.parametrize("layer", LAYERS)
@examples(0.25)
@given(data=st.data())
def test_mask_matches_numpy_under_jax_jit(layer, data):
    case = data.draw(fusion_cases(layer, masks=True), label="case")
    arrays, masks = case.maps.arrays(), case.masks()
    fusion = case.make_layer()
    assert_result_or_error(
        lambda: run_jax_jit(fusion.compute_mask, [arrays, masks]),
        mask_reference(case, masks),
    )


@example(case=ADD_OF_5_AND_1_STEPS)
@example(case=WEIGHTED_ADD_OF_BATCH_2_AND_1)
@pytest.mark.backends("tensorflow", reason=TF_SAVED_MODEL)
@examples(0.05)
@given(case=OUTPUT_CASES)
def test_output_matches_numpy_through_a_saved_model(case):
    arrays = case.maps.arrays()
    fusion = case.make_layer()
    signatures = case.maps.signatures()

    def compute():
        fusion.build(signatures)
        return run_saved_model(
            lambda *xs: fusion(list(xs)),
            tensor_specs(signatures),
            arrays,
            trackable=fusion,
        )

    assert_result_or_error(
        compute, output_reference(case, arrays), tf_graph_errors()
    )
