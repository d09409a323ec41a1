"""Centre crops and pads whose sizes are known only at run time, checked.

Why this is backend code and not `keras.ops`:

- `keras.ops` has no assertion. With TensorFlow, spatial sizes that are
  unknown when a graph is traced (a `tf.function` or SavedModel signature
  with `None` sizes, a Keras model retraced with relaxed shapes) are
  tensors, and a crop to a larger size or a pad to a smaller one must stop
  the graph when it runs: `tf.debugging.Assert` does that, with the message
  of the static check and the run-time sizes in it.
- XLA drops `Assert` ops, and the strided slice behind `x[a:b]` wraps a
  negative start, so an XLA-compiled crop to a larger size returned a
  smaller one without a word. `tf.slice` and `tf.pad` instead check their
  begin and size, or paddings, when XLA compiles them (the shapes are
  constants then). The crop's start is clamped at 0 so that XLA's error
  names the input size and the requested one ("Expected size[1] in [0, 6],
  but got 10"), and the op names say what was required, as XLA's error
  names the failing node.
- Converters drop `Assert` too (tf2onnx, the LiteRT converter), and
  ONNX's Slice clamps a size beyond the input and its Pad crops for a
  negative amount: a reshape to the size the crop or pad must have ends
  each, so an ONNX runtime fails on the reshape (named after the op, with
  `_size`) instead of returning a smaller map. LiteRT's own Slice and Pad
  fail on such sizes.
- Concrete tensors (eager TensorFlow tensors, JAX arrays outside
  `jax.jit`) are read as ints, so the static checks apply to them: slicing
  with a concrete negative start wraps as well.

- TensorFlow's zero padding is a `PadV2` op, not the `Pad` op that
  `tf.pad` and `keras.ops.pad` emit: with oneDNN on (TensorFlow 2.21, CPUs
  with AVX-512), a graph in which a `Pad` output is added to a biased
  convolution's (an FPN lateral fused with the padded level above: Grappler
  fuses Conv2D + BiasAdd + Add into one oneDNN op) crashes the process
  with a segmentation fault; with `PadV2` it computes the same sum.
  `tests/ops/test_padding.py` runs that graph.

JAX traces with static shapes (`jax.jit`) and PyTorch runs eagerly, so
there the sizes are ints, the static checks catch a wrong size and the
crop or pad is plain `keras.ops`; a size that JAX traces raises.
"""

import string

import keras
from keras import ops

from keras_fusion._internal.shapes import padded_shape
from keras_fusion._internal.shapes import refuse_torchscript_trace
from keras_fusion._internal.shapes import sliced_shape
from keras_fusion._internal.shapes import static_size


def with_static_shape(x, shape):
    """`x`, with `shape` (ints, `None` where unknown) as its static shape.

    On TensorFlow, a slice or pad whose starts or amounts are tensors loses
    every static size in shape inference, the channels too; Keras then
    runs the next convolution through its XLA-compiled path for channels it
    cannot see, a function call that the LiteRT converter keeps as a
    TensorFlow op and tf2onnx cannot convert. The sizes that do not depend
    on the run time are set back here. Other backends' shapes are concrete
    or symbolic already: `x` is returned as it is.
    """
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    if tf.is_tensor(x) and not tf.executing_eagerly():
        # A reshape, not `set_shape` or `ensure_shape`: converters infer
        # shapes from the graph's ops again (LiteRT's MLIR, tf2onnx), and
        # LiteRT has no EnsureShape. It moves no data.
        dynamic = tf.shape(x)
        sizes = [dynamic[a] if d is None else d for a, d in enumerate(shape)]
        return tf.reshape(x, tf.stack(sizes))
    return x


def checked_slice(x, begin, size, name, message, fields):
    """`x[begin:begin + size]` on every axis, failing if out of range.

    Starts and sizes that are ints are the caller's to check; the check
    here covers those known only at run time.

    Args:
        x: a tensor.
        begin: the start on every axis: ints or scalar int32 tensors.
        size: the size on every axis: ints, scalar int32 tensors, or `None`
            for the rest of the axis.
        name: the name of the slice op, which an XLA error ends with.
        message: the error message if a start or size is out of range, a
            `str.format` template whose fields are in `fields`.
        fields: the template's fields: tuples of ints, `None`s and scalar
            tensors, printed as Python prints tuples.
    """
    if all(isinstance(b, int) for b in begin):
        return x[
            tuple(
                slice(b, None if s is None else b + s)
                for b, s in zip(begin, size, strict=True)
            )
        ]
    tf = _tensorflow_for_run_time_sizes(fields)
    shape = tf.shape(x)
    in_range = [
        (begin[axis] >= 0) & (s >= 0) & (begin[axis] + s <= shape[axis])
        for axis, s in enumerate(size)
        if s is not None
    ]
    x = _check(x, tf.reduce_all(tf.stack(in_range)), message, fields, name)
    sliced = tf.slice(
        x,
        tf.maximum(tf.stack(begin), 0),
        tf.stack([_slice_size(s) for s in size]),
        name,
    )
    # ONNX's Slice clamps a size beyond the input where TensorFlow and
    # LiteRT fail, and converters drop `Assert`: the reshape to the
    # requested sizes fails instead of a smaller crop leaving the model.
    # The sizes known before run time go in as constants, so that the
    # converters see them too (see `with_static_shape`).
    result = tf.shape(sliced)
    expected = [
        (result[a] if s is None else s) if d is None else d
        for a, (d, s) in enumerate(
            zip(sliced_shape(x, size), size, strict=True)
        )
    ]
    return tf.reshape(sliced, tf.stack(expected), name=f"{name}_size")


def checked_pad(x, pad_width, name, message, fields):
    """`x` zero-padded by `pad_width`, failing if an amount is negative.

    Amounts that are ints are the caller's to check; the check here covers
    those known only at run time.

    Args:
        x: a tensor.
        pad_width: `(before, after)` for every axis: ints or scalar int32
            tensors.
        name: the name of the pad op, which an XLA error ends with.
        message: the error message if an amount is negative, a `str.format`
            template whose fields are in `fields`.
        fields: the template's fields, as in `checked_slice`.
    """
    if all(isinstance(a, int) for amounts in pad_width for a in amounts):
        return zero_pad(x, pad_width)
    tf = _tensorflow_for_run_time_sizes(fields)
    paddings = tf.stack([tf.stack(amounts) for amounts in pad_width])
    x = _check(x, tf.reduce_all(paddings >= 0), message, fields, name)
    padded = zero_pad(x, paddings, name=name)
    # ONNX's Pad crops where an amount is negative, where TensorFlow and
    # LiteRT fail, and converters drop `Assert`: the reshape to the input
    # size plus the amounts' positive parts fails instead.
    grown = tf.shape(x) + tf.reduce_sum(tf.maximum(paddings, 0), axis=1)
    expected = [
        grown[a] if d is None else d
        for a, d in enumerate(padded_shape(x, pad_width))
    ]
    return tf.reshape(padded, tf.stack(expected), name=f"{name}_size")


def zero_pad(x, pad_width, name=None):
    """`x` zero-padded by `pad_width` (`(before, after)` per axis, ints or
    tensors): `keras.ops.pad`, but a `PadV2` op on TensorFlow (see the
    module docstring)."""
    if keras.backend.backend() != "tensorflow":
        return ops.pad(x, pad_width)
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    if not isinstance(pad_width, tf.Tensor):
        pad_width = tf.stack(
            [
                tf.stack([tf.cast(a, "int32") for a in amounts])
                for amounts in pad_width
            ]
        )
    return tf.raw_ops.PadV2(
        input=x,
        paddings=pad_width,
        constant_values=tf.zeros([], x.dtype),
        name=name,
    )


def check_traced_sizes(shapes):
    """Raise unless the backend can crop or pad to sizes of these shapes
    that are not ints: TensorFlow (run-time tensors) can.

    JAX crops and pads to static sizes only (they set the output shape),
    and `jax.export` and jax2onnx (`model.export(format="onnx")`) trace
    `None` sizes as symbols, one per input, which JAX's slicing refuses
    with a message that does not say what to do.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"With the {backend} backend, the spatial sizes of feature maps "
            "to crop or pad to a common size should be known when they are "
            "traced (they set the output shape). An export traces `None` "
            "sizes as symbols: build the model with fixed spatial sizes, or "
            "pass `input_signature` with them to `model.export()`. "
            f"Received: input shapes {[tuple(s) for s in shapes]}"
        )


def _tensorflow_for_run_time_sizes(fields):
    """TensorFlow, the one backend whose traced spatial sizes are tensors.

    Under `jax.jit` the sizes of a crop or pad set the output shape, so
    they cannot be traced values; `jax.export`'s symbolic dimensions fail
    JAX's own slicing and padding, with a less direct message.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"With the {backend} backend, the spatial sizes of a crop or pad "
            "should be known when it is traced (they set the output shape): "
            "pass ints for `size` (static arguments of `jax.jit`) and give "
            "`jax.export` or `model.export()` fixed spatial sizes. Received: "
            "input shape "
            f"{tuple(fields['shape'])}, size={tuple(fields['size'])}"
        )
    import tensorflow as tf

    return tf


def _slice_size(size):
    """`size` as `tf.slice` reads it, where -1 means "to the end"."""
    import tensorflow as tf

    if size is None:
        return -1
    if tf.is_tensor(size):
        # A negative run-time size must stay invalid when XLA compiles the
        # slice, where the run-time check is dropped.
        return tf.where(size == -1, -2, size)
    return size


def _check(x, condition, message, fields, name):
    """`x`, available only once a run-time check of `condition` passed."""
    import tensorflow as tf

    if _in_xla_context():
        return x
    check = tf.debugging.Assert(
        condition, [_format(message, fields)], name=f"{name}_check"
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)


def _format(message, fields):
    """`message.format(**fields)` as a string tensor. A field is a tuple,
    printed as Python prints tuples, or a list of tuples."""
    import tensorflow as tf

    parts = []
    for literal, field, _, _ in string.Formatter().parse(message):
        parts.append(literal)
        if field is None:
            continue
        value = fields[field]
        if isinstance(value, list):
            texts = [_tuple_text(v) for v in value]
            parts += ["[", tf.strings.join(texts, ", "), "]"]
        else:
            parts.append(_tuple_text(value))
    return tf.strings.join(parts)


def _tuple_text(values):
    import tensorflow as tf

    texts = [
        tf.strings.as_string(v) if tf.is_tensor(v) else str(v) for v in values
    ]
    closing = ",)" if len(texts) == 1 else ")"
    return tf.strings.join(["(", tf.strings.join(texts, ", "), closing])


def checked_equal_shapes(tensors, name, message, axes=None):
    """`tensors`, failing at run time unless their sizes agree on `axes`.

    For element-wise fusion (addition, weighted addition) and masks, where
    broadcasting would turn an input of size 1 into a result of the
    other's size, and for the batch sizes of maps cropped or padded
    together. Sizes that are known (on every backend but in a TensorFlow
    graph with `None` sizes) are the caller's to check; the check here
    covers sizes known only at run time, on every path a TensorFlow graph
    takes: an `Assert` when it runs; under XLA and in LiteRT, each tensor
    sliced to the size of the next one, around the ring (a slice beyond a
    tensor fails there, so each is at least the next, and all are equal);
    in ONNX, whose Slice clamps, a reshape of each slice to the size it was
    asked for (a clamped slice has fewer elements). A slice of all of a
    tensor moves no data in TensorFlow.

    Args:
        tensors: a list of 2 or more tensors of the same rank.
        name: the name of the ops, which an XLA or ONNX error ends with.
        message: the error message, a `str.format` template whose one
            field, `{shapes}`, is the list of the run-time shapes.
        axes: the axes whose sizes must agree; all of them by default.
    """
    tensors = list(tensors)
    static = [tuple(t.shape) for t in tensors]
    rank = len(static[0])
    axes = tuple(range(rank)) if axes is None else tuple(axes)
    if (
        keras.backend.backend() != "tensorflow"
        or all(s[a] is not None for s in static for a in axes)
        or not any(_is_graph_tensor(t) for t in tensors)
    ):
        return tensors
    import tensorflow as tf

    shapes = [tf.shape(t, out_type="int32") for t in tensors]
    if _in_xla_context():
        check = tf.no_op()
    else:
        check = _shapes_check(shapes, static, axes, message, name)
    # Each slice is reshaped to the size it asked for: the next tensor's,
    # as a constant where that tensor knows it before run time (the
    # converters then see it too, see `with_static_shape`). Not this
    # tensor's own static size: in ONNX a clamped slice of it would match.
    known = [
        next((s[a] for s in static if s[a] is not None), None)
        for a in range(rank)
    ]
    guarded = []
    with tf.control_dependencies([check]):
        for index, t in enumerate(tensors):
            following = (index + 1) % len(tensors)
            target = shapes[following]
            size = [target[a] if a in axes else -1 for a in range(rank)]
            sliced = tf.slice(t, [0] * rank, tf.stack(size), name=name)
            requested = [
                (
                    target[a]
                    if static[following][a] is None
                    else static[following][a]
                )
                if a in axes
                else (
                    shapes[index][a]
                    if static[index][a] is None
                    else static[index][a]
                )
                for a in range(rank)
            ]
            t = tf.reshape(sliced, tf.stack(requested), name=f"{name}_size")
            # What every tensor has once checked, for shape inference (no
            # op): the sizes any of them knows.
            t.set_shape(
                [
                    known[a] if a in axes else static[index][a]
                    for a in range(rank)
                ]
            )
            guarded.append(t)
    return guarded


def _shapes_check(shapes, static, axes, message, name):
    """The `Assert` of `checked_equal_shapes`, with the run-time shapes in
    its message."""
    import tensorflow as tf

    sizes = [tf.gather(s, list(axes)) for s in shapes]
    equal = tf.reduce_all(
        tf.stack([tf.reduce_all(tf.equal(sizes[0], s)) for s in sizes[1:]])
    )
    run_time_shapes = [
        tuple(s[a] if d is None else d for a, d in enumerate(known))
        for s, known in zip(shapes, static, strict=True)
    ]
    return tf.debugging.Assert(
        equal,
        [_format(message, {"shapes": run_time_shapes})],
        name=f"{name}_check",
    )


def _is_graph_tensor(x):
    import tensorflow as tf

    return tf.is_tensor(x) and not tf.executing_eagerly()


def checked_minimum_size(x, minimum, name, message):
    """`x`, failing unless each of its sizes is at least `minimum`'s.

    Sizes that are ints (every backend but a TensorFlow graph with `None`
    sizes) raise a `ValueError` here. Those known only when a TensorFlow
    graph runs are checked by an `Assert`, and, because XLA and the
    converters drop it, by a reshape of `x` to its sizes raised to the
    minimum: the same shape where they are large enough, a different
    number of elements (which XLA, LiteRT and ONNX refuse) where not. No
    data moves.

    Args:
        x: a tensor.
        minimum: for each axis of `x`, its smallest size or `None`.
        name: the name of the ops, which an XLA or ONNX error ends with.
        message: the error message, a `str.format` template whose one
            field, `{shape}`, is the shape of `x`.

    Raises:
        ValueError: if a size known here is below its minimum.
        NotImplementedError: under a TorchScript trace, which would keep
            the sizes of its sample (see `refuse_torchscript_trace`).
    """
    refuse_torchscript_trace(name)
    shape = tuple(static_size(d) for d in ops.shape(x))
    known = [
        (d, m) for d, m in zip(shape, minimum, strict=True) if m is not None
    ]
    if any(isinstance(d, int) and d < m for d, m in known):
        raise ValueError(message.format(shape=shape))
    if all(isinstance(d, int) for d, _ in known):
        return x
    if keras.backend.backend() != "tensorflow":
        # JAX: `jax.export` and jax2onnx trace `None` sizes as symbols,
        # which no op can compare with the minimum when the export runs.
        raise ValueError(
            f"With the {keras.backend.backend()} backend, sizes that have a "
            "minimum should be known when they are traced, so that they can "
            "be checked: give `model.export()` an `input_signature` with "
            "fixed spatial sizes, or export from TensorFlow. Received: input "
            f"shape {shape}, minimum sizes {tuple(minimum)}"
        )
    import tensorflow as tf

    checked = [
        tf.maximum(d, m) if m is not None and not isinstance(d, int) else d
        for d, m in zip(shape, minimum, strict=True)
    ]
    large_enough = tf.reduce_all(
        tf.stack(
            [
                d >= m
                for d, m in zip(shape, minimum, strict=True)
                if m is not None and not isinstance(d, int)
            ]
        )
    )
    x = _check(x, large_enough, message, {"shape": shape}, name)
    return tf.reshape(x, tf.stack(checked), name=f"{name}_size")


def _in_xla_context():
    """Whether the graph being traced is compiled by XLA
    (`jit_compile=True`), which drops `Assert` and cannot compile the
    string ops of its message (the slices and reshapes check there)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )
