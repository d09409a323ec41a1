"""`Recompute`'s training call under JAX and PyTorch: `keras.remat`
(`jax.checkpoint`, `torch.utils.checkpoint`) around a pure function.

The function takes the wrapped layer's inputs, its trainable weights and the
non-trainable values it starts from (BatchNorm moving statistics, seed
states) and returns the outputs and the new non-trainable values, so the
recomputation reads the same starting state as the forward pass (the same
dropout mask) and nothing is assigned inside it: the layer assigns the new
values once, outside. TensorFlow has its own path
(`tensorflow_recompute.py`, which says why).
"""

import keras
from keras import ops


def recomputing_call(fn, differentiable, constants, inspected):
    """Run `fn` so that its backward pass recomputes it.

    Args and returns as `tensorflow_recompute.recomputing_call`, whose
    check of stateful random ops has nothing to find here: JAX has no
    stateful random ops (Keras refuses an unseeded `keras.random` call
    under `jax.checkpoint`), and `torch.utils.checkpoint` restores torch's
    random state for the recomputation, so `inspected` is not used.
    """
    del inspected
    outputs, new_state = keras.remat(fn)(list(differentiable), constants)
    return list(outputs), [ops.stop_gradient(s) for s in new_state]
