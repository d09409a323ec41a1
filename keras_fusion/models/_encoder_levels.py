"""What the decoders need to know of an encoder, read once when a decoder
is built: its pyramid levels, the smallest input it takes, how each level
lines up with the next after a 2x upsampling, and its graph cut into
stages for `recompute=True`.

Sizes are read by probing the encoder's graph symbolically
(`compute_output_shape`, no data), over a run of consecutive input sizes
that covers every remainder modulo the deepest stride, so that a level's
rounding (up for "same" stride-2 convolutions, down for valid poolings) is
seen for odd as well as even sizes.
"""

import keras

from keras_fusion._internal.checks import spatial_axes
from keras_fusion.models.pyramid import pyramid_outputs
from keras_fusion.models.pyramid import pyramid_source_inputs


class EncoderLevels:
    """An encoder read for a decoder.

    Attributes:
        levels: the pyramid as `pyramid_outputs` returns it, shallowest
            first.
        exponents: the level `k` of each map (stride `2**k`), in order.
        inputs: the encoder's input tensor.
        input_shape: its shape without the batch axis.
        minimum_size: the smallest spatial size (one int per axis) at which
            every level keeps at least one pixel.
        methods: for each row `r` (stride `2**r`) that has a reference
            (a level `Pr`, or the input for `r = 0`) below the deepest
            level: `"crop"` or `"pad"`, how a map of the next deeper row
            upsampled 2x is aligned to it.
    """

    def __init__(self, encoder, data_format, model_name):
        self.data_format = data_format
        self.levels = pyramid_outputs(encoder, data_format=data_format)
        self.exponents = [int(key[1:]) for key in self.levels]
        self.inputs = pyramid_source_inputs(self.levels)
        if isinstance(self.inputs, (list, tuple)):
            raise ValueError(
                f"`{model_name}` takes an encoder with one image input. "
                f"Received: an encoder with {len(self.inputs)} inputs"
            )
        self.input_shape = tuple(self.inputs.shape[1:])
        self._probe = keras.Model(self.inputs, list(self.levels.values()))
        self.deepest = self.exponents[-1]
        self.minimum_size = self._minimum_size()
        self.methods = self._alignment_methods(model_name)

    def has_level(self, r):
        return r in self.exponents

    def references(self):
        """The rows below the deepest level that have a map to align to:
        each level, and the input (row 0)."""
        return sorted({0, *self.exponents[:-1]})

    def _spatial(self, shape):
        return [shape[axis] for axis in spatial_axes(4, self.data_format)]

    def _probe_shape(self, size):
        shape = [1, *self.input_shape]
        for axis, value in zip(
            spatial_axes(4, self.data_format), size, strict=True
        ):
            shape[axis] = value
        return tuple(shape)

    def _level_sizes(self, size):
        """Each level's spatial sizes for an input of spatial size `size`,
        or `None` if the encoder refuses it or a level is empty."""
        try:
            shapes = self._probe.compute_output_shape(self._probe_shape(size))
        except Exception:  # noqa: BLE001 - any refusal means "too small"
            return None
        if len(self.levels) == 1:
            shapes = [shapes]
        sizes = [self._spatial(shape) for shape in shapes]
        if any(s is None or s < 1 for level in sizes for s in level):
            return None
        return sizes

    def _static_size(self):
        size = self._spatial((None, *self.input_shape))
        return None if None in size else tuple(size)

    def _minimum_size(self):
        static = self._static_size()
        if static is not None:
            return static
        low, high = 1, 2 ** (self.deepest + 2)
        while self._level_sizes((high, high)) is None:
            if high > 2**16:
                raise ValueError(
                    "The encoder gives an empty pyramid level for every "
                    f"input size up to {high}; pass an encoder whose levels "
                    "are feature maps of the input."
                )
            high *= 2
        while low < high:
            middle = (low + high) // 2
            if self._level_sizes((middle, middle)) is None:
                low = middle + 1
            else:
                high = middle
        return (low, low)

    def _probe_sizes(self):
        static = self._static_size()
        if static is not None:
            return [static]
        start = self.minimum_size[0]
        period = 2 ** (self.deepest + 1)
        return [(s, s + 1) for s in range(start, start + period)]

    def row_sizes(self, size):
        """The spatial size of every row `r = 0 .. deepest` for an input
        of `size`: the level's where there is one, the input's for row 0,
        else twice the next deeper row's."""
        sizes = dict(zip(self.exponents, self._level_sizes(size), strict=True))
        rows = {}
        for r in range(self.deepest, -1, -1):
            if r in sizes:
                rows[r] = sizes[r]
            elif r == 0:
                rows[r] = list(size)
            else:
                rows[r] = [2 * s for s in rows[r + 1]]
        return rows

    def _alignment_methods(self, model_name):
        signs = {r: set() for r in self.references()}
        for size in self._probe_sizes():
            rows = self.row_sizes(size)
            for r in signs:
                for up, target in zip(
                    (2 * s for s in rows[r + 1]), rows[r], strict=True
                ):
                    signs[r].add((up > target) - (up < target))
        methods = {}
        for r, seen in signs.items():
            if seen <= {0, 1}:
                methods[r] = "crop"
            elif seen <= {0, -1}:
                methods[r] = "pad"
            else:
                raise ValueError(
                    f"`{model_name}` cannot align the encoder's level "
                    f"P{r + 1} upsampled 2x with "
                    + (f"level P{r}" if r else "the input")
                    + ": depending on the input size it is larger or "
                    "smaller. Pass `encoder` as a dict of levels whose "
                    "sizes halve from one to the next."
                )
        return methods


def encoder_stages(inputs, levels):
    """The encoder's graph cut at its levels into stages for `Recompute`.

    Stage `j` computes level `j` from what the stages before it computed:
    its inputs are the tensors of earlier stages (or the encoder's input)
    that its layers read, and its outputs its level and any of its tensors
    a later stage reads (a ResNetV2 shortcut, say, that bypasses a level).

    Args:
        inputs: the encoder's input tensor.
        levels: the levels, shallowest first, as `pyramid_outputs` gives.

    Returns:
        A list of `(stage_inputs, stage_outputs)` pairs of tensors of the
        encoder's graph, one per level; `stage_outputs[0]` is the level.
    """
    computed = {id(inputs): 0}
    stages = []
    for index, level in enumerate(levels, start=1):
        stage_inputs = []
        seen = set()
        pending = [level]
        while pending:
            tensor = pending.pop()
            if id(tensor) in computed:
                if all(t is not tensor for t in stage_inputs):
                    stage_inputs.append(tensor)
                continue
            if id(tensor) in seen:
                continue
            operation, node_index, _ = tensor._keras_history
            node = operation._inbound_nodes[node_index]
            if not node.input_tensors:
                raise ValueError(
                    "The encoder's levels depend on an input other than "
                    "its image input; pass an encoder with one input."
                )
            for output in node.output_tensors:
                seen.add(id(output))
            pending.extend(node.input_tensors)
        for tensor_id in seen:
            computed[tensor_id] = index
        stages.append((stage_inputs, [level]))
    # A tensor read by a later stage is an output of the stage computing it.
    for stage_inputs, _ in stages:
        for tensor in stage_inputs:
            producer = computed[id(tensor)]
            if producer == 0:
                continue
            outputs = stages[producer - 1][1]
            if all(t is not tensor for t in outputs):
                outputs.append(tensor)
    return stages
