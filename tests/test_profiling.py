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


# What `measure_step` returns, as its docstring lists it.
RESULT_KEYS = {
    "peak_bytes",
    "step_seconds",
    "step_times",
    "device",
    "allocator",
    "onednn",
}


@tensorflow_only(TF_ALLOCATOR)
@pytest.mark.slow
def test_measures_with_onednn_when_the_caller_turned_it_off(monkeypatch):
    # As on a CPU without AVX-512, where TensorFlow keeps oneDNN, and with
    # it the CPU allocator's statistics, off.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        result = measure_in_fresh_process(block_training_step, "full", "CPU:0")
    except AllocatorStatsUnavailableError as error:
        if "build has no oneDNN" in str(error):
            pytest.skip(str(error))
        raise
    assert set(result) == RESULT_KEYS
    assert isinstance(result["peak_bytes"], int)
    assert result["device"] == "CPU:0"
    assert result["onednn"] is True
    assert result["allocator"] == "oneDNN CPU allocator"
    assert result["step_seconds"] is None and result["step_times"] == []


@tensorflow_only(TF_ALLOCATOR)
@pytest.mark.parametrize("repeats", [0, 3])
def test_measure_step_returns_the_peak_above_what_was_held_before(
    repeats, monkeypatch
):
    # An allocator holding 1000 bytes, whose peak the first step raises by
    # 4096 bytes and each further step by 4096 more.
    import tensorflow as tf

    stats = {"current": 1000, "peak": 1000}
    calls = []

    def get_memory_info(device):
        assert device == "CPU:0"
        return dict(stats)

    def reset_memory_stats(device):
        assert device == "CPU:0"
        stats["peak"] = stats["current"]

    def step():
        calls.append(None)
        stats["peak"] = max(stats["peak"], 1000 + 4096 * len(calls))

    monkeypatch.setattr(
        tf.config.experimental, "get_memory_info", get_memory_info
    )
    monkeypatch.setattr(
        tf.config.experimental, "reset_memory_stats", reset_memory_stats
    )
    monkeypatch.setattr(memory, "_onednn_enabled", lambda: True)
    result = memory.measure_step(step, repeats=repeats, device="CPU:0")
    assert set(result) == RESULT_KEYS
    # One measured step, then the timed ones; only the first is measured.
    assert len(calls) == 1 + repeats
    assert result["peak_bytes"] == 4096
    assert len(result["step_times"]) == repeats
    if repeats:
        assert result["step_seconds"] == sorted(result["step_times"])[1]
    else:
        assert result["step_seconds"] is None
    assert result["device"] == "CPU:0"
    assert result["allocator"] == "oneDNN CPU allocator"
    assert result["onednn"] is True


@pytest.mark.slow
def test_worker_runs_in_a_fresh_process_with_the_given_environment():
    assert measure_in_fresh_process("os:getpid") != os.getpid()
    # TF_ENABLE_ONEDNN_OPTS=1 over this environment's, `env` over both.
    assert measure_in_fresh_process("os:getenv", "TF_ENABLE_ONEDNN_OPTS") == "1"
    assert (
        measure_in_fresh_process(
            "os:getenv", "NOT_SET_HERE", env={"NOT_SET_HERE": "given"}
        )
        == "given"
    )


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
