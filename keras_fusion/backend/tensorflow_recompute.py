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

Only the arguments (the wrapped layer's inputs and trainable weights) and
the non-trainable values it started from are kept for the backward pass.
The gradients the backward pass returns wait for each other: the input
gradients are what starts the recomputation of the block before this one,
and without that wait TensorFlow's executor runs it beside this block's
last weight gradients, with both blocks' recomputed activations alive
(`benchmarks/results/unet_memory.md` measures the U-Net that showed it).
"""

import tensorflow as tf


def recomputing_call(fn, differentiable, constants):
    """Run `fn` so that its backward pass recomputes it.

    Args:
        fn: `fn(differentiable, constants) -> (outputs, new_state)`, a pure
            function: `outputs` a list of tensors (the wrapped layer's
            flattened outputs and losses), `new_state` a list of tensors.
        differentiable: the floating-point tensors that gradients flow to.
        constants: other tensors `fn` reads (integer inputs, the starting
            non-trainable values); no gradient.

    Returns:
        `(outputs, new_state)`; `new_state` carries no gradient.
    """
    differentiable = [tf.convert_to_tensor(x) for x in differentiable]
    new_state = []

    @tf.custom_gradient
    def forward(*args):
        outputs, state = fn(list(args), constants)
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
