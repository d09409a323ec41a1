"""A model's level as a sub-model wrapped in `Recompute`, shared by the
builders that take `recompute` (`UNet`, `FCDenseNet`)."""

import keras

from keras_fusion._internal.checks import spatial_axes
from keras_fusion.layers.recompute import Recompute


def recomputed_level(build, inputs, name, data_format):
    """`build(level_inputs)`'s layers in a functional sub-model named
    `name`, for any spatial size, applied to `inputs` through a
    `Recompute` layer named `{name}_recompute`.

    Args:
        build: a function of the level's symbolic inputs (one tensor or a
            list, as `inputs`) that applies the level's layers.
        inputs: the level's inputs in the model.
        name: the sub-model's name.
        data_format: the inputs' data format.
    """
    level_inputs = keras.tree.map_structure(
        lambda x: keras.Input(
            shape=_any_spatial_size(x.shape, data_format), dtype=x.dtype
        ),
        inputs,
    )
    sub_model = keras.Model(level_inputs, build(level_inputs), name=name)
    return Recompute(sub_model, name=f"{name}_recompute")(inputs)


def _any_spatial_size(shape, data_format):
    """A feature map's shape without the batch axis, spatial sizes `None`."""
    shape = list(shape[1:])
    for axis in spatial_axes(len(shape) + 1, data_format):
        shape[axis - 1] = None
    return tuple(shape)
