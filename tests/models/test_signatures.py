"""The builders agree on their arguments' order (README, "Public names and
arguments"): a user who learnt one builder's order knows every other's."""

import inspect

import keras
import pytest

from keras_fusion import models

# The one order, as the README writes it.
ORDER = (
    "blocks",
    "depth",
    "growth_rate",
    "compression_ratio",
    "bottleneck",
    "num_levels",
    "filters",
    "encoder",
    "decoder_filters",
    "segmentation_filters",
    "fusion",
    "merge",
    "deep_supervision",
    "batch_norm",
    "include_top",
    "weights",
    "input_tensor",
    "input_shape",
    "pooling",
    "classes",
    "classifier_activation",
    "recompute",
    "dropout_rate",
    "batch_norm_momentum",
    "batch_norm_epsilon",
    "data_format",
    "synchronized",
    "name",
)
BUILDERS = (
    "DenseNet",
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "DenseNet264",
    "DenseNetBC",
    "UNet",
    "UNetPlusPlus",
    "FPN",
    "FCDenseNet",
    "FCDenseNet56",
    "FCDenseNet67",
    "FCDenseNet103",
)


def _expected_order(builder):
    if builder == "DenseNet":
        # keras.applications.DenseNet's positional arguments, then ours.
        order = [n for n in ORDER if n != "growth_rate"]
        order.insert(order.index("classifier_activation") + 1, "growth_rate")
        return order
    return list(ORDER)


@pytest.mark.parametrize("builder", BUILDERS)
def test_builder_takes_its_arguments_in_the_one_order(builder):
    names = list(inspect.signature(getattr(models, builder)).parameters)
    assert set(names) <= set(ORDER), set(names) - set(ORDER)
    expected = [n for n in _expected_order(builder) if n in names]
    assert names == expected


@pytest.mark.parametrize(
    "builder", ["DenseNet121", "DenseNet169", "DenseNet201"]
)
def test_densenet_positional_arguments_are_keras_applications(builder):
    theirs = [
        name
        for name in inspect.signature(
            getattr(keras.applications, builder)
        ).parameters
        if name != "name"
    ]
    assert (
        list(inspect.signature(getattr(models, builder)).parameters)[
            : len(theirs)
        ]
        == theirs
    )
    # DenseNet takes `blocks` first, then the same arguments.
    assert (
        list(inspect.signature(models.DenseNet).parameters)[1 : len(theirs) + 1]
        == theirs
    )
