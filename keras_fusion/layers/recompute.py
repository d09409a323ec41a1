import copy
import inspect

import keras

from keras_fusion import backend
from keras_fusion.layers._seed_states import load_state
from keras_fusion.layers._seed_states import save_seed_states

_NOT_PASSED = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


@keras.saving.register_keras_serializable(package="keras_fusion")
class Recompute(keras.layers.Wrapper):
    """Exact activation recomputation for any Keras layer or model.

    In training, `Recompute(block)` keeps only its inputs, the block's
    weights and the non-trainable values the block starts the step with
    (BatchNorm moving statistics, dropout seed states) for the backward
    pass, and the backward pass runs the block's forward pass again from
    them; nothing inside the block is kept. Outside training it calls the
    block directly, so `predict`, `model.export()` and converters see the
    plain graph.

    The recomputation is exact: it runs the block statelessly
    (`keras.StatelessScope`) from the step's starting non-trainable values,
    so dropout draws the same masks and BatchNorm normalises with the same
    batch statistics, and the new non-trainable values are assigned once,
    after the forward pass. Outputs, every gradient and the moving
    statistics are those of the unwrapped block; losses the block adds
    with `add_loss` (activity regularizers) are recomputed and
    differentiated too. `keras.remat` and `keras.RematScope` around the
    same block update BatchNorm's moving statistics inside the recomputed
    function: a second time in the recomputation under TensorFlow and
    PyTorch, and under JAX they leak traced values; and dropout draws a new
    mask in the recomputation.

    The price is one more forward pass of the block per training step. A
    `MemoryEfficientDenseBlock(recompute=True)` recomputes less (only
    BatchNorm and ReLU, or those and the bottleneck convolution) and keeps
    the dense block's features once; use `Recompute` for blocks that have
    no such kernel, e.g. a U-Net level.

    Backends: TensorFlow (a custom gradient), JAX (`jax.checkpoint`) and
    PyTorch (`torch.utils.checkpoint`), each around the same stateless
    call.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_fusion import Recompute
    >>> level = keras.Sequential(
    ...     [
    ...         keras.Input((16, 16, 8)),
    ...         keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
    ...         keras.layers.BatchNormalization(),
    ...         keras.layers.ReLU(),
    ...         keras.layers.Dropout(0.1),
    ...     ]
    ... )
    >>> inputs = keras.Input((16, 16, 8))
    >>> model = keras.Model(inputs, Recompute(level)(inputs))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = np.random.rand(4, 16, 16, 8).astype("float32")
    >>> history = model.fit(x, x, verbose=0)
    >>> model.predict(x, verbose=0).shape
    (4, 16, 16, 8)

    Args:
        layer: the block: a `keras.layers.Layer` or a `keras.Model`
            (functional, Sequential or subclassed) whose `call` takes one
            inputs argument (a tensor, or a list, tuple or dict of tensors)
            and optionally `training`. Its variables must all be Keras
            variables it tracks, and any randomness must come from a
            `keras.random.SeedGenerator` it tracks (Keras's own layers do
            both). What breaks this and can be seen is refused with a
            `ValueError`: an unseeded `keras.random` call, an untracked
            variable read or assigned, and on TensorFlow a stateful random
            op (`tf.random.uniform`, a `tf.random.Generator`). State kept
            in Python (a counter on the layer, NumPy's random generator)
            cannot be seen: the recomputation would read it again,
            changed.
        **kwargs: base layer arguments (`name`, `trainable`, ...). The
            wrapper computes and casts nothing itself: the block casts its
            inputs and weights as it would unwrapped, under its own dtype
            policy (build it under `mixed_float16` for mixed precision).
            The wrapper's policy is the block's variable dtype, so that it
            reads the block's weights uncast; `dtype` may be left out or be
            the block's policy or variable dtype.

    Input shape:
        What the block accepts. Keras masks are not passed through: inputs
        that carry one are rejected.

    Output shape:
        What the block returns.

    Reference:
    - [Training Deep Nets with Sublinear Memory Cost](
        https://arxiv.org/abs/1604.06174) (Chen et al., 2016)
    - [Memory-Efficient Implementation of DenseNets](
        https://arxiv.org/abs/1707.06990) (Pleiss et al., 2017)
    """

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "`layer` should be a Keras layer or model (an instance of "
                "`keras.layers.Layer`). Received: "
                f"layer={layer!r} of type {type(layer).__name__}"
            )
        _check_call_signature(layer)
        _check_dtype(kwargs.pop("dtype", None), layer)
        # A policy whose compute dtype is the variable dtype, and no
        # autocasting: Keras then opens no autocast scope for the wrapper's
        # call (and clears an outer one), so the weights it hands to the
        # block are read uncast (float32 under mixed precision), and the
        # block casts them itself, as it does unwrapped.
        super().__init__(
            layer,
            dtype=layer.dtype_policy.variable_dtype,
            autocast=False,
            **kwargs,
        )
        # Input signatures whose eager training calls the TensorFlow kernel
        # has checked for state it cannot recompute.
        self._inspected_signatures = set()

    def build(self, input_shape=None):
        if not self.layer.built:
            # A symbolic call, as the functional API makes: Keras builds
            # the layer with its `build()` if it has one, and otherwise
            # traces its call, which builds the sublayers that create
            # weights in their first call.
            specs = keras.tree.map_shape_structure(
                lambda shape: keras.KerasTensor(shape, dtype=self.input_dtype),
                input_shape,
            )
            self.layer(specs)
        self.built = True

    def call(self, inputs, training=None):
        _check_no_masks(inputs)
        if not training:
            return self.layer(inputs, training=training)
        return self._recomputing_call(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def save_own_variables(self, store):
        # With the block's dropout seed states, which Keras leaves out (see
        # `_seed_states`): a training resumed from a backup draws on.
        super().save_own_variables(store)
        save_seed_states(self, store)

    def load_own_variables(self, store):
        load_state(self, store)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # `keras.layers.Wrapper.from_config` pops the block out of the
        # caller's dict, and deserializing a functional block empties its
        # config; this leaves the caller's config as it was.
        if "layer" not in config:
            raise ValueError(
                "`Recompute.from_config` needs the wrapped layer's config "
                "under 'layer', as `get_config` returns it. Received: a "
                f"config with keys {sorted(config)}"
            )
        config = copy.deepcopy(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        return cls(layer, **config)

    def _recomputing_call(self, inputs):
        flat_inputs = keras.tree.flatten(inputs)
        is_float = [_is_float(x) for x in flat_inputs]
        float_inputs = [
            x for x, f in zip(flat_inputs, is_float, strict=True) if f
        ]
        other_inputs = [
            x for x, f in zip(flat_inputs, is_float, strict=True) if not f
        ]
        trainable = list(self.layer.trainable_variables)
        state = list(self.layer.non_trainable_variables)
        num_variables = len(self.layer.variables)
        layout = {}

        def stateless_call(differentiable, constants):
            """The block's training call as a pure function of its inputs,
            weights and starting non-trainable values (see the kernels)."""
            floats = iter(differentiable[: len(float_inputs)])
            others = iter(constants[: len(other_inputs)])
            block_inputs = [
                next(floats) if f else next(others) for f in is_float
            ]
            weights = differentiable[len(float_inputs) :]
            state_values = constants[len(other_inputs) :]
            mapping = list(zip(trainable, weights, strict=True))
            mapping += list(zip(state, state_values, strict=True))
            with keras.StatelessScope(
                state_mapping=mapping, collect_losses=True
            ) as scope:
                handed_in = [scope.get_current_value(v) for v in trainable]
                outputs = self.layer(
                    keras.tree.pack_sequence_as(inputs, block_inputs),
                    training=True,
                )
            _check_state_updates(self.layer, scope, trainable, handed_in)
            if len(self.layer.variables) != num_variables:
                raise ValueError(_UNBUILT.format(name=self.layer.name))
            flat_outputs = keras.tree.flatten(outputs)
            # Python values only: a traced tensor kept here would leak.
            layout["outputs"] = keras.tree.map_structure(lambda _: 0, outputs)
            layout["num_outputs"] = len(flat_outputs)
            new_state = [
                _current_value(scope, variable, value)
                for variable, value in zip(state, state_values, strict=True)
            ]
            return flat_outputs + list(scope.losses), new_state

        # Copies of the starting non-trainable values: on TensorFlow and
        # PyTorch a variable's value is the variable itself, which the
        # assignment below changes before the backward pass reads them.
        results, new_state = backend.recomputing_call(
            stateless_call,
            float_inputs + [_read(v) for v in trainable],
            other_inputs + [keras.ops.copy(_read(v)) for v in state],
            self._inspected_signatures,
        )
        for variable, value in zip(state, new_state, strict=True):
            variable.assign(value)
        num_outputs = layout["num_outputs"]
        for loss in results[num_outputs:]:
            self.add_loss(loss)
        return keras.tree.pack_sequence_as(
            layout["outputs"], results[:num_outputs]
        )


_UNBUILT = (
    "The layer wrapped in `Recompute` ({name!r}) created variables during "
    "its training call. `Recompute` passes the values of the variables the "
    "layer has when it is built, so every variable must exist by then: "
    "give the layer a `build()` method that builds its sublayers, or call "
    "it once on data before wrapping it."
)


def _check_call_signature(layer):
    parameters = list(inspect.signature(layer.call).parameters.values())
    positional = [
        p
        for p in parameters
        if p.kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    ]
    required = [
        p.name
        for p in parameters[1:]
        if p.kind in _NOT_PASSED
        and p.default is inspect.Parameter.empty
        and p.name != "training"
    ]
    if not positional or required:
        raise ValueError(
            "`Recompute` calls the wrapped layer with one inputs argument "
            "(a tensor, or a list, tuple or dict of tensors) and "
            "`training`, but "
            f"{type(layer).__name__}.call{inspect.signature(layer.call)} "
            + (
                f"also requires {', '.join(map(repr, required))}"
                if required
                else "takes no inputs argument"
            )
            + ". Wrap a layer or a functional model that takes all its "
            "tensors in one (nested) inputs argument. Received: "
            f"layer={layer.name!r}"
        )


def _check_dtype(dtype, layer):
    if dtype is None:
        return
    name = keras.dtype_policies.get(dtype).name
    allowed = (layer.dtype_policy.name, layer.dtype_policy.variable_dtype)
    if name not in allowed:
        raise ValueError(
            "`Recompute` runs its block under the block's own dtype policy "
            f"({layer.dtype_policy.name!r}); set the policy on the block "
            "(e.g. build it under `keras.config.set_dtype_policy(...)`), "
            f"not on the wrapper. Received: dtype={name!r}"
        )


def _check_no_masks(inputs):
    for index, x in enumerate(keras.tree.flatten(inputs)):
        if getattr(x, "_keras_mask", None) is not None:
            raise ValueError(
                "`Recompute` does not pass Keras masks to the wrapped layer, "
                f"and input {index} carries one (from a layer such as "
                "`Embedding(mask_zero=True)` or `Masking`). Wrap the layers "
                "that consume the mask together with the layer that makes "
                "it, or drop the mask before `Recompute`."
            )


def _check_state_updates(layer, scope, trainable, handed_in):
    """Raise if the block assigned a trainable weight (`Recompute` would
    drop the update) or a variable it does not track (the recomputation
    would read another value)."""
    assigned = [
        v.path
        for v, value in zip(trainable, handed_in, strict=True)
        if scope.get_current_value(v) is not value
    ]
    if assigned:
        raise ValueError(
            f"The layer wrapped in `Recompute` ({layer.name!r}) assigns its "
            f"trainable weights {assigned} in its call: `Recompute` hands "
            "the layer the weights' values and assigns back only the "
            "non-trainable ones, so that update would be lost."
        )
    tracked = {id(v) for v in layer.variables}
    unknown = [key for key in scope.state_mapping if key not in tracked]
    if unknown:
        raise ValueError(
            f"The layer wrapped in `Recompute` ({layer.name!r}) assigns "
            f"{len(unknown)} variable(s) that it does not track, such as "
            "the global seed generator that `keras.random` functions use "
            "when called without a `seed`: the recomputation would draw "
            "other values than the forward pass. Give every random op a "
            "`keras.random.SeedGenerator` created in the layer."
        )


def _current_value(scope, variable, start_value):
    value = scope.get_current_value(variable)
    return start_value if value is None else value


def _is_float(x):
    return keras.backend.is_float_dtype(
        keras.backend.standardize_dtype(x.dtype)
    )


def _read(variable):
    """A variable's value (uncast: see `Recompute.__init__`) as a tensor
    that gradients reach the variable through."""
    return keras.ops.convert_to_tensor(variable.value)
