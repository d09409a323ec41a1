import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from keras_fusion import Recompute
from keras_fusion.models import UNet
from keras_fusion.models import unet_level_sizes
from tests.backend_utils import assert_same_training_steps
from tests.backend_utils import assert_same_variables
from tests.backend_utils import fit_losses
from tests.backend_utils import hold_the_same_variables
from tests.backend_utils import to_numpy
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import check_distinct_initial_kernels
from tests.layer_test_case import export_limit
from tests.layer_test_case import run_model_export_test
from tests.layer_test_case import skip_unless_channels_first_convolution_runs

# Ronneberger et al. (2015), Fig. 1: the spatial size after each pair of
# valid 3x3 convolutions, and the size each skip connection is cropped to.
PAPER_ENCODER = [
    (572, 570, 568),
    (284, 282, 280),
    (140, 138, 136),
    (68, 66, 64),
]
PAPER_BOTTLENECK = (32, 30, 28)
PAPER_DECODER = [
    (56, 54, 52),
    (104, 102, 100),
    (200, 198, 196),
    (392, 390, 388),
]
PAPER_CROPS = [(64, 56), (136, 104), (280, 200), (568, 392)]


def _spatial(model, name):
    return tuple(model.get_layer(name).output.shape[1:3])


def test_unet_has_the_papers_sizes_at_every_level():
    model = UNet(input_shape=(572, 572, 1), classes=2, filters=2)
    for level, (size_in, size_mid, size_out) in enumerate(PAPER_ENCODER):
        if level:
            assert _spatial(model, f"encoder{level - 1}_pool") == (size_in,) * 2
        assert _spatial(model, f"encoder{level}_conv1") == (size_mid,) * 2
        assert _spatial(model, f"encoder{level}_conv2") == (size_out,) * 2
    assert _spatial(model, "encoder3_pool") == (PAPER_BOTTLENECK[0],) * 2
    assert _spatial(model, "bottleneck_conv1") == (PAPER_BOTTLENECK[1],) * 2
    assert _spatial(model, "bottleneck_conv2") == (PAPER_BOTTLENECK[2],) * 2
    for i, level in enumerate(reversed(range(4))):
        up, mid, out = PAPER_DECODER[i]
        crop_from, crop_to = PAPER_CROPS[i]
        assert _spatial(model, f"encoder{level}_conv2") == (crop_from,) * 2
        assert _spatial(model, f"decoder{level}_upconv") == (up,) * 2
        assert _spatial(model, f"decoder{level}_crop_and_concat") == (
            (crop_to,) * 2
        )
        assert _spatial(model, f"decoder{level}_conv1") == (mid,) * 2
        assert _spatial(model, f"decoder{level}_conv2") == (out,) * 2
    assert model.output_shape == (None, 388, 388, 2)


def test_unet_skip_concatenates_encoder_then_decoder_channels():
    model = UNet(input_shape=(572, 572, 1), filters=2)
    concat = model.get_layer("decoder0_crop_and_concat")
    assert isinstance(concat, CropAndConcat)
    assert concat.output.shape[-1] == 2 + 2


def test_unet_runs_on_a_572_image():
    model = UNet(input_shape=(572, 572, 1), classes=2, filters=2)
    image = np.random.default_rng(0).random((1, 572, 572, 1), "float32")
    assert tuple(model(image).shape) == (1, 388, 388, 2)


def test_unet_with_unknown_sizes_matches_static_one():
    static = UNet(input_shape=(188, 188, 1), filters=2)
    dynamic = UNet(input_shape=(None, None, 1), filters=2)
    dynamic.set_weights(static.get_weights())
    image = np.random.default_rng(1).random((2, 188, 188, 1), "float32")
    np.testing.assert_allclose(
        to_numpy(dynamic(image)), to_numpy(static(image)), atol=1e-6
    )
    assert dynamic(image).shape == (2, 4, 4, 2)


def test_unet_default_input_shape_follows_data_format():
    last = UNet(filters=1)
    first = UNet(filters=1, data_format="channels_first")
    assert last.input_shape == (None, 572, 572, 1)
    assert first.input_shape == (None, 1, 572, 572)
    assert last.output_shape == (None, 388, 388, 2)
    assert first.output_shape == (None, 2, 388, 388)


def test_unet_accepts_numpy_numbers():
    model = UNet(
        input_shape=(108, 108, 1),
        classes=np.int64(3),
        num_levels=np.int64(2),
        filters=np.int32(2),
    )
    reference = UNet(
        input_shape=(108, 108, 1), classes=3, num_levels=2, filters=2
    )
    assert model.output_shape == reference.output_shape == (None, 68, 68, 3)
    assert model.count_params() == reference.count_params()


def test_fresh_unet_starts_with_distinct_kernels():
    keras.utils.set_random_seed(0)
    check_distinct_initial_kernels(UNet(input_shape=(188, 188, 1), filters=2))


def test_unet_channels_first_matches_channels_last():
    skip_unless_channels_first_convolution_runs()
    last = UNet(input_shape=(188, 188, 1), filters=2)
    first = UNet(
        input_shape=(1, 188, 188), filters=2, data_format="channels_first"
    )
    first.set_weights(last.get_weights())
    image = np.random.default_rng(2).random((1, 188, 188, 1), "float32")
    expected = to_numpy(last(image))
    actual = to_numpy(first(np.transpose(image, (0, 3, 1, 2))))
    np.testing.assert_allclose(
        np.transpose(actual, (0, 2, 3, 1)), expected, atol=1e-5
    )


def test_unet_level_sizes_matches_the_paper():
    sizes = unet_level_sizes(572, num_levels=4)
    assert sizes["encoder"] == [(a, c) for a, _, c in PAPER_ENCODER]
    assert sizes["bottleneck"] == (PAPER_BOTTLENECK[0], PAPER_BOTTLENECK[2])
    assert sizes["decoder"] == [(a, c) for a, _, c in PAPER_DECODER]
    assert sizes["crop"] == PAPER_CROPS
    assert sizes["output"] == 388


def test_unet_errors_if_input_is_too_small():
    with pytest.raises(ValueError, match="too small.*num_levels=4.*size of 60"):
        UNet(input_shape=(60, 60, 1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": 0}, "`classes` should be a positive int.*0"),
        ({"num_levels": True}, "`num_levels` should be a positive int.*True"),
        ({"filters": 2.0}, "`filters` should be a positive int.*2.0"),
    ],
)
def test_unet_errors_if_number_is_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_unet_errors_if_input_shape_has_wrong_length():
    with pytest.raises(
        ValueError, match="`input_shape` should have 3.*572, 572"
    ):
        UNet(input_shape=(572, 572))


def test_unet_trains_one_step():
    model = UNet(input_shape=(108, 108, 1), filters=2, num_levels=2)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(3)
    images = rng.random((2, 108, 108, 1), "float32")
    out = model.output_shape[1]
    masks = rng.integers(0, 2, (2, out, out))
    history = model.fit(images, masks, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_unet_classifier_activation_applies_to_the_output():
    logits = UNet(input_shape=(108, 108, 1), filters=2, num_levels=2)
    probabilities = UNet(
        input_shape=(108, 108, 1),
        filters=2,
        num_levels=2,
        classifier_activation="softmax",
    )
    probabilities.set_weights(logits.get_weights())
    image = np.random.default_rng(4).random((1, 108, 108, 1), "float32")
    np.testing.assert_allclose(
        to_numpy(probabilities(image)),
        to_numpy(keras.ops.softmax(logits(image), axis=-1)),
        atol=1e-6,
    )


def test_unet_input_tensor_keeps_the_layers_before_it():
    inputs = keras.Input((188, 188, 1))
    x = keras.layers.Rescaling(1 / 255.0, name="rescaling")(inputs)
    model = UNet(input_tensor=x, filters=2)
    assert model.inputs[0] is inputs
    assert isinstance(model.get_layer("rescaling"), keras.layers.Rescaling)
    assert model.output_shape == (None, 4, 4, 2)


def test_unet_checks_the_size_of_its_input_tensor():
    with pytest.raises(ValueError, match="too small.*size of 60"):
        UNet(input_tensor=keras.Input((60, 60, 1)))


# A two-level U-Net small enough for a training step in seconds: 68x68
# inputs give 28x28 outputs (`unet_level_sizes(68, 2)`).
SMALL = {"input_shape": (68, 68, 1), "filters": 2, "num_levels": 2}
SMALL_OUTPUT = 28
# The prefixes of the two-level U-Net's convolution pairs, in graph order.
SMALL_LEVELS = ["encoder0", "encoder1", "bottleneck", "decoder1", "decoder0"]


def _images(seed, batch=2, shape=SMALL["input_shape"]):
    return np.random.default_rng(seed).random((batch, *shape), "float32")


def _fit_one_step(model, seed=0):
    model.compile(optimizer="sgd", loss="mse")
    images = _images(seed, shape=model.input_shape[1:])
    targets = _images(seed + 1, shape=model.output_shape[1:])
    history = model.fit(images, targets, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_unet_batch_norm_follows_each_convolution_with_bn_and_relu():
    model = UNet(**SMALL, batch_norm=True)
    for prefix in SMALL_LEVELS:
        for k in (1, 2):
            conv = model.get_layer(f"{prefix}_conv{k}")
            bn = model.get_layer(f"{prefix}_bn{k}")
            relu = model.get_layer(f"{prefix}_relu{k}")
            assert not conv.use_bias
            assert conv.activation is keras.activations.linear
            assert isinstance(bn, keras.layers.BatchNormalization)
            assert bn.axis == 3
            assert isinstance(relu, keras.layers.ReLU)
            assert bn.input is conv.output
            assert relu.input is bn.output
    num_convs = 2 * len(SMALL_LEVELS)
    assert len(_layers_of_type(model, keras.layers.BatchNormalization)) == (
        num_convs
    )
    assert model.output_shape == (None, SMALL_OUTPUT, SMALL_OUTPUT, 2)
    _fit_one_step(model)


def test_unet_batch_norm_takes_the_librarys_batch_norm_settings():
    # The library's defaults (keras.applications' DenseNet values, as in
    # every other builder), not Keras's layer defaults (0.99, 1e-3).
    default = UNet(**SMALL, batch_norm=True)
    tuned = UNet(
        **SMALL,
        batch_norm=True,
        batch_norm_momentum=0.9,
        batch_norm_epsilon=1e-4,
    )
    for model, momentum, epsilon in (
        (default, 0.99, 1.001e-5),
        (tuned, 0.9, 1e-4),
    ):
        batch_norms = _layers_of_type(model, keras.layers.BatchNormalization)
        assert len(batch_norms) == 2 * len(SMALL_LEVELS)
        for bn in batch_norms:
            assert (bn.momentum, bn.epsilon) == (momentum, epsilon)
            assert bn.synchronized is False


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"batch_norm_momentum": 1.5},
            ValueError,
            r"`batch_norm_momentum` should be a float in \[0, 1\]",
        ),
        (
            {"batch_norm_epsilon": 0.0},
            ValueError,
            "`batch_norm_epsilon` should be a positive, finite float",
        ),
        (
            {"synchronized": "yes"},
            TypeError,
            "`synchronized` should be a bool.*synchronized='yes'",
        ),
    ],
)
def test_unet_errors_if_a_batch_norm_setting_is_invalid(kwargs, error, message):
    with pytest.raises(error, match=message):
        UNet(**SMALL, batch_norm=True, **kwargs)


def test_unet_without_batch_norm_keeps_the_papers_convolutions():
    model = UNet(**SMALL)
    assert not _layers_of_type(model, keras.layers.BatchNormalization)
    assert not _layers_of_type(model, keras.layers.ReLU)
    for prefix in SMALL_LEVELS:
        for k in (1, 2):
            conv = model.get_layer(f"{prefix}_conv{k}")
            assert conv.use_bias
            assert conv.activation is keras.activations.relu


def test_unet_batch_norm_normalizes_the_channel_axis_of_channels_first():
    model = UNet(
        input_shape=(1, 68, 68),
        filters=2,
        num_levels=2,
        batch_norm=True,
        data_format="channels_first",
    )
    assert model.get_layer("encoder0_bn1").axis == 1
    assert model.get_layer("decoder0_bn2").axis == 1


def _layers_of_type(model, layer_type):
    return [layer for layer in model.layers if isinstance(layer, layer_type)]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_unet_dropout_ends_the_contracting_path(batch_norm):
    model = UNet(**SMALL, batch_norm=batch_norm, dropout_rate=0.25)
    dropout = model.get_layer("bottleneck_dropout")
    assert isinstance(dropout, keras.layers.Dropout)
    assert dropout.rate == 0.25
    last = "bottleneck_relu2" if batch_norm else "bottleneck_conv2"
    assert dropout.input is model.get_layer(last).output
    assert model.get_layer("decoder1_upconv").input is dropout.output
    assert _layers_of_type(model, keras.layers.Dropout) == [dropout]


def test_unet_without_dropout_has_no_dropout_layer():
    model = UNet(**SMALL, dropout_rate=0.0)
    assert not _layers_of_type(model, keras.layers.Dropout)


def test_unet_accepts_a_numpy_dropout_rate():
    model = UNet(**SMALL, dropout_rate=np.float32(0.5))
    rate = model.get_layer("bottleneck_dropout").rate
    assert type(rate) is float and rate == 0.5


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"dropout_rate": -0.1},
            ValueError,
            r"`dropout_rate` should be a float in \[0, 1\).*dropout_rate=-0.1",
        ),
        ({"dropout_rate": 1.0}, ValueError, r"\[0, 1\).*dropout_rate=1.0"),
        ({"dropout_rate": "a"}, ValueError, "dropout_rate='a'"),
        ({"dropout_rate": True}, ValueError, "dropout_rate=True"),
        (
            {"batch_norm": 1},
            TypeError,
            "`batch_norm` should be a bool.*batch_norm=1",
        ),
        (
            {"batch_norm": "yes"},
            TypeError,
            "`batch_norm` should be a bool.*batch_norm='yes'",
        ),
        (
            {"recompute": "full"},
            TypeError,
            "`recompute` should be a bool.*recompute='full'",
        ),
        ({"recompute": 0}, TypeError, "`recompute` should be a bool"),
    ],
)
def test_unet_errors_if_an_option_is_invalid(kwargs, error, message):
    with pytest.raises(error, match=message):
        UNet(**SMALL, **kwargs)


def test_recomputing_unet_wraps_each_level_in_a_sub_model():
    plain = UNet(**SMALL, batch_norm=True, dropout_rate=0.5)
    model = UNet(**SMALL, batch_norm=True, dropout_rate=0.5, recompute=True)
    assert [layer.name for layer in model.layers[1:]] == [
        "encoder0_recompute",
        "encoder0_pool",
        "encoder1_recompute",
        "encoder1_pool",
        "bottleneck_recompute",
        "decoder1_recompute",
        "decoder0_recompute",
        "output_conv",
    ]
    names_in_plain = [layer.name for layer in plain.layers]
    for prefix in SMALL_LEVELS:
        wrapper = model.get_layer(f"{prefix}_recompute")
        assert isinstance(wrapper, Recompute)
        level = wrapper.layer
        assert isinstance(level, keras.Model)
        assert level.name == prefix
        names = [
            layer.name
            for layer in level.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ]
        assert names == [
            name
            for name in names_in_plain
            if name.startswith(f"{prefix}_") and not name.endswith("_pool")
        ]
        # Any spatial size: the same sub-model serves every input size.
        for x in level.inputs:
            assert tuple(x.shape[1:3]) == (None, None)
    decoder = model.get_layer("decoder0_recompute").layer
    assert [tuple(x.shape) for x in decoder.inputs] == [
        (None, None, None, 2),
        (None, None, None, 4),
    ]
    assert model.output_shape == plain.output_shape


def _recomputing_and_plain(**kwargs):
    """A recomputing U-Net and a plain one with the same arguments, the
    recomputing one holding the plain one's variables: weights, moving
    statistics and the dropout's seed state."""
    keras.utils.set_random_seed(0)
    plain = UNet(**kwargs)
    keras.utils.set_random_seed(1)
    ours = UNet(**kwargs, recompute=True)
    hold_the_same_variables(ours, plain)
    return ours, plain


def test_recomputing_unet_predicts_as_the_plain_model():
    ours, plain = _recomputing_and_plain(
        **SMALL, batch_norm=True, dropout_rate=0.5
    )
    images = _images(5)
    np.testing.assert_array_equal(
        ours.predict(images, verbose=0), plain.predict(images, verbose=0)
    )


def test_recomputing_unet_trains_as_the_plain_model():
    # Outputs (dropout masks included), gradients and moving statistics are
    # the plain model's step after step. Both models take the plain model's
    # SGD update, so that their weights stay equal and each step compares
    # the same function.
    ours, plain = _recomputing_and_plain(
        **SMALL, batch_norm=True, dropout_rate=0.5
    )
    non_trainable = [v.path for v in plain.non_trainable_variables]
    assert any("seed" in path for path in non_trainable)
    batches = [_images(6 + step) for step in range(3)]
    assert_same_training_steps(ours, plain, batches, learning_rate=1e-3)


def test_recomputing_unet_fits_as_the_plain_model():
    # `fit` runs the compiled training step (tf.function, jax.jit).
    ours, plain = _recomputing_and_plain(
        **SMALL, batch_norm=True, dropout_rate=0.5
    )
    images = _images(7, batch=4)
    masks = np.random.default_rng(7).integers(
        0, 2, (4, SMALL_OUTPUT, SMALL_OUTPUT)
    )
    for model in (plain, ours):
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    histories = fit_losses([plain, ours], images, masks, batch_size=2)
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-6)
    assert_same_variables(ours.variables, plain.variables)


def _dynamic_recomputing_unet(recompute=True):
    keras.utils.set_random_seed(0)
    return UNet(
        input_shape=(None, None, 1),
        filters=2,
        num_levels=2,
        batch_norm=True,
        dropout_rate=0.5,
        recompute=recompute,
    )


def test_recomputing_unet_reloads_from_a_keras_file(tmp_path):
    model = _dynamic_recomputing_unet()
    images = _images(8)
    reference = model.predict(images, verbose=0)
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("decoder0_recompute"), Recompute)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), reference)


@EXPORT_FORMATS
@pytest.mark.parametrize("recompute", [False, True])
def test_unet_export_runs_without_keras_fusion(
    export_format, recompute, tmp_path
):
    # `recompute=True` wraps each level in `Recompute`. Two input sizes
    # through one export with `None` spatial sizes.
    model = _dynamic_recomputing_unet(recompute)
    run_model_export_test(
        model,
        [_images(9), _images(10, batch=1, shape=(76, 84, 1))],
        tmp_path,
        export_format,
        # LiteRT and ONNX Runtime convolve in their own order.
        atol=1e-6 if export_format == "tf_saved_model" else 1e-5,
        fails_with=export_limit(export_format, max_pooling=True),
    )


def test_recomputing_unet_channels_first_matches_channels_last():
    skip_unless_channels_first_convolution_runs()
    kwargs = {
        "filters": 2,
        "num_levels": 2,
        "batch_norm": True,
        "recompute": True,
    }
    last = UNet(input_shape=(68, 68, 1), **kwargs)
    first = UNet(
        input_shape=(1, 68, 68), data_format="channels_first", **kwargs
    )
    decoder = first.get_layer("decoder0_recompute").layer
    assert [tuple(x.shape) for x in decoder.inputs] == [
        (None, 2, None, None),
        (None, 4, None, None),
    ]
    first.set_weights(last.get_weights())
    images = _images(10)
    expected = to_numpy(last(images))
    actual = to_numpy(first(np.transpose(images, (0, 3, 1, 2))))
    np.testing.assert_allclose(
        np.transpose(actual, (0, 2, 3, 1)), expected, atol=1e-5
    )
    assert first.output_shape == (None, 2, SMALL_OUTPUT, SMALL_OUTPUT)
    _fit_one_step(first)
