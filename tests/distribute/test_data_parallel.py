"""Training under `keras.distribution.DataParallel` on JAX, two host devices.

`data_parallel_worker.py` trains each model for 3 steps (global batch 8,
the two devices' halves of each batch with different means) on one device
and on two, from the same initial weights and seeds; these tests compare
the runs. The models: `MemoryEfficientDenseBlock` (JAX's custom-gradient
kernel, with dropout), a `Recompute`-wrapped level holding a dense block and
a Keras BatchNormalization, and `DenseNetBC(recompute=True)`.

Under `DataParallel` XLA partitions the one training step over the
devices, so BatchNorm's batch statistics are the global batch's (XLA adds
the reduction across devices) and the step computes what one device
computes, summed in another order: losses and weights to 1e-5, moving
statistics to 1e-6.
"""

import numpy as np
import pytest

from tests.distribute.training_runs import moving_statistics
from tests.distribute.training_runs import run_worker_module

pytestmark = [
    pytest.mark.backends(
        "jax", reason="keras.distribution runs on JAX (DataParallel)"
    ),
    pytest.mark.slow,
]

MODELS = ["dense_block", "recompute", "densenet_bc"]


@pytest.fixture(scope="module")
def runs():
    return run_worker_module("tests.distribute.data_parallel_worker", "jax")


def test_two_devices_run(runs):
    assert runs["devices"] == 2


def test_each_device_trains_on_half_of_each_batch(runs):
    # The batch entering the dense-block model's step is split along its
    # batch axis: each device holds 4 of the 8 images; on one device, 8.
    assert runs["dense_block/2"]["shard_shapes"]
    assert {tuple(s) for s in runs["dense_block/2"]["shard_shapes"]} == {
        (4, 8, 8, 6)
    }
    assert {tuple(s) for s in runs["dense_block/1"]["shard_shapes"]} == {
        (8, 8, 8, 6)
    }


@pytest.mark.parametrize("model", MODELS)
def test_losses_and_weights_match_one_device(runs, model):
    two, one = runs[f"{model}/2"], runs[f"{model}/1"]
    assert len(two["losses"]) == 3
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert len(two["weights"]) == len(one["weights"])
    for mine, reference in zip(two["weights"], one["weights"], strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_moving_statistics_are_the_global_batchs(runs, model):
    two = moving_statistics(runs[f"{model}/2"])
    one = moving_statistics(runs[f"{model}/1"])
    assert two.keys() == one.keys() and len(one) >= 2
    for path, value in one.items():
        np.testing.assert_allclose(
            two[path], value, rtol=0, atol=1e-6, err_msg=path
        )
