"""`Recompute` against the unwrapped block.

Dropout layers get a seed: PyTorch's Keras dropout without one draws from
torch's global generator, which the plain and the wrapped block would
advance in turn (`torch.utils.checkpoint` restores it for the
recomputation, so a wrapped block's masks agree with its own forward
pass either way).

Every block here is built twice from the same seed and its variables
(weights, moving statistics, seed states) copied from one to the other, so
the wrapped and the unwrapped block start each step in the same state; the
tests then compare outputs, every gradient and the non-trainable state
after each step (tolerances of the dense block's tests: 1e-5 relative for
gradients, 1e-6 for moving statistics).
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_fusion import CropAndConcat
from keras_fusion import MemoryEfficientDenseBlock
from keras_fusion import Recompute
from keras_fusion import TransitionBlock
from tests.backend_utils import BACKEND
from tests.backend_utils import assert_same_variables
from tests.backend_utils import compiled_models
from tests.backend_utils import fit_losses
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.backend_utils import weighted_loss
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import make_inputs
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test


def conv_bn_dropout(channels=4):
    """A U-Net-style level: Conv -> BN -> ReLU -> Dropout -> Conv."""
    return keras.Sequential(
        [keras.Input((None, None, channels)), *_conv_bn_dropout_layers()],
        name="conv_bn_dropout",
    )


def _conv_bn_dropout_layers():
    return [
        keras.layers.Conv2D(6, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(),
        keras.layers.Dropout(0.3, seed=3),
        keras.layers.Conv2D(5, 3, padding="same"),
    ]


def nested():
    """A functional model holding a Sequential, a `Recompute` and BN."""
    inputs = keras.Input((None, None, 4))
    inner = keras.Sequential(
        [
            keras.Input((None, None, 4)),
            keras.layers.Conv2D(6, 3, padding="same"),
            keras.layers.BatchNormalization(momentum=0.8),
            keras.layers.ReLU(),
        ],
        name="inner",
    )
    x = inner(inputs)
    x = Recompute(conv_bn_dropout(6), name="inner_recompute")(x)
    x = keras.layers.BatchNormalization(momentum=0.7)(x)
    return keras.Model(inputs, x, name="nested")


def two_inputs_two_outputs():
    """A decoder level: `CropAndConcat` of a skip and an up-sampled map,
    Conv -> BN -> ReLU -> Dropout, and a pooled second output."""
    skip = keras.Input((None, None, 3))
    below = keras.Input((None, None, 4))
    up = keras.layers.Conv2DTranspose(4, 2, strides=2)(below)
    x = CropAndConcat()([skip, up])
    x = keras.layers.Conv2D(5, 3, use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.25, seed=4)(x)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model([skip, below], [x, pooled], name="decoder")


def dense_block():
    """A DenseNet stage: dense block (its own recomputation inside) with
    dropout, then a transition."""
    inputs = keras.Input((None, None, 4))
    x = MemoryEfficientDenseBlock(
        2,
        4,
        dropout_rate=0.2,
        recompute=True,
        batch_norm_momentum=0.9,
        seed=5,
    )(inputs)
    x = TransitionBlock(recompute=True, batch_norm_momentum=0.9)(x)
    return keras.Model(inputs, x, name="stage")


def unbuilt_sequential():
    """`conv_bn_dropout` without an `Input`: built when it is wrapped."""
    return keras.Sequential(_conv_bn_dropout_layers(), name="unbuilt")


def recompute_of_recompute():
    """`Recompute` around an unbuilt `Recompute`, as the README nests
    them."""
    return Recompute(unbuilt_sequential(), name="inner_recompute")


BLOCKS = {
    "conv_bn_dropout": (conv_bn_dropout, (4, 8, 8, 4)),
    "unbuilt_sequential": (unbuilt_sequential, (4, 8, 8, 4)),
    "recompute_of_recompute": (recompute_of_recompute, (4, 8, 8, 4)),
    "nested": (nested, (4, 8, 8, 4)),
    "two_inputs_two_outputs": (
        two_inputs_two_outputs,
        [(4, 11, 11, 3), (4, 5, 5, 4)],
    ),
    "dense_block": (dense_block, (4, 8, 8, 4)),
}


def _total_loss(outputs):
    return sum(weighted_loss(y) for y in keras.tree.flatten(outputs))


def _copy_variables(source, target):
    """Give `target` `source`'s weights, moving statistics and seeds."""
    assert len(source.variables) == len(target.variables)
    for s, t in zip(source.variables, target.variables, strict=True):
        # Through NumPy: under JAX an assigned array would be shared, and
        # donated (deleted) by the first compiled step that updates one.
        t.assign(to_numpy(s))


def _pair(name):
    """An unwrapped block and a `Recompute` of an identical one, built and
    in the same state."""
    make_block, input_shape = BLOCKS[name]
    keras.utils.set_random_seed(1)
    plain = make_block()
    keras.utils.set_random_seed(2)
    wrapped = Recompute(make_block())
    x = make_inputs(input_shape)
    plain(x, training=False)
    wrapped(x, training=False)
    _copy_variables(plain, wrapped.layer)
    return plain, wrapped, input_shape


def _assert_close_relative(actual, expected, rtol, name=""):
    """Agreement to `rtol` relative to the tensor's largest magnitude."""
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name
    )


def _assert_same_state(wrapped, plain):
    assert_same_variables(
        wrapped.layer.non_trainable_variables, plain.non_trainable_variables
    )


def _sgd_step(plain, wrapped, grads, learning_rate=0.1):
    for variable, grad in zip(plain.trainable_variables, grads, strict=True):
        variable.assign(
            variable.value - learning_rate * ops.convert_to_tensor(grad)
        )
    for mine, reference in zip(
        wrapped.trainable_variables, plain.trainable_variables, strict=True
    ):
        mine.assign(reference.value)


@pytest.mark.parametrize(
    "name, num_trainable, num_non_trainable",
    [
        ("conv_bn_dropout", 5, 2),
        ("unbuilt_sequential", 5, 2),
        ("recompute_of_recompute", 5, 2),
        ("two_inputs_two_outputs", 5, 2),
        ("dense_block", 15, 10),
    ],
)
def test_layer_checks(name, num_trainable, num_non_trainable, tmp_path):
    make_block, input_shape = BLOCKS[name]
    if name == "two_inputs_two_outputs":
        # The harness compares one output; the block's first is its map.
        make_block, input_shape = _decoder_level, BLOCKS[name][1]
    run_layer_test(
        Recompute,
        {"layer": make_block()},
        input_shape,
        tmp_path,
        expected_num_trainable_weights=num_trainable,
        expected_num_non_trainable_weights=num_non_trainable,
        # The wrapper takes its block's dtype policy; mixed precision is
        # tested below with a block built under it.
        run_mixed_precision=False,
        atol=1e-5,
    )


def _decoder_level():
    model = two_inputs_two_outputs()
    return keras.Model(model.inputs, model.outputs[0], name="decoder_level")


@EXPORT_FORMATS
@pytest.mark.parametrize("name", ["conv_bn_dropout", "dense_block"])
def test_export(export_format, name, tmp_path):
    make_block, input_shape = BLOCKS[name]
    run_export_test(
        Recompute,
        {"layer": make_block()},
        input_shape,
        tmp_path,
        export_format=export_format,
    )


@pytest.mark.parametrize("name", list(BLOCKS))
def test_outputs_gradients_and_statistics_equal_the_unwrapped_block(name):
    plain, wrapped, input_shape = _pair(name)
    for step in range(3):
        x = make_inputs(input_shape, seed=10 + step)
        y_plain, g_plain = value_and_grads(plain, x, _total_loss)
        y_ours, g_ours = value_and_grads(wrapped, x, _total_loss)
        for mine, reference in zip(
            keras.tree.flatten(y_ours), keras.tree.flatten(y_plain), strict=True
        ):
            _assert_close_relative(mine, reference, 1e-5, "output")
        g_plain = keras.tree.flatten(g_plain)
        g_ours = keras.tree.flatten(g_ours)
        assert len(g_ours) == len(g_plain)
        for i, (mine, reference) in enumerate(
            zip(g_ours, g_plain, strict=True)
        ):
            _assert_close_relative(mine, reference, 1e-5, f"gradient {i}")
        _assert_same_state(wrapped, plain)
        num_inputs = len(keras.tree.flatten(x))
        _sgd_step(plain, wrapped, g_plain[num_inputs:])


def test_xla_training_step_equals_the_unwrapped_block():
    # Under XLA TensorFlow's stateless dropout draws other masks than
    # eagerly, so both blocks run compiled.
    plain, wrapped, input_shape = _pair("conv_bn_dropout")
    x = make_inputs(input_shape, seed=3)
    y_plain, g_plain = value_and_grads(plain, x, jit_compile=True)
    y_ours, g_ours = value_and_grads(wrapped, x, jit_compile=True)
    _assert_close_relative(y_ours, y_plain, 1e-5)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)
    _assert_same_state(wrapped, plain)


def _regularized_block():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                8, activity_regularizer=keras.regularizers.L2(0.1)
            ),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Dropout(0.2, seed=6),
            keras.layers.Dense(3),
        ],
        name="regularized",
    )


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "jit"])
def test_fit_matches_the_unwrapped_block(jit_compile):
    """`fit` through the functional API, with a loss the block adds
    (an activity regularizer): same losses, weights and statistics."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 6)).astype("float32")
    y = rng.standard_normal((16, 3)).astype("float32")
    keras.utils.set_random_seed(5)
    plain_block = _regularized_block()
    keras.utils.set_random_seed(6)
    wrapped_block = _regularized_block()
    _copy_variables(plain_block, wrapped_block)
    models = compiled_models(
        [plain_block, Recompute(wrapped_block)], (6,), jit_compile
    )
    losses = fit_losses(models, x, y, batch_size=8)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert_same_variables(wrapped_block.variables, plain_block.variables)
    # The block's activity-regularizer loss reaches the model's losses.
    models[1](x, training=True)
    assert len(models[1].losses) == 1


def test_mixed_precision_matches_the_unwrapped_block():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        plain, wrapped, input_shape = _pair("conv_bn_dropout")
    finally:
        keras.config.set_dtype_policy(previous)
    assert wrapped.layer.dtype_policy.name == "mixed_float16"
    x = make_inputs(input_shape, seed=7)
    y_plain, g_plain = value_and_grads(plain, x)
    y_ours, g_ours = value_and_grads(wrapped, x)
    assert y_ours.dtype == np.float16
    np.testing.assert_array_equal(y_ours, y_plain)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        assert mine.dtype == reference.dtype
        _assert_close_relative(mine, reference, 1e-5)
    for variable in wrapped.layer.weights:
        assert variable.dtype == "float32", variable.path
    _assert_same_state(wrapped, plain)


def test_inference_calls_the_block_directly():
    plain, wrapped, input_shape = _pair("conv_bn_dropout")
    x = make_inputs(input_shape, seed=8)
    np.testing.assert_array_equal(
        to_numpy(wrapped(x, training=False)), to_numpy(plain(x, training=False))
    )
    np.testing.assert_array_equal(to_numpy(wrapped(x)), to_numpy(plain(x)))


@pytest.mark.backends(
    "tensorflow", "torch", reason="counts eager calls of the block"
)
def test_backward_pass_runs_the_block_again():
    calls = []

    class Counting(keras.layers.Layer):
        def call(self, x):
            calls.append(tuple(x.shape))
            return x * 2.0

    block = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), Counting()]
    )
    x = make_inputs((2, 3), seed=9)
    wrapped = Recompute(block)
    if BACKEND == "tensorflow":
        # The first training call of an input signature is traced once
        # more under TensorFlow, to check for state it cannot recompute.
        value_and_grads(wrapped, x)
    calls.clear()
    value_and_grads(wrapped, x)
    # The forward pass, then the recomputation in the backward pass.
    assert calls == [(2, 4), (2, 4)]
    calls.clear()
    value_and_grads(block, x)
    assert calls == [(2, 4)]


@pytest.mark.backends(
    "jax",
    "torch",
    reason="counts what autodiff keeps: JAX's residuals, PyTorch's saved "
    "tensors and checkpoint inputs",
)
def test_keeps_only_the_inputs_and_the_starting_state():
    from keras_fusion._tools.residuals import saved_residuals

    plain, wrapped, input_shape = _pair("conv_bn_dropout")
    x = make_inputs(input_shape, seed=11)
    plain_residuals = saved_residuals(plain, x)
    ours = saved_residuals(wrapped, x)
    # The plain block saves its BatchNorm input and its ReLU and dropout
    # outputs (each 4 x 8 x 8 x 6 floats) among others.
    activation = 4 * 8 * 8 * 6 * 4
    assert sum(r[2] for r in plain_residuals) >= 3 * activation
    # Recompute: the arguments (inputs, weights) and the non-trainable
    # values it started from; no array the size of an activation that is
    # not the input.
    for dtype, shape, nbytes, source in ours:
        assert nbytes < activation or shape == input_shape, (
            dtype,
            shape,
            source,
        )


def _built(layer, shape):
    layer(make_inputs(shape), training=False)
    return layer


def _recompute_gets_them_right(x):
    """One training step of `Recompute` around the block equals the plain
    block's: gradients and moving statistics."""
    plain, wrapped, _ = _pair("conv_bn_dropout")
    _, g_plain = value_and_grads(plain, x)
    _, g_ours = value_and_grads(wrapped, x)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)
    _assert_same_state(wrapped, plain)


def test_keras_remat_gets_statistics_and_dropout_wrong():
    """Why `Recompute` exists: `keras.RematScope` (`keras.remat` around
    each layer's call) on the same block. Under TensorFlow and PyTorch the
    recomputation updates the moving statistics and advances the dropout
    seed a second time, and draws another dropout mask, so the gradients
    are wrong; under JAX the step fails. `Recompute` around that block
    gets them right on every backend. If the `RematScope` half fails,
    Keras has changed: update the README's comparison."""
    x = make_inputs((4, 8, 8, 4), seed=12)
    if BACKEND == "jax":
        # Keras 3.15's RematScope fails even to call the block under JAX
        # (a Python condition on a value traced by `jax.checkpoint`): no
        # step to compare with, and Keras's own error is not ours to test.
        _recompute_gets_them_right(x)
        return
    keras.utils.set_random_seed(1)
    plain = _built(conv_bn_dropout(), (4, 8, 8, 4))
    keras.utils.set_random_seed(2)
    with keras.RematScope(mode="full"):
        rematerialized = _built(conv_bn_dropout(), (4, 8, 8, 4))
    _copy_variables(plain, rematerialized)
    _, g_plain = value_and_grads(plain, x)
    _, g_remat = value_and_grads(rematerialized, x)
    kernel_gradient = 1  # after the input's gradient
    assert not np.allclose(
        g_remat[kernel_gradient], g_plain[kernel_gradient], rtol=1e-3
    )
    for variable, reference in zip(
        rematerialized.non_trainable_variables,
        plain.non_trainable_variables,
        strict=True,
    ):
        if variable.path.endswith("moving_mean"):
            # Updated twice: 0.81 * initial + 0.19 * batch mean.
            assert not np.allclose(
                to_numpy(variable), to_numpy(reference), atol=1e-4
            )
    _recompute_gets_them_right(x)


def test_mixed_precision_model_around_a_float32_block_keeps_float32():
    # The wrapper reads the block's weights uncast inside a mixed-precision
    # model's autocast scope, as the block would alone.
    keras.utils.set_random_seed(1)
    plain = _built(conv_bn_dropout(), (4, 8, 8, 4))
    keras.utils.set_random_seed(2)
    wrapped = Recompute(_built(conv_bn_dropout(), (4, 8, 8, 4)))
    _copy_variables(plain, wrapped.layer)
    x = make_inputs((4, 8, 8, 4), seed=13)
    # Models (and one layer in front of both blocks) built under
    # mixed_float16, whose calls open an autocast scope around the blocks.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        front = keras.layers.Conv2D(4, 1)
        models = []
        for block in (plain, wrapped):
            inputs = keras.Input((8, 8, 4))
            models.append(keras.Model(inputs, block(front(inputs))))
    finally:
        keras.config.set_dtype_policy(previous)
    assert models[1].dtype_policy.name == "mixed_float16"
    outputs = [value_and_grads(model, x) for model in models]
    (y_plain, g_plain), (y_ours, g_ours) = outputs
    assert y_ours.dtype == y_plain.dtype == np.float32
    _assert_close_relative(y_ours, y_plain, 1e-5)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)


@pytest.mark.parametrize(
    "make_layer, input_shape",
    [
        (lambda: keras.layers.Dense(2), (3, 5)),
        (lambda: keras.layers.Conv2D(2, 3), (2, 6, 6, 3)),
    ],
    ids=["Dense", "Conv2D"],
)
@pytest.mark.parametrize("symbolic", [False, True])
def test_wraps_an_unbuilt_layer(make_layer, input_shape, symbolic):
    keras.utils.set_random_seed(0)
    wrapped = Recompute(make_layer())
    x = make_inputs(input_shape)
    inputs = keras.Input(input_shape[1:])
    if symbolic:
        # Built by the functional API's symbolic call.
        model = keras.Model(inputs, wrapped(inputs))
    else:
        # Built by its first (eager) call.
        wrapped(x)
        model = keras.Model(inputs, wrapped(inputs))
    plain = make_layer()
    plain_model = keras.Model(inputs, plain(inputs))
    _copy_variables(wrapped.layer, plain)
    _assert_close_relative(to_numpy(model(x)), to_numpy(plain_model(x)), 1e-6)
    # Through models: `Dense.call` takes `training`, `Conv2D.call` not.
    _, g_wrapped = value_and_grads(model, x, _total_loss)
    _, g_plain = value_and_grads(plain_model, x, _total_loss)
    for mine, reference in zip(g_wrapped, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)


def test_recompute_errors_if_dtype_differs_from_the_block():
    with pytest.raises(ValueError, match="set the policy on the block"):
        Recompute(conv_bn_dropout(), dtype="mixed_float16")


def test_recompute_errors_if_layer_is_not_a_layer():
    with pytest.raises(TypeError, match="`layer` should be a Keras layer"):
        Recompute(lambda x: x)


def test_recompute_errors_if_call_needs_more_arguments():
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    with pytest.raises(ValueError, match="also requires 'value'"):
        Recompute(attention)


def test_recompute_errors_if_input_has_a_mask():
    embedding = keras.layers.Embedding(10, 4, mask_zero=True)
    x = embedding(np.array([[1, 2, 0, 0, 0]]))
    block = keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="does not pass Keras masks"):
        Recompute(block)(x)


@pytest.mark.backends(
    "tensorflow",
    "torch",
    reason="JAX refuses unseeded random ops itself, when the block is built",
)
def test_recompute_errors_if_randomness_is_not_tracked():
    class Noisy(keras.layers.Layer):
        def call(self, x):
            return x + keras.random.normal(ops.shape(x))

    block = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3), Noisy()]
    )
    wrapped = Recompute(block)
    with pytest.raises(ValueError, match="does not track|seed"):
        value_and_grads(wrapped, make_inputs((2, 3)))


class _StatefulNoise(keras.layers.Layer):
    """Multiplies by TensorFlow's stateful uniform noise."""

    def call(self, x):
        import tensorflow as tf

        return x * tf.random.uniform(tf.shape(x))


class _UntrackedCounter(keras.layers.Layer):
    """Counts its calls in a `tf.Variable` Keras does not track."""

    def build(self, input_shape):
        import tensorflow as tf

        self.calls = tf.Variable(0.0, trainable=False)

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


@pytest.mark.backends(
    "tensorflow", reason="stateful random ops and tf.Variable are TensorFlow's"
)
@pytest.mark.parametrize(
    "make_layer, match",
    [
        (_StatefulNoise, "stateful TensorFlow random ops.*RandomUniform"),
        (_UntrackedCounter, "does not track.*AssignAddVariableOp"),
    ],
    ids=["random_uniform", "tf_variable_assign"],
)
@pytest.mark.parametrize("run", ["eager", "fit", "fit_jit"])
def test_recompute_errors_if_tensorflow_state_is_not_tracked(
    make_layer, match, run
):
    block = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3), make_layer()]
    )
    wrapped = Recompute(block)
    x, y = make_inputs((4, 3)), make_inputs((4, 3), seed=1)
    with pytest.raises(
        ValueError, match=f"(?s){match}.*(SeedGenerator|add_weight)"
    ):
        if run == "eager":
            value_and_grads(wrapped, x)
        else:
            inputs = keras.Input((3,))
            model = keras.Model(inputs, wrapped(inputs))
            model.compile("sgd", "mse", jit_compile=run == "fit_jit")
            model.fit(x, y, verbose=0)
