"""What a layer's backward pass keeps from its forward pass, counted
exactly on the backends that can list it: JAX (the residuals of
`jax.ad_checkpoint.print_saved_residuals`) and PyTorch (the tensors
autograd saves, through `torch.autograd.graph.saved_tensors_hooks`, and
the inputs `torch.utils.checkpoint` keeps for its recomputation). This is
what exact recomputation leaves in memory where no allocator statistics are
read. Used by `benchmarks.dense_block_residuals`,
`benchmarks.dense_block_saved_tensors` and the layer tests."""

import contextlib
import io
import math
import re

_RESIDUAL = re.compile(r"^([a-z]+?)(\d*)\[([\d,]*)\]\s+(.*)$")


def saved_residuals(layer, inputs, training=True):
    """What the backward pass of `layer` keeps from its forward pass.

    Differentiates `sum(layer(inputs))` with respect to the layer's
    trainable weights and its inputs (through `layer.stateless_call`, so
    the layer's variables do not change) and returns one `(dtype, shape,
    nbytes, source)` tuple per array kept; `source` starts with "from the
    argument" for the function's arguments (the inputs and the layer's
    variables), which exist anyway. The sum keeps the loss itself from
    adding anything.

    - JAX: what `jax.ad_checkpoint.print_saved_residuals` lists.
    - PyTorch: every storage that autograd saves for the backward pass
      (`torch.autograd.graph.saved_tensors_hooks`; counted once however
      many ops save it or views of it: a view keeps its whole storage),
      the tensors `torch.utils.checkpoint` keeps as its inputs to run the
      function again (non-reentrant checkpointing holds them by
      reference, not through the hooks, which inside a checkpoint pack
      placeholders instead) and the random-generator state it keeps for
      the recomputation.

    Needs the JAX or PyTorch backend.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_residuals(layer, inputs, training)
    if backend == "torch":
        return _torch_saved_tensors(layer, inputs, training)
    raise ValueError(
        "`saved_residuals` needs the JAX or PyTorch backend. Received: "
        f"backend={backend!r}"
    )


def saved_residual_bytes(layer, inputs, training=True):
    """Bytes that `layer`'s backward pass keeps, leaving out its arguments
    (weights and inputs), which exist anyway; see `saved_residuals`."""
    return sum(
        nbytes
        for _, _, nbytes, source in saved_residuals(layer, inputs, training)
        if not source.startswith("from the argument")
    )


GENERATOR_STATE = "kept by torch.utils.checkpoint: the CPU generator's state"


def saved_activation_bytes(layer, inputs, training=True):
    """`saved_residual_bytes` without the random-generator states that
    `torch.utils.checkpoint` keeps (5 KB per checkpoint on the CPU, whatever
    the sizes): the bytes that scale with the activations."""
    return sum(
        nbytes
        for _, _, nbytes, source in saved_residuals(layer, inputs, training)
        if not source.startswith("from the argument")
        and source != GENERATOR_STATE
    )


def _values(layer, inputs):
    if not layer.built:
        layer(inputs, training=False)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    return trainable, non_trainable


def _jax_residuals(layer, inputs, training):
    import jax
    import keras

    trainable, non_trainable = _values(layer, inputs)

    def loss(trainable, inputs):
        outputs, _ = layer.stateless_call(
            trainable, non_trainable, inputs, training=training
        )
        return keras.ops.sum(keras.ops.cast(outputs, "float32"))

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.ad_checkpoint.print_saved_residuals(loss, trainable, inputs)
    residuals = []
    for line in printed.getvalue().splitlines():
        match = _RESIDUAL.match(line.strip())
        if match is None:
            raise RuntimeError(f"unexpected residual line: {line!r}")
        kind, bits, dims, source = match.groups()
        shape = tuple(int(d) for d in dims.split(",") if d)
        itemsize = int(bits) // 8 if bits else 1  # bool
        nbytes = itemsize * math.prod(shape)
        residuals.append((f"{kind}{bits}", shape, nbytes, source))
    return residuals


def _torch_saved_tensors(layer, inputs, training):
    import keras
    import torch
    import torch.utils.checkpoint

    trainable, non_trainable = _values(layer, inputs)
    x = keras.ops.convert_to_tensor(inputs).detach().requires_grad_(True)
    arguments = {x.untyped_storage().data_ptr(): "from the argument inputs"}
    for variable, value in zip(
        layer.trainable_variables + layer.non_trainable_variables,
        trainable + non_trainable,
        strict=True,
    ):
        arguments[value.untyped_storage().data_ptr()] = (
            f"from the argument {variable.path}"
        )
    kept = {}

    def keep(tensor, source):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0 or pointer in kept:
            return
        kept[pointer] = (
            str(tensor.dtype).removeprefix("torch."),
            tuple(tensor.shape),
            storage.nbytes(),
            arguments.get(pointer, source),
        )

    def pack(tensor):
        creator = tensor.grad_fn
        keep(
            tensor,
            "saved by autograd: "
            + (
                f"output of {creator.name()}"
                if creator is not None
                else "a tensor without gradient"
            ),
        )
        return tensor

    checkpoint = torch.utils.checkpoint.checkpoint
    num_checkpoints = 0

    def recording_checkpoint(function, *args, **kwargs):
        nonlocal num_checkpoints
        num_checkpoints += 1
        for value in keras.tree.flatten((args, kwargs)):
            if isinstance(value, torch.Tensor):
                keep(value, "kept by torch.utils.checkpoint as its input")
        if kwargs.get("preserve_rng_state", True):
            state = torch.get_rng_state()
            kept[f"rng state {num_checkpoints}"] = (
                str(state.dtype).removeprefix("torch."),
                tuple(state.shape),
                state.untyped_storage().nbytes(),
                GENERATOR_STATE,
            )
        return checkpoint(function, *args, **kwargs)

    torch.utils.checkpoint.checkpoint = recording_checkpoint
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs, _ = layer.stateless_call(
                trainable, non_trainable, x, training=training
            )
            loss = keras.ops.sum(keras.ops.cast(outputs, "float32"))
    finally:
        torch.utils.checkpoint.checkpoint = checkpoint
    # The graph was complete: the gradients exist (and the saved tensors
    # were what it needed).
    loss.backward()
    if x.grad is None:
        raise RuntimeError("no gradient reached the inputs")
    return list(kept.values())
