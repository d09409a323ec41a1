"""The residuals JAX saves for a layer's backward pass, read from
`jax.ad_checkpoint.print_saved_residuals`: what exact recomputation leaves
in memory on the JAX backend, where no allocator statistics are read.
Used by `benchmarks.dense_block_residuals` and the dense-block tests."""

import contextlib
import io
import math
import re

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
