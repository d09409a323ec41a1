"""`Recompute`'s training call under TensorFlow: a custom gradient.

Why not `keras.remat` (which is `tf.recompute_grad` here, and which the
JAX and PyTorch path in `remat_recompute.py` uses): `tf.recompute_grad`
differentiates every output of the function, so the new non-trainable
values (integer seed states among them) would become outputs with
gradients, and it makes the recomputation wait for the incoming gradient by
adding a value computed from it to every input, a copy of each input. Here
the forward pass hands the new state out of the custom gradient on the side
(they need no gradient), and the recomputation waits for the incoming
gradients through control dependencies on identities of its arguments, which
copy nothing; different inputs also keep Grappler's common-subexpression
elimination from merging the recomputation with the forward pass.

The function must be a pure function of its arguments for the
recomputation to be exact. What TensorFlow can see of that is checked
where the function is traced (in the step's graph, or once per input
signature when the step runs eagerly): a stateful random op (`tf.random.*`,
`tf.random.Generator`), which would draw other values in the
recomputation, and an assignment to a variable the layer does not track
(Keras's own variables are assigned to the stateless scope instead). A
read of such a variable is refused by the custom gradient itself. What is
not a graph op (Python-side state, a counter on the layer) cannot be seen.

Only the arguments (the wrapped layer's inputs and trainable weights) and
the non-trainable values it started from are kept for the backward pass.
The gradients the backward pass returns wait for each other: the input
gradients are what starts the recomputation of the block before this one,
and without that wait TensorFlow's executor runs it beside this block's
last weight gradients, with both blocks' recomputed activations alive
(`benchmarks/results/unet_memory.md` measures the U-Net that showed it).
"""

import tensorflow as tf

# Random ops that draw from a state TensorFlow keeps (the op's own seed
# stream, a `tf.random.Generator`'s variable): run again, they draw anew.
_STATEFUL_RANDOM_PREFIXES = (
    "Random",
    "TruncatedNormal",
    "ParameterizedTruncatedNormal",
    "Multinomial",
    "StatefulUniform",
    "StatefulStandardNormal",
    "StatefulTruncatedNormal",
    "StatefulRandomBinomial",
    "Rng",
)
# Assignments to a variable: Keras variables are assigned to the stateless
# scope under `Recompute`, so these are of variables it does not track.
_ASSIGNMENT_PREFIXES = (
    "Assign",
    "ResourceScatter",
    "ResourceApply",
    "ResourceSparseApply",
    "ResourceStridedSliceAssign",
)


def recomputing_call(fn, differentiable, constants, inspected):
    """Run `fn` so that its backward pass recomputes it.

    Args:
        fn: `fn(differentiable, constants) -> (outputs, new_state)`, a pure
            function: `outputs` a list of tensors (the wrapped layer's
            flattened outputs and losses), `new_state` a list of tensors.
        differentiable: the floating-point tensors that gradients flow to.
        constants: other tensors `fn` reads (integer inputs, the starting
            non-trainable values); no gradient.
        inspected: a set, kept by the caller, of the input signatures whose
            eager calls have been checked for state `fn` cannot recompute
            (see the module docstring).

    Returns:
        `(outputs, new_state)`; `new_state` carries no gradient.

    Raises:
        ValueError: if `fn` draws from a stateful random op or assigns a
            variable.
    """
    differentiable = [tf.convert_to_tensor(x) for x in differentiable]
    constants = [tf.convert_to_tensor(x) for x in constants]
    if tf.executing_eagerly():
        _inspect_eager(fn, differentiable, constants, inspected)
    new_state = []

    @tf.custom_gradient
    def forward(*args):
        if tf.executing_eagerly():
            outputs, state = fn(list(args), constants)
        else:
            graph = tf.compat.v1.get_default_graph()
            first = len(graph.get_operations())
            # A scope of its own: a tf.distribute strategy traces its
            # replicas in threads, into this graph at the same time, and
            # the name scope is per thread.
            with tf.name_scope("recomputed_call") as scope:
                outputs, state = fn(list(args), constants)
            _check_pure(
                [
                    op
                    for op in graph.get_operations()[first:]
                    if op.name.startswith(scope)
                ]
            )
        new_state.extend(tf.stop_gradient(s) for s in state)

        def backward(*d_outputs, variables=None):
            if variables:
                raise ValueError(
                    "The layer wrapped in `Recompute` reads TensorFlow "
                    "variables that it does not track as Keras variables: "
                    f"{[v.name for v in variables]}. Create them with "
                    "`add_weight` in the layer (or a sublayer) so that "
                    "`Recompute` can pass their values."
                )
            present = [d for d in d_outputs if d is not None]
            with tf.control_dependencies(present):
                again = [tf.identity(a) for a in args]
            with tf.GradientTape() as tape:
                tape.watch(again)
                recomputed, _ = fn(again, constants)
            targets, output_gradients = [], []
            for y, d in zip(recomputed, d_outputs, strict=True):
                if d is not None and y.dtype.is_floating:
                    targets.append(y)
                    output_gradients.append(d)
            grads = tape.gradient(
                targets,
                again,
                output_gradients=output_gradients,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            # Every gradient waits for all of them: the input gradients
            # start the recomputation of the block before this one, which
            # must not overlap this block's remaining weight gradients
            # (they hold its recomputed activations).
            with tf.control_dependencies(grads):
                return [tf.identity(g) for g in grads]

        return outputs, backward

    outputs = forward(*differentiable)
    return list(outputs), new_state


def _inspect_eager(fn, differentiable, constants, inspected):
    """Trace `fn` once per input signature, to check the ops it runs."""
    specs = [
        [tf.TensorSpec(x.shape, x.dtype) for x in group]
        for group in (differentiable, constants)
    ]
    signature = repr(specs)
    if signature in inspected:
        return
    traced = tf.function(lambda d, c: fn(d, c), autograph=False)
    _check_pure(traced.get_concrete_function(*specs).graph.get_operations())
    inspected.add(signature)


def _check_pure(operations):
    """Raise if `operations` hold state that a recomputation cannot read
    again as the forward pass did."""
    random = [
        op.name
        for op in operations
        if op.type.startswith(_STATEFUL_RANDOM_PREFIXES)
        and op.op_def.is_stateful
    ]
    if random:
        raise ValueError(
            "The layer wrapped in `Recompute` draws from stateful "
            f"TensorFlow random ops ({', '.join(random)}), such as "
            "`tf.random.uniform` or a `tf.random.Generator`: the backward "
            "pass recomputes the layer, and they would draw other values "
            "there than in the forward pass, so the gradients would not be "
            "those of the forward pass. Draw with `keras.random` functions "
            "and a `keras.random.SeedGenerator` created in the layer, as "
            "Keras's own layers do (e.g. `Dropout(rate, seed=...)`)."
        )
    assigned = [
        op.name
        for op in operations
        if op.type.startswith(_ASSIGNMENT_PREFIXES) and op.op_def.is_stateful
    ]
    if assigned:
        raise ValueError(
            "The layer wrapped in `Recompute` assigns TensorFlow variables "
            f"that it does not track as Keras variables ({', '.join(assigned)}"
            "): the recomputation would assign them a second time, and "
            "read other values than the forward pass. Create them with "
            "`add_weight` in the layer (or a sublayer), so that `Recompute` "
            "hands them in and assigns them once."
        )
