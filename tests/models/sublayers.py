"""Finding the BatchNormalizations of a model through public attributes."""

import keras


def batch_normalizations(model):
    """Every `keras.layers.BatchNormalization` of `model`.

    Walks `model.layers` and, from each layer, its public attributes (names
    without a leading underscore, lists and tuples included) down to the
    sublayers of keras_fusion's blocks, without Keras's private layer
    tracking. Each BatchNormalization owns one moving mean, so the count is
    checked against the model's moving means: a sublayer out of reach fails
    here instead of going unchecked.
    """
    found, seen = [], set()
    stack = list(model.layers)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, (list, tuple)):
            stack.extend(value)
            continue
        if isinstance(value, keras.layers.BatchNormalization):
            found.append(value)
        if isinstance(value, keras.layers.Layer) or type(
            value
        ).__module__.startswith("keras_fusion."):
            stack.extend(
                attribute
                for name, attribute in _attributes(value)
                if not name.startswith("_")
            )
    moving_means = [w for w in model.weights if w.path.endswith("moving_mean")]
    assert len(found) == len(moving_means), (
        f"found {len(found)} BatchNormalizations for {len(moving_means)} "
        "moving means"
    )
    return found


def _attributes(value):
    """`value`'s attributes as `(name, value)` pairs. Under PyTorch a Layer
    is a `torch.nn.Module`, which keeps the attributes that hold modules
    (sublayers) in its `_modules` dict instead of the instance's, and
    hands them out through `__getattr__`."""
    yield from vars(value).items()
    yield from getattr(value, "_modules", {}).items()
