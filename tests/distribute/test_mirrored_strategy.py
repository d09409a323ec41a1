"""Training under `tf.distribute.MirroredStrategy` over 2 logical CPUs.

`mirrored_worker.py` trains each model for 3 steps (global batch 8, the
two replicas' halves of each batch with different means) on 2 replicas
with and without `synchronized` BatchNorm, and on one device, from the
same initial weights; these tests compare the runs.

Tolerances: losses and weights to 1e-4 relative (atol 1e-5); moving
statistics to 1e-5 relative (atol 1e-6). Observed: losses within 1.2e-6,
weights and statistics 50x and 16x inside their tolerances (DenseNet, the
worst). The learning rate is 0.01: at 0.1 three steps amplified float32
rounding (Keras computes synchronized variances as E[x^2] - E[x]^2, one
device uses `tf.nn.moments`) until DenseNet's first kernel drifted 4.7e-5
apart. Without `synchronized` each replica normalizes with its own
half-batch statistics: the losses then differ by 10% or more and the
moving variances by 0.017 or more.
"""

import numpy as np
import pytest

from tests.backend_utils import tensorflow_only
from tests.distribute.training_runs import moving_statistics
from tests.distribute.training_runs import run_worker_module

pytestmark = [tensorflow_only("tf.distribute"), pytest.mark.slow]

MODELS = [
    "dense_block_full",
    "dense_block_concat_bn",
    "fusion_selector",
    "recompute",
    "densenet",
    "densenet_bc",
]


@pytest.fixture(scope="module")
def runs():
    return run_worker_module("tests.distribute.mirrored_worker", "tensorflow")


def test_two_replicas_run(runs):
    assert runs["replicas"] == 2


@pytest.mark.parametrize("model", MODELS)
def test_losses_and_weights_match_one_device(runs, model):
    two, one = runs[f"{model}/2/True"], runs[f"{model}/1"]
    assert len(two["losses"]) == 3
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    assert len(two["weights"]) == len(one["weights"])
    for mine, reference in zip(two["weights"], one["weights"], strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_synchronized_moving_statistics_are_the_global_batchs(runs, model):
    two = moving_statistics(runs[f"{model}/2/True"])
    one = moving_statistics(runs[f"{model}/1"])
    assert two.keys() == one.keys() and len(one) >= 2
    for path, value in one.items():
        np.testing.assert_allclose(
            two[path], value, rtol=1e-5, atol=1e-6, err_msg=path
        )


@pytest.mark.parametrize(
    "model", ["dense_block_full", "fusion_selector", "recompute", "densenet_bc"]
)
def test_unsynchronized_replicas_use_their_own_statistics(runs, model):
    local = runs[f"{model}/2/False"]
    one = runs[f"{model}/1"]
    assert not np.allclose(local["losses"], one["losses"], rtol=1e-2)
    variances = [
        np.max(np.abs(value - moving_statistics(one)[path]))
        for path, value in moving_statistics(local).items()
        if path.endswith("moving_variance")
    ]
    assert max(variances) > 1e-3
