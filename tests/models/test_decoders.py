"""`UNet(encoder=...)`, `UNetPlusPlus` and `FPN` on pretrained encoders.

Which backend runs what, so that CI stays under 45 minutes while each
backend checks sizes, errors, recomputation, freezing, `.keras` files and
exports: TensorFlow, where a model builds and runs fastest, runs the whole
encoder matrix (eight encoders, three decoders, two odd sizes), every
recomputation comparison and every export. JAX and PyTorch run the
decoders on KerasHub's ResNet (the matrix's cross-backend row), every
error and freezing test, and the recomputation comparison, `.keras` file
and exports of the U-Net: the decoders share their layers (upsampling,
`AlignTo`, `CropAndConcat`, `FusionSelector`, convolutions), so what
differs between backends is the encoder's graph and `Recompute`, which
those tests cover.
"""

import keras
import numpy as np
import pytest

from keras_fusion import Recompute
from keras_fusion.models import FPN
from keras_fusion.models import UNet
from keras_fusion.models import UNetPlusPlus
from tests.backend_utils import BACKEND
from tests.backend_utils import assert_same_variables
from tests.backend_utils import reset_unseeded_dropout
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import export_limit
from tests.layer_test_case import run_model_export_test
from tests.models.encoders import ENCODERS

ODD_SIZES = [(97, 129), (57, 75)]
EVERY_BACKEND = ("hub_resnet",)
OTHER_BACKENDS_SKIP = pytest.mark.backends(
    "tensorflow",
    reason="runs on TensorFlow only; JAX and PyTorch run the U-Net's "
    "(module docstring)",
)
IN_FLOAT64 = pytest.mark.backends(
    "tensorflow",
    "torch",
    reason="compared in float64 (the `float64` fixture); JAX compares the "
    "U-Net on KerasHub's ResNet in float32",
)


def _tensorflow_only_but_unet(decoder):
    return pytest.param(
        decoder, marks=[] if decoder == "unet" else [OTHER_BACKENDS_SKIP]
    )


def _unet(encoder, **kwargs):
    return UNet(encoder=encoder, **kwargs)


DECODERS = {
    "unet": lambda encoder, **kw: _unet(encoder, decoder_filters=8, **kw),
    "unet_plus_plus": lambda encoder, **kw: UNetPlusPlus(
        encoder, decoder_filters=8, **kw
    ),
    "fpn": lambda encoder, **kw: FPN(
        encoder, decoder_filters=16, segmentation_filters=8, **kw
    ),
}


def _images(seed, size, batch=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (batch, *size, 3)).astype("float32")


def _families():
    for name in ENCODERS:
        marks = []
        if name not in EVERY_BACKEND:
            marks.append(
                pytest.mark.backends(
                    "tensorflow",
                    reason="the whole encoder matrix runs on TensorFlow "
                    "(module docstring)",
                )
            )
        yield pytest.param(name, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("family", list(_families()))
def test_output_has_the_input_size(decoder, family):
    # The family that runs on every backend runs traced and compiled
    # (`predict`: one TensorFlow graph with `None` sizes for both sizes, a
    # compilation per size under JAX); the others run eagerly, the same
    # layers and size arithmetic on concrete shapes, without TensorFlow's
    # ~10 s of graph optimization per model. The exports below run traced
    # graphs with `None` sizes too.
    keras.utils.set_random_seed(0)
    model = DECODERS[decoder](ENCODERS[family](), classes=3)
    for size in ODD_SIZES:
        if family in EVERY_BACKEND:
            outputs = model.predict(_images(0, size), verbose=0)
        else:
            outputs = to_numpy(model(_images(0, size), training=False))
        assert outputs.shape == (1, *size, 3)
        assert np.all(np.isfinite(outputs))


@pytest.mark.parametrize("decoder", DECODERS)
def test_static_odd_input_size(decoder):
    # VGG16 rounds down at every pooling: 201 -> 100 -> 50 -> 25 -> 12 -> 6.
    encoder = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(201, 203, 3)
    )
    model = DECODERS[decoder](encoder, classes=3)
    assert model.output_shape == (None, 201, 203, 3)


@pytest.mark.parametrize("decoder", DECODERS)
def test_too_small_input_errors_when_built(decoder):
    encoder = ENCODERS["vgg16"]()
    match = r"smallest spatial size is \(32, 32\)"
    with pytest.raises(ValueError, match=match):
        DECODERS[decoder](encoder, input_shape=(31, 40, 3))


@pytest.mark.parametrize("decoder", DECODERS)
def test_too_small_input_errors_when_run(decoder):
    model = DECODERS[decoder](ENCODERS["vgg16"]())
    with pytest.raises(Exception, match=r"at least \(32, 32\)"):
        model.predict(_images(0, (31, 40)), verbose=0)


def _by_path(model):
    return {w.path: w for w in model.weights}


def _seeds(model):
    return [v for v in model.non_trainable_variables if "seed" in v.path]


def _same_weights(ours, plain):
    """`ours` takes `plain`'s weights and moving statistics, matched by
    path (the recomputing model holds them in other sub-models, in another
    order), and its dropout seed states, in order (their paths number
    them as they were created)."""
    mine = _by_path(ours)
    theirs = _by_path(plain)
    assert set(mine) == set(theirs)
    for path, variable in theirs.items():
        mine[path].assign(to_numpy(variable))
    for mine, reference in zip(_seeds(ours), _seeds(plain), strict=True):
        mine.assign(to_numpy(reference))


def _pair(decoder, family, **kwargs):
    keras.utils.set_random_seed(0)
    plain = DECODERS[decoder](ENCODERS[family](), **kwargs)
    keras.utils.set_random_seed(1)
    ours = DECODERS[decoder](ENCODERS[family](), recompute=True, **kwargs)
    _same_weights(ours, plain)
    return ours, plain


@pytest.fixture
def float64():
    """Build and run the test's models in float64 where the backend computes
    in float64 as it is (TensorFlow, PyTorch); JAX stays in float32 unless
    x64 was turned on before it started (a fresh process costs minutes per
    test here), so the JAX tests take encoders whose float32 comparison
    is well conditioned.

    Recomputation is exact: it runs the same operations on the same
    values. In float32, a gradient summed over many paths (the U-Net++'s
    dense skips reach the encoder's first BatchNorm dozens of ways) can
    differ between two orders of summation by more than 1e-5 of its scale;
    in float64 the orders agree to ~1e-12, so the comparison sees the
    arithmetic, not the rounding."""
    if BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            yield
            return
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def _assert_same_steps(ours, plain, steps=3, size=(33, 47)):
    """Outputs (1e-5), every gradient (1e-5 of each tensor's scale) and
    the non-trainable variables (1e-6) of `ours` are `plain`'s over
    `steps` SGD steps, both taking the plain model's update.

    A gradient that is zero in exact arithmetic (a BatchNorm's beta ahead
    of a linear convolution and another BatchNorm, as in MobileNetV2's
    blocks) has a "scale" of float64 noise; it must stay below 1e-9 of the
    largest gradient in both models instead."""
    # The weighted loss sums thousands of pixels: a larger step sends
    # MobileNetV2's BatchNorms to NaN by the second step under PyTorch,
    # where NaNs would compare equal.
    optimizer = keras.optimizers.SGD(1e-4)
    order = [w.path for w in plain.trainable_weights]
    ours_order = [w.path for w in ours.trainable_weights]
    for step in range(steps):
        images = _images(step, size, batch=2).astype(keras.config.floatx())
        reset_unseeded_dropout(step)
        y_plain, g_plain = value_and_grads(plain, images)
        reset_unseeded_dropout(step)
        y_ours, g_ours = value_and_grads(ours, images)
        assert all(np.all(np.isfinite(g)) for g in [y_plain, *g_plain])
        np.testing.assert_allclose(y_ours, y_plain, rtol=1e-5, atol=1e-6)
        mine = dict(zip(["input", *ours_order], g_ours, strict=True))
        largest = max(np.max(np.abs(g)) for g in g_plain)
        for path, reference in zip(["input", *order], g_plain, strict=True):
            scale = np.max(np.abs(reference))
            atol = 1e-5 * scale
            if scale < 1e-9 * largest:
                atol = 1e-9 * largest
            np.testing.assert_allclose(
                mine[path], reference, rtol=0, atol=atol, err_msg=path
            )
        plain_statistics = _by_path(plain)
        for variable in ours.non_trainable_weights:
            np.testing.assert_allclose(
                to_numpy(variable),
                to_numpy(plain_statistics[variable.path]),
                rtol=0,
                atol=1e-6,
                err_msg=variable.path,
            )
        assert_same_variables(_seeds(ours), _seeds(plain))
        optimizer.apply(
            [keras.ops.convert_to_tensor(g) for g in g_plain[1:]],
            plain.trainable_variables,
        )
        _same_weights(ours, plain)


@pytest.mark.slow
@IN_FLOAT64
@pytest.mark.parametrize(
    "decoder", [_tensorflow_only_but_unet(d) for d in DECODERS]
)
def test_recomputing_decoder_trains_as_the_plain_model(decoder, float64):
    # MobileNetV2's BatchNorms and the decoder's; dropout in the U-Net's
    # bottleneck and the FPN's merge.
    kwargs = {"dropout_rate": 0.5} if decoder != "unet_plus_plus" else {}
    ours, plain = _pair(decoder, "mobilenet_v2", **kwargs)
    wrappers = [
        layer.name for layer in ours.layers if isinstance(layer, Recompute)
    ]
    assert wrappers[:5] == [f"encoder_stage{k}_recompute" for k in range(1, 6)]
    assert len(wrappers) > 5
    _assert_same_steps(ours, plain)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family",
    [
        "hub_resnet",
        pytest.param(
            "densenet121",
            marks=pytest.mark.backends(
                "tensorflow",
                reason="our DenseNet's kernels are compared with the plain "
                "block on every backend in tests/layers; here on TensorFlow",
            ),
        ),
    ],
)
def test_recomputing_unet_trains_as_the_plain_model_on(family, float64):
    ours, plain = _pair("unet", family)
    _assert_same_steps(ours, plain, steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("recompute", [False, True])
def test_frozen_encoder_keeps_its_weights_and_statistics(recompute):
    keras.utils.set_random_seed(0)
    encoder = ENCODERS["mobilenet_v2"]()
    model = UNet(encoder=encoder, decoder_filters=8, recompute=recompute)
    encoder.trainable = False
    frozen = {w.path: to_numpy(w) for w in encoder.weights}
    assert not any(w.path in frozen for w in model.trainable_weights), (
        "the frozen encoder's weights are still trainable"
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = _images(0, (33, 47), batch=4)
    masks = np.random.default_rng(0).integers(0, 2, (4, 33, 47))
    model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    for w in encoder.weights:
        np.testing.assert_array_equal(to_numpy(w), frozen[w.path])
    decoder_bn = model.get_layer(
        "decoder_stage0_recompute" if recompute else "decoder_stage0_bn1"
    )
    assert decoder_bn.weights  # the decoder still trains


@pytest.mark.slow
@OTHER_BACKENDS_SKIP
def test_partly_frozen_encoder_recomputes_as_the_plain_model(float64):
    ours, plain = _pair("unet", "mobilenet_v2")
    for encoder_layer_name in ("Conv1", "bn_Conv1", "block_1_expand"):
        for model in (ours, plain):
            _layer(model, encoder_layer_name).trainable = False
    _assert_same_steps(ours, plain, steps=2)


def _layer(model, name):
    """The layer `name` anywhere in `model`'s sub-models."""
    for layer in model._flatten_layers(include_self=False):
        if layer.name == name:
            return layer
    raise KeyError(name)


@pytest.mark.slow
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize(
    "family",
    [
        "hub_resnet",
        pytest.param(
            "mobilenet_v2",
            marks=pytest.mark.backends(
                "tensorflow",
                reason="one encoder per backend: KerasHub's ResNet "
                "(module docstring)",
            ),
        ),
    ],
)
def test_decoder_reloads_from_a_keras_file(family, recompute, tmp_path):
    keras.utils.set_random_seed(0)
    model = UNet(
        encoder=ENCODERS[family](), decoder_filters=8, recompute=recompute
    )
    images = _images(3, (45, 51))
    reference = model.predict(images, verbose=0)
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), reference, rtol=1e-6, atol=1e-6
    )
    assert_same_variables(loaded.weights, model.weights)


def test_deep_supervision_gives_one_output_per_top_node():
    encoder = ENCODERS["hub_resnet"]()
    model = UNetPlusPlus(
        encoder, decoder_filters=8, classes=2, deep_supervision="outputs"
    )
    outputs = model.predict(_images(0, (33, 35)), verbose=0)
    # KerasHub's ResNet has levels P2..P5: the top row's nodes X(0, j)
    # exist for j = 2..5, one per level below the input.
    assert [o.shape for o in outputs] == [(1, 33, 35, 2)] * 4
    average = UNetPlusPlus(
        encoder, decoder_filters=8, classes=2, deep_supervision="average"
    )
    average.set_weights(model.get_weights())
    np.testing.assert_allclose(
        average.predict(_images(0, (33, 35)), verbose=0),
        np.mean(outputs, axis=0),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "build, error, match",
    [
        (
            lambda e: UNet(encoder=e, num_levels=3),
            ValueError,
            "`num_levels` is an argument of the paper's U-Net",
        ),
        (
            lambda e: UNet(decoder_filters=8),
            ValueError,
            "`decoder_filters` sets the widths of the decoder on an",
        ),
        (
            lambda e: UNet(encoder=e, decoder_filters=[8, 8]),
            ValueError,
            r"`decoder_filters` should be a positive int or a list of 5",
        ),
        (
            lambda e: UNetPlusPlus(e, deep_supervision="sum"),
            ValueError,
            "`deep_supervision` should be one of",
        ),
        (
            lambda e: FPN(e, fusion="max"),
            ValueError,
            "`fusion` should be one of",
        ),
        (
            lambda e: FPN(e, merge="max"),
            ValueError,
            "`merge` should be one of",
        ),
        (
            lambda e: FPN(e, input_shape=(64, 64, 1)),
            ValueError,
            "`input_shape` should have the encoder's 3 channels",
        ),
    ],
)
def test_decoder_errors_if_an_argument_is_wrong(build, error, match):
    with pytest.raises(error, match=match):
        build(ENCODERS["hub_resnet"]())


@pytest.mark.slow
@EXPORT_FORMATS
@pytest.mark.parametrize(
    "decoder", [_tensorflow_only_but_unet(d) for d in DECODERS]
)
def test_decoder_export_runs_without_keras_fusion(
    decoder, export_format, tmp_path
):
    # Two odd sizes through one export with `None` spatial sizes (one size
    # on JAX, which exports fixed sizes: `run_model_export_test`). The
    # U-Net++ is made of the U-Net's layers (upsampling, `AlignTo`,
    # `CropAndConcat`, convolutions): its SavedModel export stands for
    # the other formats too, whose converters see the same operations
    # (each of its exports takes ~40 s here).
    if decoder == "unet_plus_plus" and export_format != "tf_saved_model":
        pytest.skip("the U-Net's export covers the U-Net++'s layers")
    keras.utils.set_random_seed(0)
    model = DECODERS[decoder](ENCODERS["mobilenet_v2"](), classes=3)
    run_model_export_test(
        model,
        [_images(0, ODD_SIZES[0]), _images(1, ODD_SIZES[1])],
        tmp_path,
        export_format,
        # LiteRT and ONNX Runtime convolve in their own order.
        atol=1e-6 if export_format == "tf_saved_model" else 1e-5,
        fails_with=export_limit(export_format),
    )
