"""Shape helpers of the ops and layers: sizes known before run time, the
static shape of a crop or pad, and the TorchScript refusal that the ops and
layers which crop, pad or compare sizes call first. No backend code: the
backend is read, never imported at module level."""

import keras
import numpy as np
from keras import ops


def refuse_torchscript_trace(name):
    """Raise if PyTorch is tracing with TorchScript (`torch.jit.trace`).

    Keras 3.15 exports a PyTorch model to ONNX that way whenever an input
    size is `None`, tracing a sample in which every `None` size is 1. The
    trace hands our size checks and crops 0-d tensors for sizes, and what
    they read as Python ints becomes a constant of the traced graph: an
    export would crop every input as it cropped the sample. The layers
    that crop, pad or compare sizes refuse it here, naming what works.
    """
    if keras.backend.backend() != "torch":
        return
    import torch

    if torch.jit.is_tracing():
        raise NotImplementedError(
            f"`{name}` cannot be traced by TorchScript (`torch.jit.trace`, "
            "which Keras uses to export ONNX from PyTorch when an input "
            "size is None): its crops, pads and size checks read the "
            "sizes as Python ints, which the trace would keep as "
            "constants of the sample (every None size made 1). Export "
            "the model from the TensorFlow or JAX backend "
            "(KERAS_BACKEND=tensorflow or jax): a `.keras` file saved "
            "here loads there."
        )


def static_size(value):
    """`value` as a Python int if it is known before run time.

    Python and NumPy integers, eager TensorFlow tensors, constants inside a
    `tf.function` and JAX arrays outside `jax.jit` are known; a TensorFlow
    tensor whose value is known only at run time comes back as an int32
    tensor (the dtype of `tf.shape`, which it is compared with), and
    anything else (a JAX tracer, a symbolic dimension) unchanged.
    """
    if isinstance(value, (int, np.integer, np.ndarray)):
        return int(value)
    if not ops.is_tensor(value):
        return value
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        known = tf.get_static_value(value)
        return tf.cast(value, "int32") if known is None else int(known)
    if backend == "jax":
        import jax

        if isinstance(value, jax.core.Tracer):
            return value
    return int(value)


def is_static_size(value):
    """Whether a size is a Python or NumPy int (known before run time)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def sliced_shape(x, size):
    """The static shape of `x` cropped to `size` (see `checked_slice`)."""
    return tuple(
        dim if s is None else (s if isinstance(s, int) else None)
        for dim, s in zip(x.shape, size, strict=True)
    )


def padded_shape(x, pad_width):
    """The static shape of `x` padded by `pad_width` (see `checked_pad`)."""
    return tuple(
        dim + before + after
        if dim is not None
        and isinstance(before, int)
        and isinstance(after, int)
        else None
        for dim, (before, after) in zip(x.shape, pad_width, strict=True)
    )
