import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from keras_fusion.models import UNet
from keras_fusion.models import unet_level_sizes
from tests.backend_utils import to_numpy
from tests.layer_test_case import check_distinct_initial_kernels
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
