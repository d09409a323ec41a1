"""Dropout seed states in weights files, so that training resumes exactly.

Keras saves a layer's weights and moving statistics (`save_weights`, the
`.keras` file, `keras.callbacks.BackupAndRestore`) but not the states of
its `keras.random.SeedGenerator`s (keras-team/keras#19796): a model
restored from a backup draws its first epoch's dropout masks again, and
its training no longer equals the run that was never interrupted. The
keras_fusion layers that hold dropout (`MemoryEfficientDenseBlock`, and
`Recompute` for whatever block it wraps) store the seed states of every
layer inside them next to their own variables, under keys of their own,
and assign them back when loaded. A file without them (saved by an earlier
version) loads as before, the seed states as built.
"""

_PREFIX = "seed_state_"


def save_seed_states(layer, store):
    """The seed states of the layers `layer` holds, beside the variables
    `keras.layers.Layer.save_own_variables` stored."""
    for index, state in enumerate(_seed_states(layer)):
        store[f"{_PREFIX}{index}"] = state


def load_state(layer, store):
    """Assign what `save_own_variables` and `save_seed_states` stored
    back to `layer`: its own variables (checked as Keras checks them, the
    seed states aside) and the seed states, where the file has them."""
    own = layer._trainable_variables + layer._non_trainable_variables
    keys = list(store.keys())
    saved_states = [k for k in keys if k.startswith(_PREFIX)]
    states = _seed_states(layer)
    if len(keys) - len(saved_states) != len(own) or (
        saved_states and len(saved_states) != len(states)
    ):
        raise ValueError(
            f"Layer {layer.name!r} has {len(own)} variables and "
            f"{len(states)} seed states, but the weights file holds "
            f"{len(keys) - len(saved_states)} variables and "
            f"{len(saved_states)} seed states for it: the file was saved "
            "from a layer built with other arguments."
        )
    for index, variable in enumerate(own):
        variable.assign(store[f"{index}"])
    for index, state in enumerate(states if saved_states else []):
        state.assign(store[f"{_PREFIX}{index}"])


def _seed_states(layer):
    """The states of the seed generators `layer` and its sublayers track:
    its variables that are not weights, in Keras's order."""
    weights = {id(v) for v in layer.weights}
    return [v for v in layer.variables if id(v) not in weights]
