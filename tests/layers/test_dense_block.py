import json

import keras
import numpy as np
import pytest

from keras_fusion import MemoryEfficientDenseBlock
from tests.backend_utils import BACKEND
from tests.backend_utils import TF_KERNEL
from tests.backend_utils import compiled_models
from tests.backend_utils import fit_losses
from tests.backend_utils import record_recomputations
from tests.backend_utils import run_with_jax_x64
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.backend_utils import weighted_loss
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import export_limit
from tests.layer_test_case import make_inputs
from tests.layer_test_case import missing_float16_kernels
from tests.layer_test_case import run_export_test
from tests.layer_test_case import run_layer_test
from tests.layer_test_case import skip_unless_channels_first_convolution_runs

POLICIES = ["full", "concat_bn"]


def _pair(policy, input_shape, **kwargs):
    """The plain block and a recomputing one with the same weights."""
    kwargs = {"num_layers": 4, "growth_rate": 6, "seed": 7, **kwargs}
    plain = MemoryEfficientDenseBlock(recompute=False, **kwargs)
    ours = MemoryEfficientDenseBlock(recompute=policy, **kwargs)
    plain.build(input_shape)
    ours.build(input_shape)
    ours.set_weights(plain.get_weights())
    return plain, ours


def _tape_step(block, x, jit_compile=False):
    """Outputs and gradients (input first) of one training step; the
    block's moving statistics and dropout seeds move on as in training."""
    return value_and_grads(block, x, jit_compile=jit_compile)


def _assert_close_relative(actual, expected, rtol):
    """Agreement to `rtol` relative to the tensor's scale."""
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _moving_statistics(block):
    # Keyed by the path below the block, whose own name differs per instance.
    return {
        v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v)
        for v in block.non_trainable_variables
        if "moving" in v.path
    }


# Weights of the 3-layer blocks below: per layer, with the bottleneck,
# BN gamma/beta, 1x1 kernel, BN gamma/beta, 3x3 kernel (6 trainable) and two
# BNs' moving mean/variance (4); without it 3 and 2.
LAYER_CASES = pytest.mark.parametrize(
    "recompute, input_shape, kwargs, num_weights",
    [
        ("full", (2, 6, 6, 5), {}, (18, 12)),
        ("concat_bn", (2, 6, 6, 5), {"dropout_rate": 0.2}, (18, 12)),
        (False, (2, 6, 6, 5), {}, (18, 12)),
        (True, (2, 9, 4), {"bottleneck_factor": None}, (9, 6)),
        ("full", (1, 4, 4, 4, 3), {}, (18, 12)),
        (
            "concat_bn",
            (2, 5, 6, 6),
            {"data_format": "channels_first"},
            (18, 12),
        ),
        (
            "full",
            (2, 6, 6, 5),
            {"return_new_features": True, "dropout_rate": 0.2},
            (18, 12),
        ),
    ],
    ids=[
        "full-2d",
        "concat-bn-2d-dropout",
        "plain",
        "1d-no-bottleneck",
        "3d",
        "channels-first",
        "new-features",
    ],
)


@LAYER_CASES
def test_layer_checks(recompute, input_shape, kwargs, num_weights, tmp_path):
    data_format = kwargs.get("data_format", "channels_last")
    if data_format == "channels_first":
        skip_unless_channels_first_convolution_runs(len(input_shape))
    run_layer_test(
        MemoryEfficientDenseBlock,
        {"num_layers": 3, "growth_rate": 4, "recompute": recompute, **kwargs},
        input_shape,
        tmp_path,
        expected_num_trainable_weights=num_weights[0],
        expected_num_non_trainable_weights=num_weights[1],
        atol=1e-5,
        float16_kernels_missing=missing_float16_kernels(
            len(input_shape), data_format
        ),
    )


@EXPORT_FORMATS
@LAYER_CASES
def test_export(
    export_format, recompute, input_shape, kwargs, num_weights, tmp_path
):
    if kwargs.get("data_format") == "channels_first":
        skip_unless_channels_first_convolution_runs(len(input_shape))
    run_export_test(
        MemoryEfficientDenseBlock,
        {"num_layers": 3, "growth_rate": 4, "recompute": recompute, **kwargs},
        input_shape,
        tmp_path,
        atol=1e-5,
        export_format=export_format,
        fails_with=export_limit(export_format, rank=len(input_shape)),
    )


def test_plain_block_matches_keras_applications_wiring():
    from keras_fusion._tools.reference_densenet import conv_block

    inputs = keras.Input((8, 8, 16))
    x = inputs
    for i in range(3):
        x = conv_block(x, 8, name=f"conv2_block{i + 1}")
    reference = keras.Model(inputs, x)
    block = MemoryEfficientDenseBlock(3, 8, recompute=False, name="conv2")
    block.build((None, 8, 8, 16))
    by_name = {layer.name: layer for layer in reference.layers}
    for parts in block.dense_layers:
        for sublayer in parts.layers():
            source = by_name[f"conv2_{sublayer.name}"]
            sublayer.set_weights(source.get_weights())
    data = make_inputs((2, 8, 8, 16), seed=1)
    for training in (False, True):
        np.testing.assert_allclose(
            to_numpy(block(data, training=training)),
            to_numpy(reference(data, training=training)),
            rtol=1e-5,
            atol=1e-5,
        )


def _to_channels_last(x):
    return np.moveaxis(x, 1, -1)


def _to_channels_first(x):
    return np.moveaxis(x, -1, 1)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "input_shape, data_format, dtype, rtol",
    [
        ((3, 7, 7, 5), "channels_last", "float32", 1e-5),
        ((3, 5, 7, 7), "channels_first", "float32", 1e-5),
        ((3, 7, 7, 5), "channels_last", "float64", 1e-10),
    ],
    ids=["channels_last", "channels_first", "float64"],
)
def test_outputs_and_gradients_equal_the_plain_block(
    policy, input_shape, data_format, dtype, rtol, request
):
    if dtype == "float64" and BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            # JAX computes in float32 unless x64 is on, which it reads
            # before it computes anything: this case runs again in a
            # fresh process that turns it on.
            run_with_jax_x64(request)
            return
        # Keras's BatchNormalization computes float64 inputs in float32
        # under JAX (`result_type(float64, float32)` is float32 there), so
        # the plain block's gradients through it are float32's, which the
        # kernel's analytic gradients (a different float32 summation
        # order) agree with only to float32's rounding.
        rtol = 1e-5
    plain, ours = _pair(
        policy, input_shape, data_format=data_format, dtype=dtype
    )
    x = make_inputs(input_shape, seed=2, dtype=dtype)
    y_ours, g_ours = _tape_step(ours, x)
    if data_format == "channels_first":
        # The reference is the plain block in channels_last, with the same
        # weights (kernels and BatchNorm have the same layout in both), on
        # the transposed input: the same function, and one that runs where
        # TensorFlow has no NCHW convolution (CPUs without oneDNN).
        x = _to_channels_last(x)
        plain = MemoryEfficientDenseBlock(4, 6, recompute=False, seed=7)
        plain.build(x.shape)
        plain.set_weights(ours.get_weights())
        y_plain, g_plain = _tape_step(plain, x)
        y_plain = _to_channels_first(y_plain)
        g_plain[0] = _to_channels_first(g_plain[0])
    else:
        y_plain, g_plain = _tape_step(plain, x)
    assert y_ours.dtype == y_plain.dtype == np.dtype(dtype)
    _assert_close_relative(y_ours, y_plain, rtol)
    assert len(g_ours) == len(g_plain) == 1 + len(plain.trainable_variables)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        assert mine.dtype == np.dtype(dtype)
        _assert_close_relative(mine, reference, rtol)


@pytest.mark.parametrize("policy", [False, *POLICIES])
@pytest.mark.parametrize(
    "input_shape, data_format, num_layers",
    [
        ((3, 7, 7, 5), "channels_last", 4),
        ((3, 5, 7, 7), "channels_first", 4),
        ((3, 7, 7, 5), "channels_last", 1),
    ],
    ids=["channels_last", "channels_first", "one-layer"],
)
def test_new_features_are_the_full_outputs_last_channels(
    policy, input_shape, data_format, num_layers
):
    # The reference: the plain block returning everything, its output's
    # last `num_layers * growth_rate` channels, and the gradients of a
    # loss of those channels only.
    if data_format == "channels_first":
        skip_unless_channels_first_convolution_runs()
    kwargs = {
        "num_layers": num_layers,
        "growth_rate": 6,
        "seed": 7,
        "dropout_rate": 0.2,
        "data_format": data_format,
    }
    full = MemoryEfficientDenseBlock(recompute=False, **kwargs)
    ours = MemoryEfficientDenseBlock(
        recompute=policy, return_new_features=True, **kwargs
    )
    full.build(input_shape)
    ours.build(input_shape)
    ours.set_weights(full.get_weights())
    axis = 1 if data_format == "channels_first" else -1
    channels = input_shape[axis]

    def new_channels(y):
        if data_format == "channels_first":
            return y[:, channels:]
        return y[..., channels:]

    def loss_of_new_channels(y):
        return weighted_loss(new_channels(y))

    y_full, g_full = value_and_grads(
        full, _x(input_shape), loss_of_new_channels
    )
    y_ours, g_ours = value_and_grads(ours, _x(input_shape))
    expected_shape = list(input_shape)
    expected_shape[axis] = num_layers * 6
    assert y_ours.shape == tuple(expected_shape)
    assert ours.compute_output_shape(input_shape) == tuple(expected_shape)
    _assert_close_relative(y_ours, new_channels(y_full), 1e-5)
    assert len(g_ours) == len(g_full)
    for mine, reference in zip(g_ours, g_full, strict=True):
        _assert_close_relative(mine, reference, 1e-5)


def _x(input_shape):
    return make_inputs(input_shape, seed=3)


@pytest.mark.parametrize("policy", POLICIES)
def test_moving_statistics_update_once_per_step(policy):
    # Both blocks take the plain block's update each step, so that their
    # weights stay equal and the statistics compared here depend only on
    # how each block updates them (gradient agreement has its own test).
    input_shape = (4, 6, 6, 5)
    plain, ours = _pair(policy, input_shape)
    optimizer = keras.optimizers.SGD(0.1)
    initial = _moving_statistics(plain)
    for step in range(3):
        x = make_inputs(input_shape, seed=10 + step)
        _, grads = _tape_step(plain, x)
        _tape_step(ours, x)
        stats_plain = _moving_statistics(plain)
        stats_ours = _moving_statistics(ours)
        assert stats_plain.keys() == stats_ours.keys()
        for path, value in stats_plain.items():
            np.testing.assert_allclose(
                stats_ours[path], value, rtol=0, atol=1e-6
            )
            # They moved: each step updates them (a second update per step
            # would move them again, about 1e-2 further than the plain
            # block's, far outside the tolerance above).
            assert not np.allclose(value, initial[path], rtol=0, atol=1e-3)
        optimizer.apply(
            [keras.ops.convert_to_tensor(g) for g in grads[1:]],
            plain.trainable_variables,
        )
        for mine, reference in zip(
            ours.trainable_variables, plain.trainable_variables, strict=True
        ):
            mine.assign(reference)


# Under PyTorch `jit_compile=True` is `torch.compile`: its first
# compilation in a process takes ~25 s on CI's machine (8 s after).
@pytest.mark.parametrize(
    "jit_compile",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["eager", "jit"],
)
@pytest.mark.parametrize("policy", POLICIES)
def test_fit_matches_the_plain_block(policy, jit_compile):
    input_shape = (8, 6, 6, 5)
    x = make_inputs(input_shape, seed=3)
    target = make_inputs((8, 6, 6, 5 + 4 * 6), seed=4)
    models = compiled_models(
        _pair(policy, input_shape, dropout_rate=0.3),
        input_shape[1:],
        jit_compile,
    )
    models[1].set_weights(models[0].get_weights())
    losses = fit_losses(models, x, target, batch_size=4)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for mine, reference in zip(
        models[1].weights, models[0].weights, strict=True
    ):
        assert mine.path.split("/", 1)[1] == reference.path.split("/", 1)[1]
        if BACKEND == "jax":
            import jax

            # What keras.remat around BatchNorm gets wrong under JAX: the
            # moving statistics would be left holding tracers.
            assert not isinstance(mine.value, jax.core.Tracer), mine.path
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(mine),
            keras.ops.convert_to_numpy(reference),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("policy", POLICIES)
def test_dropout_mask_is_the_same_in_the_recomputation(policy):
    input_shape = (3, 6, 6, 5)
    plain, ours = _pair(policy, input_shape, dropout_rate=0.5)
    no_dropout, _ = _pair(policy, input_shape)
    no_dropout.set_weights(plain.get_weights())
    x = make_inputs(input_shape, seed=5)
    _, g_plain = _tape_step(plain, x)
    _, g_ours = _tape_step(ours, x)
    _, g_without = _tape_step(no_dropout, x)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)
    assert not np.allclose(g_ours[0], g_without[0], rtol=1e-2, atol=1e-3)


# float16: both blocks compute in float16 (BatchNorm in float32), the same
# ops, summed in another order; the tolerance is ten of float16's rounding
# steps (1e-3) over the 4 layers. (bfloat16's 8 bits are not compared: on
# JAX's CPU backend the two blocks' bfloat16 gradients differed by up to 1.6
# at single elements, and by a different amount from run to run.)
@pytest.mark.parametrize("policy", POLICIES)
def test_float16_matches_the_plain_block(policy):
    input_shape = (3, 6, 6, 5)
    dtype_policy, compute_dtype, rtol = "mixed_float16", "float16", 1e-2
    plain, ours = _pair(policy, input_shape, dtype=dtype_policy)
    # In the compute dtype already: JAX's step calls `stateless_call`,
    # which leaves the input's dtype as it is.
    x = make_inputs(input_shape, seed=11).astype(compute_dtype)
    y_plain, g_plain = _tape_step(plain, x)
    y_ours, g_ours = _tape_step(ours, x)
    assert y_ours.dtype == y_plain.dtype == np.dtype(compute_dtype)
    _assert_close_relative(
        y_ours.astype("float32"), y_plain.astype("float32"), rtol
    )
    assert len(g_ours) == len(g_plain)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(
            mine.astype("float32"), reference.astype("float32"), rtol
        )


@pytest.mark.parametrize("policy", POLICIES)
def test_xla_training_step_matches_eager(policy):
    input_shape = (2, 6, 6, 5)
    plain, ours = _pair(policy, input_shape)
    x = make_inputs(input_shape, seed=6)
    y_plain, g_plain = _tape_step(plain, x)
    y_ours, g_ours = _tape_step(ours, x, jit_compile=True)
    _assert_close_relative(y_ours, y_plain, 1e-5)
    for mine, reference in zip(g_ours, g_plain, strict=True):
        _assert_close_relative(mine, reference, 1e-5)


@pytest.mark.backends(
    "jax",
    reason="JAX's custom-gradient kernel against the keras.remat kernel "
    "it replaced there (remat_dense_block.py, PyTorch's)",
)
@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("policy", POLICIES)
def test_jax_kernel_matches_the_remat_kernel(policy, jit_compile, monkeypatch):
    from keras_fusion import backend
    from keras_fusion.backend import remat_dense_block

    input_shape = (3, 6, 6, 5)
    _, ours = _pair(policy, input_shape, dropout_rate=0.3)
    _, remat = _pair(policy, input_shape, dropout_rate=0.3)
    remat.set_weights(ours.get_weights())
    x = make_inputs(input_shape, seed=9)
    y_ours, g_ours = _tape_step(ours, x, jit_compile=jit_compile)
    monkeypatch.setattr(
        backend,
        "recomputing_dense_block",
        remat_dense_block.recomputing_dense_block,
    )
    y_remat, g_remat = _tape_step(remat, x, jit_compile=jit_compile)
    _assert_close_relative(y_ours, y_remat, 1e-5)
    for mine, reference in zip(g_ours, g_remat, strict=True):
        _assert_close_relative(mine, reference, 1e-5)
    for mine, reference in zip(
        ours.non_trainable_variables,
        remat.non_trainable_variables,
        strict=True,
    ):
        np.testing.assert_allclose(
            to_numpy(mine), to_numpy(reference), rtol=0, atol=1e-6
        )


@tensorflow_only(TF_KERNEL)
@pytest.mark.parametrize("policy", POLICIES)
def test_backward_pass_recomputes_every_layer(policy, monkeypatch):
    # Observed from outside: every BatchNorm-ReLU the kernel recomputes
    # goes through the shared function, counted here by a wrapper.
    recomputed = record_recomputations(monkeypatch)
    _, ours = _pair(policy, (2, 6, 6, 5))
    x = make_inputs((2, 6, 6, 5), seed=8)
    ours(x, training=True)
    ours(x, training=False)
    assert recomputed == []
    _tape_step(ours, x)
    # Last layer first, each layer once: the BatchNorm on the layer's
    # input (5 + 6 i channels), then the one after its bottleneck (4 * 6).
    expected = []
    for index in reversed(range(ours.num_layers)):
        expected += [5 + 6 * index, 4 * 6]
    assert [shape[-1] for shape in recomputed] == expected


KEEPS = pytest.mark.backends(
    "jax",
    "torch",
    reason="counts what autodiff keeps: JAX's residuals, PyTorch's saved "
    "tensors and checkpoint inputs",
)


@KEEPS
@pytest.mark.parametrize(
    "policy, bottleneck",
    [("full", 4), ("concat_bn", 4), ("concat_bn", None)],
    ids=["full", "concat_bn", "concat_bn-no-bottleneck"],
)
def test_saves_fewer_residuals_and_linear_in_depth(policy, bottleneck):
    # The feature maps kept (arrays of the input's rank): what scales with
    # the activations. BatchNorm's batch statistics, one vector per
    # BatchNorm, grow with the channels of each layer's input.
    from keras_fusion._tools.residuals import saved_residuals

    def residuals(recompute, num_layers):
        block = MemoryEfficientDenseBlock(
            num_layers, 6, bottleneck_factor=bottleneck, recompute=recompute
        )
        return sum(
            nbytes
            for _, shape, nbytes, source in saved_residuals(
                block, make_inputs((2, 6, 6, 5))
            )
            if len(shape) == 4 and not source.startswith("from the argument")
        )

    plain = [residuals(False, n) for n in (4, 8, 16)]
    ours = [residuals(policy, n) for n in (4, 8, 16)]
    for mine, reference in zip(ours, plain, strict=True):
        assert mine < 0.7 * reference
    # Linear in depth: doubling the depth adds the same amount twice.
    np.testing.assert_allclose(
        ours[2] - ours[1], 2 * (ours[1] - ours[0]), rtol=0.05
    )
    # The plain block's residuals grow faster than linearly.
    assert plain[2] - plain[1] > 2.5 * (plain[1] - plain[0])


@KEEPS
@pytest.mark.parametrize("dropout_rate", [0.0, 0.5], ids=["", "dropout"])
@pytest.mark.parametrize("num_layers", [2, 5])
def test_full_keeps_the_features_once(num_layers, dropout_rate):
    # Hand count, in bytes, of what `"full"` keeps for the backward pass
    # (batch 2, 6 x 6, 5 input channels, growth rate 6, float32).
    # - JAX (the custom-gradient kernel): the block's output once (the
    #   input and every layer's new features, out of which the backward
    #   pass slices each layer's input), every BatchNorm's batch mean and
    #   variance (5 + 6 i channels before layer i's bottleneck, 24 after
    #   it) and each layer's dropout seed (two uint32).
    # - PyTorch (`torch.utils.checkpoint`): each layer's new features for
    #   the later layers' recomputation, the last layer's excepted; with
    #   dropout (which runs after the recomputed function) each layer's
    #   mask, of the same size; and the generator's state, once per
    #   layer.
    from keras_fusion._tools.residuals import GENERATOR_STATE
    from keras_fusion._tools.residuals import saved_activation_bytes
    from keras_fusion._tools.residuals import saved_residuals

    block = MemoryEfficientDenseBlock(
        num_layers, 6, dropout_rate=dropout_rate, recompute="full"
    )
    x = make_inputs((2, 6, 6, 5))
    features = 2 * 6 * 6 * 6 * 4
    if BACKEND == "jax":
        output = 2 * 6 * 6 * (5 + 6 * num_layers) * 4
        statistics = sum(
            2 * (5 + 6 * index) * 4 + 2 * 24 * 4 for index in range(num_layers)
        )
        seeds = 8 * num_layers if dropout_rate else 0
        expected = output + statistics + seeds
    else:
        masks = num_layers if dropout_rate else 0
        expected = features * (num_layers - 1 + masks)
    assert saved_activation_bytes(block, x) == expected
    states = [r for r in saved_residuals(block, x) if r[3] == GENERATOR_STATE]
    assert len(states) == (num_layers if BACKEND == "torch" else 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_layers": 0}, "`num_layers` should be a positive int.*0"),
        ({"growth_rate": 2.5}, "`growth_rate` should be a positive int.*2.5"),
        (
            {"bottleneck_factor": 0},
            "`bottleneck_factor`.*Received: bottleneck_factor=0",
        ),
        (
            {"dropout_rate": 1.0},
            r"`dropout_rate` should be a float in \[0, 1\).*1.0",
        ),
        ({"recompute": "yes"}, "`recompute` should be one of.*'yes'"),
        (
            {"batch_norm_epsilon": 0},
            "`batch_norm_epsilon` should be a positive, finite float.*0",
        ),
        (
            {"batch_norm_momentum": 2},
            r"`batch_norm_momentum` should be a float in \[0, 1\].*2",
        ),
        ({"data_format": "NCHW"}, "`data_format`.*'NCHW'"),
    ],
)
def test_dense_block_errors_if_argument_is_invalid(kwargs, message):
    kwargs = {"num_layers": 2, "growth_rate": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        MemoryEfficientDenseBlock(**kwargs)


def test_dense_block_accepts_numpy_numbers():
    block = MemoryEfficientDenseBlock(
        np.int64(2),
        np.int32(4),
        bottleneck_factor=np.int64(2),
        dropout_rate=np.float32(0.25),
        batch_norm_epsilon=np.float64(1e-3),
        batch_norm_momentum=np.float32(0.5),
    )
    config = block.get_config()
    expected = {
        "num_layers": 2,
        "growth_rate": 4,
        "bottleneck_factor": 2,
        "dropout_rate": 0.25,
        "batch_norm_epsilon": 1e-3,
        "batch_norm_momentum": 0.5,
    }
    for name, value in expected.items():
        assert config[name] == value and type(config[name]) is type(value)
    json.dumps(config)
    y = block(make_inputs((1, 4, 4, 3)), training=True)
    assert tuple(y.shape) == (1, 4, 4, 11)


@pytest.mark.parametrize(
    "name", ["num_layers", "growth_rate", "dropout_rate", "batch_norm_epsilon"]
)
def test_dense_block_errors_if_number_is_a_bool(name):
    kwargs = {"num_layers": 2, "growth_rate": 4, name: True}
    with pytest.raises(ValueError, match=f"`{name}` should be.*True"):
        MemoryEfficientDenseBlock(**kwargs)


def test_dense_block_errors_if_synchronized_is_not_a_bool():
    with pytest.raises(TypeError, match="`synchronized` should be a bool"):
        MemoryEfficientDenseBlock(2, 4, synchronized="yes")
    assert MemoryEfficientDenseBlock(2, 4).synchronized is False


def test_dense_block_errors_if_rank_is_unsupported():
    with pytest.raises(ValueError, match="rank 3, 4 or 5.*\\(None, 8\\)"):
        MemoryEfficientDenseBlock(2, 4)(keras.Input((8,)))


def test_dense_block_errors_if_channels_are_unknown():
    with pytest.raises(ValueError, match="channel dimension.*should be known"):
        MemoryEfficientDenseBlock(2, 4)(keras.Input((8, 8, None)))


def test_sublayers_are_named_like_keras_applications():
    block = MemoryEfficientDenseBlock(2, 4, name="conv2")
    block.build((None, 8, 8, 3))
    paths = sorted(v.path for v in block.weights)
    assert "conv2/block1_0_bn/gamma" in paths
    assert "conv2/block2_1_conv/kernel" in paths
    assert "conv2/block2_1_bn/moving_variance" in paths
    assert "conv2/block2_2_conv/kernel" in paths
