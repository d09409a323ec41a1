"""TensorFlow's allocator peak, measured through one path
(`measure_in_fresh_process` running `measure_step`) on every machine."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from keras_fusion._tools import profiling as memory
from keras_fusion._tools.profiling import AllocatorStatsUnavailableError
from keras_fusion._tools.profiling import measure_in_fresh_process
from tests.backend_utils import TF_ALLOCATOR
from tests.backend_utils import tensorflow_only

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def block_training_step(recompute, device=None):
    """One gradient step of a 12-layer dense block, measured; runs in the
    process `measure_in_fresh_process` starts."""
    import numpy as np
    import tensorflow as tf

    from keras_fusion import MemoryEfficientDenseBlock
    from keras_fusion._tools.profiling import measure_step

    with tf.device(device):
        block = MemoryEfficientDenseBlock(12, 12, recompute=recompute)
        x = tf.constant(
            np.random.default_rng(0).random((16, 16, 16, 24)), tf.float32
        )

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(block(x, training=True)))
            return tape.gradient(loss, block.trainable_variables)

        step()
        return measure_step(step, repeats=0, device=device)


def failing_worker():
    raise ValueError("the worker's own error")


def _training_peak(recompute, device=None):
    try:
        result = measure_in_fresh_process(
            block_training_step, recompute, device
        )
    except AllocatorStatsUnavailableError as error:
        if "build has no oneDNN" in str(error):
            pytest.skip(str(error))
        raise
    assert result["peak_bytes"] > 0
    return result


@tensorflow_only(TF_ALLOCATOR)
@pytest.mark.slow
def test_recomputation_keeps_training_memory_down():
    # A guard against the saving silently regressing (as torchvision's did,
    # pytorch/vision#2221), not the benchmark: at 12 layers the plain block
    # needs well over twice the memory of the recomputing ones.
    plain = _training_peak(False)["peak_bytes"]
    assert _training_peak("full")["peak_bytes"] < 0.4 * plain
    assert _training_peak("concat_bn")["peak_bytes"] < 0.5 * plain


@tensorflow_only(TF_ALLOCATOR)
@pytest.mark.slow
def test_measures_with_onednn_when_the_caller_turned_it_off(monkeypatch):
    # As on a CPU without AVX-512, where TensorFlow keeps oneDNN, and with
    # it the CPU allocator's statistics, off.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    result = _training_peak("full", "CPU:0")
    assert result["device"] == "CPU:0"
    assert result["onednn"] is True
    assert result["allocator"] == "oneDNN CPU allocator"


@tensorflow_only(TF_ALLOCATOR)
@pytest.mark.slow
def test_names_what_is_missing_when_the_process_keeps_no_statistics():
    with pytest.raises(AllocatorStatsUnavailableError) as info:
        measure_in_fresh_process(
            block_training_step,
            False,
            "CPU:0",
            env={"TF_ENABLE_ONEDNN_OPTS": "0"},
        )
    message = str(info.value)
    assert "\n" not in message
    assert "no allocator statistics for 'CPU:0'" in message
    assert "oneDNN is off in this process (TF_ENABLE_ONEDNN_OPTS=0)" in message


@tensorflow_only(TF_ALLOCATOR)
@pytest.mark.parametrize(
    "setting, reason",
    [
        ("1", "this TensorFlow build has no oneDNN"),
        ("0", "oneDNN is off in this process (TF_ENABLE_ONEDNN_OPTS=0)"),
        (None, "TensorFlow leaves it off on CPUs without AVX-512"),
    ],
    ids=["build-without-onednn", "turned-off", "cpu-without-avx512"],
)
def test_measure_step_says_why_the_statistics_are_missing(
    setting, reason, monkeypatch
):
    import tensorflow as tf

    def get_memory_info(device):
        raise ValueError(f"Allocator stats not available for device {device!r}")

    monkeypatch.setattr(
        tf.config.experimental, "get_memory_info", get_memory_info
    )
    monkeypatch.setattr(memory, "_onednn_enabled", lambda: False)
    if setting is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", setting)
    with pytest.raises(AllocatorStatsUnavailableError, match=re.escape(reason)):
        memory.measure_step(lambda: None, device="CPU:0")


@pytest.mark.slow
def test_worker_of_a_script_is_sent_as_its_source(tmp_path):
    # Notebooks and scripts define their workers in `__main__`, which the
    # fresh process cannot import; and a caller's environment may turn
    # oneDNN off.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os

            from keras_fusion._tools.profiling import measure_in_fresh_process

            def worker(a, b):
                import os

                return [
                    a + b,
                    os.environ["TF_ENABLE_ONEDNN_OPTS"],
                    os.environ["TF_CPP_MIN_LOG_LEVEL"],
                ]

            os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
            print(measure_in_fresh_process(worker, 2, 3))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The process's environment overrides the caller's.
    assert result.stdout.splitlines()[-1] == "[5, '1', '3']"


@pytest.mark.slow
def test_worker_failure_raises_with_its_error():
    with pytest.raises(RuntimeError, match="the worker's own error"):
        measure_in_fresh_process(f"{__name__}:failing_worker")


@pytest.mark.parametrize(
    "worker",
    [lambda: None, "no_function_named", print],
    ids=["lambda", "no-module", "builtin"],
)
def test_measure_in_fresh_process_errors_if_worker_cannot_be_imported(
    worker,
):
    with pytest.raises(ValueError, match="`worker` should be a function"):
        measure_in_fresh_process(worker)


def test_benchmark_exits_with_one_line_when_statistics_are_unavailable(
    monkeypatch,
):
    from benchmarks import common

    def unavailable(worker, *args, timeout):
        raise AllocatorStatsUnavailableError("no statistics here")

    monkeypatch.setattr(common, "measure_in_fresh_process", unavailable)
    with pytest.raises(SystemExit) as info:
        common.run_worker(block_training_step, [False])
    assert isinstance(info.value.code, str)
    assert "\n" not in info.value.code
    assert info.value.code.endswith("no statistics here")
