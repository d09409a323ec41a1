"""The checks every keras_fusion layer goes through.

Modelled on Keras's `run_layer_test` (keras/src/testing/test_case.py) and
KerasHub's saving tests. `run_layer_test` builds the layer from its
constructor arguments and checks, on random data:

1. config: `get_config` -> `from_config` gives the same config (compared as
   JSON), every constructor argument is in it under its own name, and
   `keras.saving.serialize_keras_object` round-trips without
   `custom_objects`;
   weights: once built, the layer has the expected numbers of trainable and
   non-trainable weights, and no two of its freshly initialised kernels of
   the same shape are equal (`check_distinct_initial_kernels`: a Keras 3
   initializer without a seed fixes its seed when it is created, so one
   object shared by several sublayers draws the same kernel for each);
2. shapes: a symbolic call on `keras.Input` (static sizes, and `None`
   spatial sizes) agrees with `compute_output_shape` and with the eager
   output's shape;
3. `.keras`: a model holding the layer, saved and loaded with
   `keras.models.load_model` without `custom_objects`, gives identical
   outputs;
4. export (`run_export_test`, a test of its own per format, under the
   backends that write the format: `EXPORT_FORMATS`): `model.export()` to
   a SavedModel, LiteRT or ONNX, run by `tf.saved_model.load`, the LiteRT
   interpreter or ONNX Runtime in a separate Python process that never
   imports keras_fusion (nor, for LiteRT and ONNX, TensorFlow), gives
   `predict`'s outputs at two input sizes (atol 1e-6 by default);
5. training: one `fit` step runs and gives a finite loss; under
   `mixed_float16` the output is float16, the variables stay float32, and a
   `fit` step runs too;
6. XLA: a model compiled with `jit_compile=True` gives the eager outputs.

Everything but 4 runs under every Keras backend. The models in 3, 4 and 6
take inputs with `None` spatial sizes, so the
layer's run-time shape handling is what gets saved, exported and compiled.
"""

import atexit
import functools
import json
import os
import re

import keras
import numpy as np
import pytest

from keras_fusion._internal.checks import spatial_axes
from keras_fusion._tools.serving import ExportServer
from tests.backend_utils import to_numpy

# One serving process per export format for this pytest process (each
# xdist worker has its own), which imports its runtime once: the suite
# serves about a hundred exports, and a fresh process per export spent
# 4 to 8 s of a CI core importing TensorFlow for each SavedModel. It
# never imports keras_fusion, checked after every export, and a failed
# export ends it (keras_fusion/_tools/serving.py).
_EXPORT_SERVER = ExportServer()
atexit.register(_EXPORT_SERVER.close)


def serve(path, inputs, input_names=None):
    """Outputs of the export at `path` for `inputs`, computed by the
    format's runtime in a process that never imports keras_fusion
    (`ExportServer.serve`)."""
    return _EXPORT_SERVER.serve(path, inputs, input_names)


def make_inputs(input_shape, seed=0, dtype="float32"):
    """Random inputs: one array, a list for a list of shapes, a dict for a
    dict of shapes."""
    rng = np.random.default_rng(seed)
    if _is_dict(input_shape):
        return {
            key: rng.standard_normal(shape).astype(dtype)
            for key, shape in input_shape.items()
        }
    if _is_multi(input_shape):
        return [rng.standard_normal(s).astype(dtype) for s in input_shape]
    return rng.standard_normal(input_shape).astype(dtype)


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    tmp_path,
    *,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights,
    expected_output_shape=None,
    run_mixed_precision=True,
    float16_kernels_missing=None,
    run_jit_compile=True,
    atol=1e-6,
):
    """Run the shared layer checks; see the module docstring.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_shape: a full input shape (batch included), or a list of
            them for a layer called on a list, or a dict of them for a
            layer called on a dict (the necks' `{"P3": ..., "P5": ...}`,
            given to models as inputs named by their keys).
        tmp_path: a directory for the saved files (pytest's `tmp_path`).
        expected_num_trainable_weights: the number of trainable weights of
            the built layer.
        expected_num_non_trainable_weights: the number of non-trainable
            weights (BatchNorm moving statistics) of the built layer.
        expected_output_shape: if given, the eager output shape (a dict
            of them for a layer that returns a dict).
        run_mixed_precision: run the `mixed_float16` check (5).
        float16_kernels_missing: why the `mixed_float16` check cannot run
            here (`missing_float16_kernels`): the other checks run, then
            the test is skipped with this reason.
        run_jit_compile: run the XLA check (6).
        atol: tolerance of the XLA comparison.
    """
    keras.utils.set_random_seed(0)
    layer = _construct(layer_cls, init_kwargs)
    _check_config(layer_cls, layer, init_kwargs)

    data = make_inputs(input_shape)
    eager_output = _numpy(layer(data))
    assert len(layer.trainable_weights) == expected_num_trainable_weights, (
        f"{len(layer.trainable_weights)} trainable weights, expected "
        f"{expected_num_trainable_weights}"
    )
    assert (
        len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    ), (
        f"{len(layer.non_trainable_weights)} non-trainable weights, expected "
        f"{expected_num_non_trainable_weights}"
    )
    check_distinct_initial_kernels(layer)
    if expected_output_shape is not None:
        if _is_dict(eager_output):
            assert {k: x.shape for k, x in eager_output.items()} == {
                k: tuple(s) for k, s in expected_output_shape.items()
            }
        else:
            assert eager_output.shape == tuple(expected_output_shape)
    data_format = getattr(layer, "data_format", "channels_last")
    _check_shapes(layer_cls, init_kwargs, input_shape, data_format, layer)

    model = _functional_model(
        _construct(layer_cls, init_kwargs),
        _dynamic_shapes(input_shape, data_format),
    )
    reference = _numpy(model(data, training=False))

    _check_keras_file(model, data, reference, tmp_path)
    _check_fit(model, data, reference)
    skip_mixed_precision = float16_kernels_missing is not None
    if run_mixed_precision and not skip_mixed_precision:
        _check_mixed_precision(layer_cls, init_kwargs, input_shape, data)
    if run_jit_compile:
        _check_jit_compile(
            layer_cls, init_kwargs, input_shape, data_format, data, atol
        )
    if run_mixed_precision and skip_mixed_precision:
        pytest.skip(
            "every check passed but the mixed_float16 one, which needs "
            f"float16 kernels that plain Keras layers lack here too: "
            f"{float16_kernels_missing}"
        )


def run_export_test(
    layer_cls,
    init_kwargs,
    input_shape,
    tmp_path,
    atol=1e-6,
    export_format="tf_saved_model",
    fails_with=None,
    second_input_shape=None,
):
    """Check 4: a model holding the layer, with `None` spatial sizes,
    exported with `model.export(format=export_format)` and run by the
    format's runtime in a process that never imports keras_fusion (nor,
    for LiteRT and ONNX, TensorFlow or Keras), gives `predict`'s outputs
    at `input_shape` and at a second size (`second_input_shape`; by
    default 3 more on every spatial axis, which a pyramid of levels, a
    dict, cannot take: it must be given).

    A layer called on a dict (`input_shape` a dict) is exported in a model
    whose inputs are a list named by the keys; one that returns several
    maps (a dict) in a model whose one output concatenates them,
    flattened, in key order: the servers feed and read one structure for
    every format.

    `fails_with`, from `export_limit`: `(exception type, message regex)`
    of an export its converter or runtime cannot do, asserted instead.
    """
    keras.utils.set_random_seed(0)
    layer = _construct(layer_cls, init_kwargs)
    data_format = getattr(layer, "data_format", "channels_last")
    model = _functional_model(layer, _dynamic_shapes(input_shape, data_format))
    if second_input_shape is None:
        if _is_dict(input_shape):
            raise ValueError("a dict of input shapes needs second_input_shape")
        second_input_shape = _grown(input_shape, data_format, 3)
    data = [make_inputs(shape) for shape in (input_shape, second_input_shape)]
    if _is_dict(input_shape):
        model, data = _flat_io(model, data)
    run_model_export_test(
        model,
        data,
        tmp_path,
        export_format,
        atol=atol,
        fails_with=fails_with,
        # A layer with one input exports from JAX with `None` sizes too.
        fixed_sizes_on_jax=_is_multi(input_shape) or _is_dict(input_shape),
    )


def run_model_export_test(
    model,
    data,
    tmp_path,
    export_format,
    atol=1e-6,
    fails_with=None,
    fixed_sizes_on_jax=True,
):
    """Check that `model.export(format=export_format)`, run by the
    format's runtime without keras_fusion, gives `model.predict`'s outputs
    for each input in `data` (a list of arrays: one export runs them all).

    Under JAX, with `fixed_sizes_on_jax`, the model is exported with the
    spatial sizes of `data[0]` (`input_signature`) and runs `data[0]` only:
    JAX crops and pads to static sizes, and jax2onnx traces `None` sizes as
    symbols, one per input.

    `fails_with`, from `export_limit`: `(exception type, message regex)`
    of an export its converter or runtime cannot do, asserted instead.
    """
    input_signature = None
    if fixed_sizes_on_jax and keras.backend.backend() == "jax":
        data = data[:1]
        specs = [
            keras.InputSpec(shape=(None, *x.shape[1:]))
            for x in _as_list(data[0])
        ]
        input_signature = [specs] if _is_multi_data(data[0]) else specs
    cases = [(x, model.predict(x, verbose=0)) for x in data]
    export = functools.partial(
        check_export,
        model,
        cases,
        tmp_path,
        atol,
        export_format,
        input_signature=input_signature,
    )
    if fails_with is None:
        export()
        return
    exception, match = fails_with
    with pytest.raises(exception, match=match):
        export()


def export_limit(export_format, rank=4, max_pooling=False, avg_pooling=False):
    """How an export fails where its converter or runtime cannot do it
    (the README's export table), or `None` where it works.

    Args:
        export_format: the format.
        rank: the rank of the layer's inputs (5: 3-D convolution and
            pooling).
        max_pooling: whether the model max-pools.
        avg_pooling: whether the model average-pools.

    Returns:
        `(exception type, message regex)` or `None`.
    """
    backend = keras.backend.backend()
    if export_format == "litert" and rank == 5 and avg_pooling:
        # LiteRT has no 3-D average pooling: Keras's converter settings
        # keep it as a TensorFlow op, which the LiteRT interpreter (without
        # the Flex delegate) refuses when it loads the model.
        return RuntimeError, "FlexAvgPool3D"
    if export_format == "onnx" and backend == "jax":
        # jax2onnx 0.17 lowers no 3-D convolution, and lowers Keras's
        # pooling windows (1, k, k, 1) to a MaxPool over 4 spatial axes,
        # which ONNX Runtime refuses when it runs.
        if rank == 5:
            return NotImplementedError, "Unsupported conv layouts"
        if max_pooling:
            return RuntimeError, "MaxPool node.*Unsupported pooling size"
    return None


def check_distinct_initial_kernels(layer_or_model):
    """Assert that no two freshly initialised kernels of the same shape in
    `layer_or_model` (a built layer or model) are equal.

    Keras 3 initializers without a seed draw their seed when they are
    created, so one initializer object handed to several sublayers gives
    each the same kernel; `keras.applications` gives every convolution its
    own. Kernels are the weights whose name ends in "kernel".
    """
    by_shape = {}
    for variable in layer_or_model.weights:
        if variable.name.endswith("kernel"):
            by_shape.setdefault(tuple(variable.shape), []).append(variable)
    for variables in by_shape.values():
        values = [to_numpy(v) for v in variables]
        for i, first in enumerate(values):
            for j in range(i + 1, len(values)):
                assert not np.array_equal(first, values[j]), (
                    f"{variables[i].path} and {variables[j].path} start with "
                    "the same values: give each sublayer its own initializer"
                )


@functools.cache
def missing_channels_first_convolution(rank=4):
    """Why plain Keras convolutions of this rank cannot run
    `channels_first` (forward and gradient) here, or `None` if they can.

    TensorFlow's CPU kernels have no NCHW `Conv2D` forward
    ("only supports the NHWC tensor format on the CPU") or filter gradient
    ("Conv2DCustomBackpropFilterOp only supports NHWC") without oneDNN,
    which TensorFlow turns on by default only on CPUs with AVX-512, VNNI or
    AMX. Tests of configurations that need those kernels skip with this
    message; found by running the kernels, not by reading the CPU model.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    conv = getattr(keras.layers, f"Conv{rank - 2}D")(
        1, 1, data_format="channels_first"
    )
    x = tf.ones((1, 1, *[2] * (rank - 2)))
    try:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
        tape.gradient(y, [x, *conv.trainable_variables])
    except tf.errors.OpError as error:
        # TensorFlow's sentence, without Keras's wrapping and the op's
        # internal names.
        text = re.sub(
            r"\x1b\[\d*m|\{\{[^}]*\}\}|\[Op:\w+\]|name: ",
            "",
            error.message,
        )
        lines = [line.strip() for line in text.splitlines()]
        return next(
            (line for line in lines if "NHWC" in line or "NCHW" in line),
            " ".join(text.split()),
        )
    return None


def skip_unless_channels_first_convolution_runs(rank=4):
    """Skip the calling test where TensorFlow has no `channels_first`
    convolution kernel (see `missing_channels_first_convolution`)."""
    reason = missing_channels_first_convolution(rank)
    if reason is not None:
        pytest.skip(
            "needs TensorFlow's channels_first (NCHW) convolution kernels, "
            "which TensorFlow lacks on this CPU (its kernels without "
            f"oneDNN): {reason}"
        )


def missing_float16_kernels(rank, data_format, pooling=False):
    """Why plain Keras convolutions (and average pooling) of this rank and
    data format cannot run in `mixed_float16` here, or `None` if they run.

    TensorFlow's CPU kernels have no float16 AvgPool3D (and, without
    oneDNN, no NCHW convolution); PyTorch's CPU kernels no float16
    `avg_pool3d`. Only such a "no kernel" error is a reason; any other
    error is raised.
    """
    dims = rank - 2
    layers = [getattr(keras.layers, f"Conv{dims}D")]
    if pooling:
        layers.append(getattr(keras.layers, f"AveragePooling{dims}D"))
    shape = (
        (1, 2, *[2] * dims)
        if data_format == "channels_first"
        else (1, *[2] * dims, 2)
    )
    for layer_cls in layers:
        args = (1, 1) if "Conv" in layer_cls.__name__ else (1,)
        layer = layer_cls(*args, data_format=data_format, dtype="mixed_float16")
        try:
            keras.ops.convert_to_numpy(layer(np.zeros(shape, "float32")))
        except Exception as error:  # noqa: BLE001 - re-raised unless matched
            reason = _missing_kernel(error)
            if reason is None:
                raise
            return f"{layer_cls.__name__}({data_format}): {reason}"
    return None


def _missing_kernel(error):
    """The backend's sentence if `error` says it has no kernel for the op
    and dtype, else `None`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        kinds = {
            tf.errors.NotFoundError: "Could not find device for node",
            tf.errors.UnimplementedError: "only supports the NHWC tensor",
        }
    elif backend == "torch":
        kinds = {
            NotImplementedError: "not implemented for 'Half'",
            RuntimeError: "not implemented for 'Half'",
        }
    else:
        kinds = {}
    text = re.sub(r"\x1b\[\d*m|\{\{[^}]*\}\}|\[Op:\w+\]", "", str(error))
    for kind, fragment in kinds.items():
        if isinstance(error, kind) and fragment in text:
            return next(
                line.strip() for line in text.splitlines() if fragment in line
            )
    return None


def skip_unless_float16_kernels_run(rank, data_format, pooling=False):
    """Skip the calling test where the backend has no float16 kernel for
    plain Keras layers of this configuration (`missing_float16_kernels`)."""
    reason = missing_float16_kernels(rank, data_format, pooling)
    if reason is not None:
        pytest.skip(
            f"needs {keras.backend.backend()}'s float16 kernels, which plain "
            f"Keras layers lack here too: {reason}"
        )


def _construct(layer_cls, init_kwargs):
    """A new layer; a layer among the arguments (the block a wrapper such
    as `Recompute` takes) is rebuilt from its config each time, so that no
    two layers under test share weights."""
    return layer_cls(
        **{name: _fresh(value) for name, value in init_kwargs.items()}
    )


def _fresh(value):
    if isinstance(value, keras.layers.Layer):
        return keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(value)
        )
    return value


def _is_dict(input_shape):
    return isinstance(input_shape, dict)


def _is_multi(input_shape):
    return not _is_dict(input_shape) and isinstance(
        input_shape[0], (list, tuple)
    )


def _numpy(value):
    """A tensor, or a list or dict of them, as NumPy arrays."""
    return keras.tree.map_structure(to_numpy, value)


def assert_same_structure_close(actual, expected, atol=0.0, err_msg=""):
    """Two arrays, or two lists or dicts of them, agree to `atol`
    (`atol=0`: equal)."""
    keras.tree.assert_same_structure(actual, expected)
    for a, b in zip(
        keras.tree.flatten(actual), keras.tree.flatten(expected), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=err_msg)


def _map_shapes(function, input_shape):
    """`function` of each shape, in `input_shape`'s structure (one shape,
    a list of them or a dict of them)."""
    if _is_dict(input_shape):
        return {key: function(s) for key, s in input_shape.items()}
    if _is_multi(input_shape):
        return [function(s) for s in input_shape]
    return function(input_shape)


def _flat_io(model, data):
    """`model` (dict inputs) as a model of a list of inputs named by the
    keys, with its outputs flattened and concatenated in key order, and
    `data` (dicts) as lists in the same order."""
    keys = [t.name for t in model.inputs]
    inputs = [keras.Input(shape=t.shape[1:], name=t.name) for t in model.inputs]
    outputs = keras.tree.flatten(model(dict(zip(keys, inputs, strict=True))))
    if len(outputs) > 1:
        flat = [keras.layers.Flatten()(x) for x in outputs]
        outputs = [keras.layers.Concatenate()(flat)]
    flat_model = keras.Model(inputs, outputs[0])
    return flat_model, [[x[key] for key in keys] for x in data]


def _is_multi_data(data):
    return isinstance(data, (list, tuple))


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _symbolic_inputs(shapes):
    if _is_dict(shapes):
        return {
            key: keras.Input(shape=tuple(s[1:]), name=key)
            for key, s in shapes.items()
        }
    return _map_shapes(lambda s: keras.Input(shape=tuple(s[1:])), shapes)


def _dynamic_shapes(input_shape, data_format):
    """The shapes with batch and spatial sizes set to `None`."""

    def dynamic(shape):
        shape = list(shape)
        shape[0] = None
        for axis in spatial_axes(len(shape), data_format):
            shape[axis] = None
        return tuple(shape)

    return _map_shapes(dynamic, input_shape)


def _grown(input_shape, data_format, by):
    """The shapes with every spatial size `by` larger."""

    def grown(shape):
        shape = list(shape)
        for axis in spatial_axes(len(shape), data_format):
            shape[axis] += by
        return tuple(shape)

    return _map_shapes(grown, input_shape)


def _with_batch(input_shape, batch):
    return _map_shapes(lambda s: (batch, *s[1:]), input_shape)


def _functional_model(layer, shapes):
    inputs = _symbolic_inputs(shapes)
    return keras.Model(inputs, layer(inputs))


def _check_config(layer_cls, layer, init_kwargs):
    config = layer.get_config()
    for name, value in init_kwargs.items():
        assert name in config, f"constructor argument {name!r} not in config"
        if isinstance(value, keras.layers.Layer):
            value = keras.saving.serialize_keras_object(value)
        if name != "dtype":
            assert _json(config[name]) == _json(value), (
                f"config[{name!r}]={config[name]!r}, constructed with {value!r}"
            )
    revived = layer_cls.from_config(config)
    assert _json(revived.get_config()) == _json(config)

    serialized = keras.saving.serialize_keras_object(layer)
    json.dumps(serialized)
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is layer_cls
    assert _json(deserialized.get_config()) == _json(config)


def _json(value):
    return json.dumps(value, sort_keys=True, default=str)


def _check_shapes(layer_cls, init_kwargs, input_shape, data_format, layer):
    eager = layer(make_inputs(input_shape))
    concrete = layer.compute_output_shape(input_shape)

    # A dict of outputs has a dict of shapes (compared in key order); one
    # output, one shape.
    def outputs_of(value):
        return [value[k] for k in sorted(value)] if _is_dict(value) else [value]

    eager_shapes = [tuple(x.shape) for x in outputs_of(eager)]
    assert [tuple(s) for s in outputs_of(concrete)] == eager_shapes

    for shapes in (
        _with_batch(input_shape, None),
        _dynamic_shapes(input_shape, data_format),
    ):
        symbolic_layer = _construct(layer_cls, init_kwargs)
        outputs = outputs_of(symbolic_layer(_symbolic_inputs(shapes)))
        expected = outputs_of(symbolic_layer.compute_output_shape(shapes))
        for output, shape, eager_shape in zip(
            outputs, expected, eager_shapes, strict=True
        ):
            assert tuple(output.shape) == tuple(shape), (
                f"symbolic output shape {output.shape} != "
                f"compute_output_shape {shape} for input shapes {shapes}"
            )
            for symbolic, actual in zip(output.shape, eager_shape, strict=True):
                assert symbolic is None or symbolic == actual, (
                    f"symbolic output shape {output.shape} does not match "
                    f"the eager output shape {eager_shape}"
                )


def _check_keras_file(model, data, reference, tmp_path):
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert_same_structure_close(_numpy(loaded(data, training=False)), reference)


# The formats of `model.export()`, each under the Keras backends that write
# it (Keras 3.15): a SavedModel from TensorFlow (JAX writes one through
# jax2tf, not tested here; PyTorch cannot); LiteRT from TensorFlow (PyTorch
# needs litert-torch, whose dependencies, transformers and torchao among
# them, are not ours to install); ONNX from TensorFlow through tf2onnx and
# from JAX through jax2onnx. From PyTorch, Keras exports ONNX with
# `torch.onnx` (which needs onnxscript) and, as a Keras input's batch size
# is always `None`, by TorchScript tracing of a sample whose every `None`
# size is 1: measured with onnxscript 0.7.2 and torch 2.13, 36 of these 46
# cases fail, on a 2x2 pooling of the 1x1 sample (plain Keras's too) or in
# our crops and size checks, which refuse a TorchScript trace
# (tests/backend/test_torchscript_trace.py).
EXPORT_FORMATS = pytest.mark.parametrize(
    "export_format",
    [
        pytest.param(
            "tf_saved_model",
            marks=pytest.mark.backends(
                "tensorflow",
                reason="a SavedModel is a TensorFlow artifact",
            ),
            id="savedmodel",
        ),
        pytest.param(
            "litert",
            marks=pytest.mark.backends(
                "tensorflow",
                reason="Keras converts to LiteRT through TensorFlow; "
                "from PyTorch it needs litert-torch",
            ),
            id="litert",
        ),
        pytest.param(
            "onnx",
            marks=pytest.mark.backends(
                "tensorflow",
                "jax",
                reason="Keras converts to ONNX with tf2onnx or jax2onnx; "
                "from PyTorch it traces a 1x1 sample with TorchScript",
            ),
            id="onnx",
        ),
    ],
)

_EXPORT_PATHS = {
    "tf_saved_model": "export",
    "litert": "model.tflite",
    "onnx": "model.onnx",
}


def check_export(
    model, cases, tmp_path, atol=1e-6, export_format=None, input_signature=None
):
    """Check that `model.export(format=export_format)`, run by the format's
    runtime in a Python process that never imports keras_fusion, gives the
    reference outputs.

    Args:
        model: the model to export.
        cases: `(inputs, reference)` pairs: each is run through the one
            export.
        tmp_path: where to write the export.
        atol: the largest difference allowed.
        export_format: `"tf_saved_model"` (the default), `"litert"` or
            `"onnx"`.
        input_signature: `model.export()`'s, if not the model's inputs.

    Returns:
        The export's path.
    """
    export_format = export_format or "tf_saved_model"
    path = os.path.join(tmp_path, _EXPORT_PATHS[export_format])
    # Keras's ONNX exporter refuses a model that was never called, and
    # `predict` under JAX does not count (it runs `stateless_call`).
    model(cases[0][0], training=False)
    model.export(
        path,
        format=export_format,
        verbose=False,
        input_signature=input_signature,
    )
    names = [t.name for t in model.inputs]
    for data, reference in cases:
        served = serve(path, data, names)
        np.testing.assert_allclose(served, reference, rtol=0, atol=atol)
    return path


def check_export_refuses(
    model, valid, expected, invalid, tmp_path, export_format, match
):
    """Check that the export of `model` gives `expected` for `valid` in its
    runtime and fails on `invalid` there, with an error matching `match`
    (a regex, across lines)."""
    path = check_export(model, [(valid, expected)], tmp_path, 0, export_format)
    with pytest.raises(RuntimeError, match=f"(?s){match}"):
        serve(path, invalid, [t.name for t in model.inputs])


def _fit_one_step(model, data, target):
    model.compile(optimizer="sgd", loss="mse")
    batch = len(keras.tree.flatten(target)[0])
    history = model.fit(data, target, batch_size=batch, verbose=0)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss), f"fit step gave a non-finite loss {loss}"


def _check_fit(model, data, reference):
    rng = np.random.default_rng(1)
    target = keras.tree.map_structure(
        lambda x: rng.standard_normal(x.shape).astype("float32"), reference
    )
    _fit_one_step(model, data, target)


def _check_mixed_precision(layer_cls, init_kwargs, input_shape, data):
    kwargs = {**init_kwargs, "dtype": "mixed_float16"}
    layer = _construct(layer_cls, kwargs)
    output = layer(data)
    for x in keras.tree.flatten(output):
        assert keras.backend.standardize_dtype(x.dtype) == "float16"
    for variable in layer.variables:
        if not keras.backend.is_float_dtype(variable.dtype):
            continue  # e.g. a dropout seed generator's int64 state
        assert variable.dtype == "float32", (
            f"variable {variable.path} is {variable.dtype} under "
            "mixed_float16, expected float32"
        )
    model = _functional_model(
        _construct(layer_cls, kwargs), _with_batch(input_shape, None)
    )
    target = keras.tree.map_structure(
        lambda x: np.zeros(x.shape, dtype="float32"), output
    )
    _fit_one_step(model, data, target)


def _check_jit_compile(
    layer_cls, init_kwargs, input_shape, data_format, data, atol
):
    model = _functional_model(
        _construct(layer_cls, init_kwargs),
        _dynamic_shapes(input_shape, data_format),
    )
    eager = _numpy(model(data, training=False))
    model.compile(jit_compile=True)
    compiled = model.predict_on_batch(data)
    assert_same_structure_close(compiled, eager, atol)
