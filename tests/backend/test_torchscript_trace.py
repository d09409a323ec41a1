"""Under a TorchScript trace (`torch.jit.trace`, Keras's ONNX export from
PyTorch when a size is `None`), the layers and ops that crop, pad or
compare sizes refuse with an error that says what to do, instead of a
trace whose crops are the sample's."""

import keras
import numpy as np
import pytest

from keras_fusion import CropAndConcat
from keras_fusion import FusionSelector
from keras_fusion import MemoryEfficientDenseBlock
from keras_fusion import TransitionBlock
from keras_fusion import WeightedAdd
from keras_fusion.ops import center_crop
from keras_fusion.ops import center_pad

pytestmark = pytest.mark.backends(
    "torch", reason="torch.jit.trace is PyTorch's TorchScript tracer"
)


class _CenterCrop(keras.layers.Layer):
    def call(self, x):
        return center_crop(x, (4, 4))


class _CenterPad(keras.layers.Layer):
    def call(self, x):
        return center_pad(x, (8, 8))


def _two_inputs(layer):
    a = keras.Input((None, None, 3))
    b = keras.Input((None, None, 3))
    model = keras.Model([a, b], layer([a, b]))
    return model, [np.ones((1, 8, 8, 3), "float32")] * 2


def _one_input(layer, spatial=(None, None)):
    x = keras.Input((*spatial, 3))
    return keras.Model(x, layer(x)), [np.ones((1, 6, 6, 3), "float32")]


CASES = {
    "crop_and_concat": (
        lambda: _two_inputs(CropAndConcat()),
        "`CropAndConcat`",
    ),
    "fusion_selector": (
        lambda: _two_inputs(FusionSelector(mode="add", align="crop")),
        "`FusionSelector`",
    ),
    "weighted_add": (lambda: _two_inputs(WeightedAdd()), "`WeightedAdd`"),
    "center_crop": (
        lambda: _one_input(_CenterCrop()),
        "`keras_fusion.ops.center_crop`",
    ),
    "center_pad": (
        # Static sizes: Keras infers the shape of a layer whose sizes are
        # None by calling it at size 83, larger than the pad's 8.
        lambda: _one_input(_CenterPad(), spatial=(6, 6)),
        "`keras_fusion.ops.center_pad`",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trace_is_refused_with_what_to_do(case):
    import torch

    build, name = CASES[case]
    model, data = build()
    inputs = [torch.tensor(d) for d in data]
    # Outside a trace the model runs.
    assert tuple(model(inputs if len(inputs) > 1 else inputs[0]).shape)[0] == 1
    with pytest.raises(NotImplementedError) as info:
        torch.jit.trace(model, (inputs,) if len(inputs) > 1 else (inputs[0],))
    message = str(info.value)
    assert name in message
    assert "TorchScript" in message
    assert "KERAS_BACKEND=tensorflow or jax" in message


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: MemoryEfficientDenseBlock(2, 4, recompute=False, seed=1),
        lambda: MemoryEfficientDenseBlock(2, 4, recompute="full", seed=1),
        lambda: TransitionBlock(0.5),
    ],
    ids=["dense_block", "dense_block_recompute", "transition_block"],
)
def test_tracing_a_layer_without_crops_still_works(make_layer):
    # Our layers that neither crop, pad nor compare sizes trace, and the
    # trace computes what the model does at another size than the sample's
    # (a trace that kept the sample's sizes gives another shape).
    import torch

    x = keras.Input((None, None, 3))
    model = keras.Model(x, make_layer()(x))
    sample = torch.tensor(np.ones((1, 4, 4, 3), "float32"))
    traced = torch.jit.trace(model, (sample,))
    other = np.random.default_rng(0).standard_normal((2, 6, 6, 3))
    other = torch.tensor(other.astype("float32"))
    expected = model(other).detach().numpy()
    np.testing.assert_allclose(
        traced(other).detach().numpy(), expected, rtol=0, atol=1e-6
    )
