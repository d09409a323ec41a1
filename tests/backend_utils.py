"""Gradients and training steps written once for every Keras backend.

The tests compare a layer against a reference through `value_and_grads`,
which runs the layer in training mode, differentiates a loss with the
backend's own autodiff (`tf.GradientTape`, `jax.value_and_grad` of
`stateless_call`, `torch.autograd`) and leaves the layer's non-trainable
state (BatchNorm moving statistics, dropout seeds) updated, as an eager
TensorFlow step would.
"""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

BACKEND = keras.backend.backend()


def tensorflow_only(reason):
    """The `backends` marker for a test of TensorFlow's own: `reason`
    names the TensorFlow piece it tests, which the other backends lack."""
    return pytest.mark.backends("tensorflow", reason=reason)


# What the tests marked below test.
TF_KERNEL = (
    "counts what TensorFlow's custom-gradient kernel recomputes; JAX and "
    "PyTorch recompute through keras.remat, whose saved bytes the "
    "*_keeps_* tests count"
)
TF_RUN_TIME_SIZES = (
    "sizes known only at run time (tf.function, XLA, SavedModel); JAX "
    "traces static sizes and PyTorch's are ints"
)
TF_ALLOCATOR = "reads TensorFlow's CPU allocator statistics (oneDNN)"


# Which model tests run on which backend (CI runs the suite once per
# backend, in under 45 minutes on 2 cores). Two kinds run on TensorFlow
# only, because what they test is the same on every backend, while
# building their full-size models costs the other backends most: on JAX
# every new weight shape compiles its initializer with XLA (a DenseNet-121
# takes seconds to build, where TensorFlow takes one).
#
# - What a builder decides from its arguments before any tensor is
#   computed: parameter counts, blocks, growth rates, BatchNorm settings,
#   one initializer per layer. It is our Python code, and Keras builds
#   the same layers from it on every backend.
BUILT_THE_SAME_ON_EVERY_BACKEND = pytest.mark.backends(
    "tensorflow",
    reason="tests what a builder decides from its arguments, the same "
    "on every backend (tests/backend_utils.py)",
)
# - A full-size DenseNet-121 computed against keras.applications': the
#   conversion maps weights by name, the same on every backend, and every
#   backend runs the layers it is made of, recomputing or not, against
#   the plain ones on the small models (test_densenet.py's
#   test_recomputing_model_trains_as_the_plain_model, tests/layers).
FULL_SIZE_ON_TENSORFLOW = pytest.mark.backends(
    "tensorflow",
    reason="a full-size DenseNet-121 against keras.applications'; every "
    "backend runs its layers on the small models (tests/backend_utils.py)",
)


def record_recomputations(monkeypatch):
    """The input shapes of every BatchNorm-ReLU a recomputing kernel
    recomputes, in call order: a list that grows as
    `batch_norm_relu.recompute_batch_norm_relu` (which every kernel calls
    for it) runs, observed from outside the kernels."""
    from keras_fusion.backend import batch_norm_relu

    shapes = []
    recompute = batch_norm_relu.recompute_batch_norm_relu

    def recording(x, *args):
        shapes.append(tuple(x.shape))
        return recompute(x, *args)

    monkeypatch.setattr(batch_norm_relu, "recompute_batch_norm_relu", recording)
    return shapes


def to_numpy(value):
    """A tensor, variable or array as a NumPy array, on every backend
    (`np.asarray` fails on PyTorch tensors that require gradients)."""
    return keras.ops.convert_to_numpy(value)


def assert_same_variables(mine, reference, atol=1e-6):
    """Two lists of variables (weights, moving statistics, seed states)
    agree: floats to `atol`, integers (seed states) exactly."""
    assert len(mine) == len(reference)
    for a, b in zip(mine, reference, strict=True):
        np.testing.assert_allclose(
            to_numpy(a), to_numpy(b), rtol=0, atol=atol, err_msg=b.path
        )


def compiled_models(layers, input_shape, jit_compile):
    """One functional model per layer, on inputs of `input_shape` (no
    batch axis), each compiled alike: SGD(0.05), mean squared error."""
    models = []
    for layer in layers:
        inputs = keras.Input(input_shape)
        model = keras.Model(inputs, layer(inputs))
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss="mse",
            jit_compile=jit_compile,
        )
        models.append(model)
    return models


def reset_unseeded_dropout(seed):
    """Under PyTorch, reset torch's global generator, from which Keras draws
    the dropout masks of layers built without a `seed` (its `dropout`
    then takes `torch.nn.functional.dropout`, "since torch doesn't support
    seeding dropout"), instead of from the layer's seed state as on
    TensorFlow and JAX. Two models compared call for call then draw the
    same masks. Does nothing on the other backends."""
    if BACKEND == "torch":
        import torch

        torch.manual_seed(seed)


def fit_losses(models, x, y, batch_size, epochs=2):
    """Each model's loss history over `epochs` of `fit` on `(x, y)`, in
    the same order of batches (and, under PyTorch, the same dropout masks
    for unseeded dropout: `reset_unseeded_dropout`)."""
    histories = []
    for model in models:
        reset_unseeded_dropout(0)
        history = model.fit(
            x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0
        )
        histories.append(history.history["loss"])
    return histories


def hold_the_same_variables(ours, plain):
    """Give `ours` `plain`'s variables: weights (same paths, same order),
    moving statistics and dropout seed states (which `set_weights` does
    not set). Returns the seed-state variables of `ours`."""
    assert [w.path for w in ours.weights] == [w.path for w in plain.weights]
    ours.set_weights(plain.get_weights())
    seeds = [v for v in ours.non_trainable_variables if "seed" in v.path]
    plain_seeds = [v for v in plain.non_trainable_variables if "seed" in v.path]
    for mine, reference in zip(seeds, plain_seeds, strict=True):
        mine.assign(to_numpy(reference))
    return seeds


def assert_same_training_steps(ours, plain, batches, learning_rate):
    """`ours` trains as `plain`, one step per batch of `batches`: outputs
    to 1e-5, gradients (input first) to 1e-5 of each tensor's largest
    magnitude, non-trainable variables (moving statistics, seed states) to
    1e-6 after each step. Both models then take the plain model's SGD
    update, so that each step compares the same function."""
    optimizer = keras.optimizers.SGD(learning_rate)
    paths = ["input"] + [w.path for w in plain.trainable_weights]
    for step, images in enumerate(batches):
        reset_unseeded_dropout(step)
        y_plain, g_plain = value_and_grads(plain, images)
        reset_unseeded_dropout(step)
        y_ours, g_ours = value_and_grads(ours, images)
        np.testing.assert_allclose(y_ours, y_plain, rtol=1e-5, atol=1e-6)
        for mine, reference, path in zip(g_ours, g_plain, paths, strict=True):
            scale = np.max(np.abs(reference))
            np.testing.assert_allclose(
                mine, reference, rtol=0, atol=1e-5 * scale, err_msg=path
            )
        assert_same_variables(
            ours.non_trainable_variables, plain.non_trainable_variables
        )
        optimizer.apply(
            [ops.convert_to_tensor(g) for g in g_plain[1:]],
            plain.trainable_variables,
        )
        ours.set_weights(plain.get_weights())


def weighted_loss(y):
    """A loss whose gradient differs per element, unlike a plain sum."""
    y = ops.cast(y, "float32")
    return ops.sum(y * ops.sin(y))


def value_and_grads(layer, x, loss_fn=weighted_loss, jit_compile=False):
    """`(outputs, [d_x, *d_trainable_variables])` as NumPy arrays.

    `x` is one array or a list of arrays (then `d_x` is a list too). With
    `jit_compile`, the TensorFlow step runs under
    `tf.function(jit_compile=True)` and the PyTorch step (forward, loss
    and `backward()`, as in Keras's torch trainer) under `torch.compile`;
    JAX steps are always `jax.jit`ted.
    """
    if BACKEND == "tensorflow":
        return _tensorflow(layer, x, loss_fn, jit_compile)
    if BACKEND == "jax":
        return _jax(layer, x, loss_fn, jit_compile)
    if BACKEND == "torch":
        return _torch(layer, x, loss_fn, jit_compile)
    raise NotImplementedError(BACKEND)


def _numpy(value):
    if isinstance(value, (list, tuple)):
        return [_numpy(v) for v in value]
    return keras.ops.convert_to_numpy(value)


def _tensorflow(layer, x, loss_fn, jit_compile):
    import tensorflow as tf

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = loss_fn(y)
        return y, tape.gradient(loss, [x, *layer.trainable_variables])

    if jit_compile:
        step = tf.function(step, jit_compile=True)
    x = tf.nest.map_structure(tf.constant, x)
    y, grads = step(x)
    return _numpy(y), _numpy(grads)


def _jax(layer, x, loss_fn, jit_compile):
    # Always jitted, as JAX training steps are: un-jitted, JAX dispatches
    # (and compiles) the ops of a rematerialised function one by one, which
    # takes minutes for a small block. `jit_compile` changes nothing here.
    import jax

    del jit_compile
    if not layer.built:
        layer(x, training=False)  # builds it; inference changes no state
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(x, trainable, non_trainable):
        y, new_state = layer.stateless_call(
            trainable, non_trainable, x, training=True
        )
        return loss_fn(y), (y, new_state)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (y, new_state)), (d_x, d_trainable) = step(x, trainable, non_trainable)
    for variable, value in zip(
        layer.non_trainable_variables, new_state, strict=True
    ):
        variable.assign(value)
    return _numpy(y), [_numpy(d_x), *_numpy(d_trainable)]


def _torch(layer, x, loss_fn, jit_compile):
    import torch

    def leaf(array):
        return torch.tensor(to_numpy(array), requires_grad=True)

    x = [leaf(a) for a in x] if isinstance(x, (list, tuple)) else leaf(x)
    if not layer.built:
        layer(x, training=False)
    for variable in layer.trainable_variables:
        variable.value.grad = None

    def step(x):
        y = layer(x, training=True)
        loss_fn(y).backward()
        return y

    if jit_compile:
        # As Keras's torch trainer compiles its training step.
        step = torch.compile(step)
    y = step(x)
    d_x = [a.grad for a in x] if isinstance(x, list) else x.grad
    grads = [d_x, *(v.value.grad for v in layer.trainable_variables)]
    return _numpy(keras.tree.map_structure(lambda t: t.detach(), y)), _numpy(
        grads
    )


def run_with_jax_x64(request):
    """Run the calling test in a fresh pytest process with JAX_ENABLE_X64=1
    on the JAX backend; fail unless it ran and passed."""
    # Already that process: JAX ignored the variable; fail, not recurse.
    assert os.environ.get("JAX_ENABLE_X64") != "1", "x64 is off in JAX"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PYTEST_")
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", request.node.nodeid, "-q"],
        cwd=request.config.rootpath,
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout[-3000:]
