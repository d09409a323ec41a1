"""Element-wise fusion and masks whose sizes are known only at run time.

`FusionSelector(mode="add")`, `(mode="weighted_add")` and `WeightedAdd`
sum their inputs, and a fused mask is the logical and of a mask with its
input's positions: an input (or mask) of size 1 would broadcast to the
other's size. The static checks cover sizes known when the layer is
traced; these tests cover those known only when a TensorFlow graph runs
(a `tf.function` or a SavedModel signature with `None` sizes, Keras's
retrace with relaxed shapes, XLA) and the LiteRT and ONNX exports, where
the converters drop TensorFlow's `Assert`.
"""

import re

import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from keras_fusion import FusionSelector
from keras_fusion import WeightedAdd
from tests.backend_utils import TF_RUN_TIME_SIZES
from tests.backend_utils import tensorflow_only
from tests.layer_test_case import check_export
from tests.layer_test_case import serve

ADDING_LAYERS = pytest.mark.parametrize(
    "make_layer, name",
    [
        (lambda: FusionSelector("add"), "fusion_selector_inputs"),
        # The weighted addition's sublayer checks its inputs.
        (lambda: FusionSelector("weighted_add"), "weighted_add_inputs"),
        (WeightedAdd, "weighted_add_inputs"),
    ],
    ids=["add", "weighted_add", "WeightedAdd"],
)

VALID = [np.full((2, 5, 5, 4), 1.0, "float32"), np.full((2, 5, 5, 4), 3.0)]
# An input of size 1 broadcasts; sizes transposed have the same number of
# elements (a reshape alone would not see them); batch sizes differ.
MISMATCHED = {
    "size_one": [np.ones((1, 1, 1, 4), "float32"), np.ones((1, 6, 6, 4))],
    "transposed": [np.ones((1, 2, 3, 4), "float32"), np.ones((1, 3, 2, 4))],
    "batch": [np.ones((1, 5, 5, 4), "float32"), np.ones((3, 5, 5, 4))],
}
RUN_TIME_SHAPES = {
    "size_one": "[(1, 1, 1, 4), (1, 6, 6, 4)]",
    "transposed": "[(1, 2, 3, 4), (1, 3, 2, 4)]",
    "batch": "[(1, 5, 5, 4), (3, 5, 5, 4)]",
}


def dynamic_model(layer):
    a = keras.Input((None, None, 4), name="a")
    b = keras.Input((None, None, 4), name="b")
    return keras.Model([a, b], layer([a, b]))


def as_float32(arrays):
    return [np.asarray(a, "float32") for a in arrays]


def expected_sum(layer, arrays):
    """The valid inputs' fusion: a sum, or the average of the untrained
    weighted addition (weights 1, BiFPN's fusion_epsilon 1e-4)."""
    total = sum(as_float32(arrays))
    if isinstance(layer, WeightedAdd) or layer.mode == "weighted_add":
        return total / (2 + 1e-4)
    return total


@tensorflow_only(TF_RUN_TIME_SIZES)
@ADDING_LAYERS
@pytest.mark.parametrize("case", sorted(MISMATCHED))
def test_sum_errors_in_tf_function_with_none_sizes(make_layer, name, case):
    import tensorflow as tf

    layer = make_layer()
    spec = tf.TensorSpec((None, None, None, 4))
    fuse = tf.function(lambda a, b: layer([a, b]), input_signature=[spec] * 2)
    np.testing.assert_allclose(
        fuse(*as_float32(VALID)), expected_sum(layer, VALID), rtol=1e-6
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="should have the same.*run-time shapes.*"
        + re.escape(RUN_TIME_SHAPES[case]),
    ):
        fuse(*as_float32(MISMATCHED[case]))


@tensorflow_only(TF_RUN_TIME_SIZES)
@ADDING_LAYERS
@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_errors_after_retracing_with_none_sizes(
    make_layer, name, jit_compile
):
    import tensorflow as tf

    layer = make_layer()
    model = dynamic_model(layer)
    model.compile(loss="mse", jit_compile=jit_compile)
    np.testing.assert_allclose(
        model.predict(as_float32(VALID), verbose=0),
        expected_sum(layer, VALID),
        rtol=1e-6,
    )
    # A second input size makes Keras retrace with `None` sizes; under XLA
    # the slice to the other input's size fails when it compiles.
    match = "Expected size" if jit_compile else "should have the same"
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        model.predict(as_float32(MISMATCHED["size_one"]), verbose=0)
    model.evaluate(as_float32(VALID), np.ones((2, 5, 5, 4)), verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        model.evaluate(
            as_float32(MISMATCHED["transposed"]),
            np.ones((1, 3, 2, 4), "float32"),
            verbose=0,
        )


@tensorflow_only(TF_RUN_TIME_SIZES)
@ADDING_LAYERS
def test_batch_sizes_are_checked_under_xla(make_layer, name):
    import tensorflow as tf

    layer = make_layer()
    spec = tf.TensorSpec((None, None, None, 4))
    fuse = tf.function(
        lambda a, b: layer([a, b]),
        input_signature=[spec] * 2,
        jit_compile=True,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected size"):
        fuse(*as_float32(MISMATCHED["batch"]))


@tensorflow_only(TF_RUN_TIME_SIZES)
@ADDING_LAYERS
def test_exported_saved_model_errors_on_mismatched_sizes(
    make_layer, name, tmp_path
):
    import tensorflow as tf

    layer = make_layer()
    model = dynamic_model(layer)
    model(as_float32(VALID))
    model.export(str(tmp_path), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path))
    endpoint = loaded.serve
    np.testing.assert_allclose(
        endpoint(as_float32(VALID)), expected_sum(layer, VALID), rtol=1e-6
    )
    for case, arrays in MISMATCHED.items():
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=re.escape(RUN_TIME_SHAPES[case]),
        ):
            endpoint(as_float32(arrays))


# The converters drop the `Assert`: LiteRT's Slice fails on a size beyond
# its input, and ONNX's Slice, which clamps, is followed by a reshape to
# the other input's size, which fails (its node named after the check).
EXPORTED_SHAPES_DIFFER = {
    "litert": "Invalid begin and size.*SLICE",
    "onnx": "Reshape node.*{name}_size",
}


@tensorflow_only(TF_RUN_TIME_SIZES)
@ADDING_LAYERS
@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_exported_sum_fails_on_mismatched_sizes(
    make_layer, name, export_format, tmp_path
):
    layer = make_layer()
    model = dynamic_model(layer)
    path = check_export(
        model,
        [(as_float32(VALID), expected_sum(layer, VALID))],
        tmp_path,
        1e-6,
        export_format,
    )
    match = EXPORTED_SHAPES_DIFFER[export_format].format(name=name)
    for arrays in MISMATCHED.values():
        with pytest.raises(RuntimeError, match=f"(?s){match}"):
            serve(path, as_float32(arrays), ["a", "b"])


MASK_LAYERS = pytest.mark.parametrize(
    "layer",
    [
        CropAndConcat(),
        FusionSelector("concat"),
        FusionSelector("add", align="pad"),
        FusionSelector("weighted_add", align="crop"),
        WeightedAdd(),
    ],
    ids=["CropAndConcat", "concat", "add_pad", "weighted_add_crop", "WA"],
)


@tensorflow_only(TF_RUN_TIME_SIZES)
@MASK_LAYERS
def test_mask_of_wrong_run_time_shape_errors(layer):
    import tensorflow as tf

    compute_mask = tf.function(
        lambda x, mask: layer.compute_mask([x, x], [mask, mask]),
        input_signature=[
            tf.TensorSpec((None, None, 4)),
            tf.TensorSpec((None, None), tf.bool),
        ],
    )
    x = np.ones((1, 6, 4), "float32")
    mask = np.array([[True, False, True, True, False, True]])
    np.testing.assert_array_equal(compute_mask(x, mask), mask)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=re.escape(
            "`mask[0]` should have the shape of input 0 without the "
            "channel axis. Received: input without its channel axis and "
            "mask with run-time shapes [(1, 6), (1, 1)]"
        ),
    ):
        compute_mask(x, np.array([[True]]))


def mixed_model(layer):
    """One input of static size 5x5, one of `None` sizes: the larger
    run-time input must not be cut to the static one's size."""
    a = keras.Input((5, 5, 4), name="a")
    b = keras.Input((None, None, 4), name="b")
    return keras.Model([a, b], layer([a, b]))


@tensorflow_only(TF_RUN_TIME_SIZES)
@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_exported_sum_of_static_and_none_sizes_fails_on_mismatch(
    export_format, tmp_path
):
    layer = FusionSelector("add")
    path = check_export(
        mixed_model(layer),
        [(as_float32(VALID), expected_sum(layer, VALID))],
        tmp_path,
        1e-6,
        export_format,
    )
    match = EXPORTED_SHAPES_DIFFER[export_format].format(
        name="fusion_selector_inputs"
    )
    larger = [np.ones((1, 5, 5, 4), "float32"), np.ones((1, 6, 6, 4))]
    with pytest.raises(RuntimeError, match=f"(?s){match}"):
        serve(path, as_float32(larger), ["a", "b"])


@tensorflow_only(TF_RUN_TIME_SIZES)
def test_sum_of_static_and_none_sizes_keeps_the_static_sizes():
    import tensorflow as tf

    layer = WeightedAdd()
    fuse = tf.function(
        lambda a, b: layer([a, b]),
        input_signature=[
            tf.TensorSpec((None, 5, 5, 4)),
            tf.TensorSpec((None, None, None, 4)),
        ],
    )
    graph_output = fuse.get_concrete_function().structured_outputs
    assert tuple(graph_output.shape) == (None, 5, 5, 4)
    np.testing.assert_allclose(
        fuse(*as_float32(VALID)), expected_sum(layer, VALID), rtol=1e-6
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="run-time"):
        fuse(np.ones((1, 5, 5, 4), "float32"), np.ones((1, 6, 6, 4), "float32"))
