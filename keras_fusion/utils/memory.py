"""Memory of a training step: TensorFlow's allocator peak and time
(`measure_step`), JAX's saved residuals (`saved_residuals`)."""

import contextlib
import io
import math
import re
import statistics
import time


def measure_step(step, repeats=5):
    """Peak bytes of one call of `step` and the median time of `repeats`.

    The peak is TensorFlow's CPU allocator peak during one call
    (`tf.config.experimental.reset_memory_stats` / `get_memory_info`) minus
    the memory in use before it. `step` must already have run once, so
    that tracing and variable creation are not counted. Run it in a fresh
    process for each configuration: the allocator's statistics are
    process-wide.

    Returns:
        A dict with `peak_bytes`, `step_seconds` (the median) and
        `step_times`.
    """
    import tensorflow as tf

    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    step()
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "peak_bytes": peak - before,
        "step_seconds": statistics.median(times) if times else None,
        "step_times": times,
    }


_RESIDUAL = re.compile(r"^([a-z]+?)(\d*)\[([\d,]*)\]\s+(.*)$")


def saved_residuals(layer, inputs, training=True):
    """The residuals JAX saves for the backward pass of `layer`.

    Differentiates `sum(layer(inputs))` with respect to the layer's
    trainable weights and its inputs (through `layer.stateless_call`) and
    lists what `jax.ad_checkpoint.print_saved_residuals` reports: one
    `(dtype, shape, nbytes, source)` tuple per saved array. The sum keeps
    the loss itself from adding residuals. Needs the JAX backend.
    """
    import jax
    import keras

    if keras.backend.backend() != "jax":
        raise ValueError(
            "`saved_residuals` needs the JAX backend. Received: backend="
            f"{keras.backend.backend()!r}"
        )
    if not layer.built:
        layer(inputs, training=False)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, inputs):
        outputs, _ = layer.stateless_call(
            trainable, non_trainable, inputs, training=training
        )
        return keras.ops.sum(keras.ops.cast(outputs, "float32"))

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.ad_checkpoint.print_saved_residuals(loss, trainable, inputs)
    residuals = []
    for line in printed.getvalue().splitlines():
        match = _RESIDUAL.match(line.strip())
        if match is None:
            raise RuntimeError(f"unexpected residual line: {line!r}")
        kind, bits, dims, source = match.groups()
        shape = tuple(int(d) for d in dims.split(",") if d)
        itemsize = int(bits) // 8 if bits else 1  # bool
        nbytes = itemsize * math.prod(shape)
        residuals.append((f"{kind}{bits}", shape, nbytes, source))
    return residuals


def saved_residual_bytes(layer, inputs, training=True):
    """Bytes of the residuals JAX saves for `layer`'s backward pass, leaving
    out its arguments (weights and inputs), which exist anyway; see
    `saved_residuals`."""
    return sum(
        nbytes
        for _, _, nbytes, source in saved_residuals(layer, inputs, training)
        if not source.startswith("from the argument")
    )
