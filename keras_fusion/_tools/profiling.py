"""Peak memory and time of a training step, as TensorFlow's allocator sees it.

The measurements behind keras_fusion's memory claims, for checking them on
your own models and machine. The allocator measured is TensorFlow's, so
the measured step runs on TensorFlow (the TensorFlow Keras backend, or
plain TensorFlow code):

- `measure_step(step)`: the peak bytes that TensorFlow's allocator held
  during one call of `step`, beyond what it held before, and the median
  time of further calls.
- `measure_in_fresh_process(worker, *args)`: `worker(*args)` run in a new
  Python process set up so that the allocator keeps statistics; `worker`
  builds the step, runs it once and returns `measure_step(step)`.
- `AllocatorStatsUnavailableError`: TensorFlow keeps no statistics for the
  device, with the reason in the message.

A worker is a function at the top level of a module, a script or a
notebook, which imports what it uses in its body:

    def worker(recompute):
        import tensorflow as tf

        from keras_fusion import MemoryEfficientDenseBlock
        from keras_fusion._tools.profiling import measure_step

        block = MemoryEfficientDenseBlock(12, 12, recompute=recompute)
        x = tf.random.normal((16, 32, 32, 24))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(block(x, training=True) ** 2)
            return tape.gradient(loss, block.trainable_variables)

        step()  # Tracing and variable creation are not measured.
        return measure_step(step)

    full = measure_in_fresh_process(worker, "full")["peak_bytes"]
    plain = measure_in_fresh_process(worker, False)["peak_bytes"]

Why a fresh process: `tf.config.experimental.get_memory_info` and
`reset_memory_stats` read the statistics of a device's allocator, and on a CPU
only oneDNN's allocator keeps any. TensorFlow's Linux x86 wheels turn oneDNN on
by default only on CPUs with AVX-512 VNNI or BF16, AVX-VNNI or AMX; on other
CPUs (an AMD EPYC with AVX2 only, say), or with `TF_ENABLE_ONEDNN_OPTS=0`,
TensorFlow uses its plain CPU allocator, which keeps no statistics, and both
functions raise `ValueError: Allocator stats not available for device 'CPU:0'`.
TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported, so
`measure_in_fresh_process` starts a new process whose environment sets
`TF_ENABLE_ONEDNN_OPTS=1` (over a user's `0`) and `TF_CPP_MIN_LOG_LEVEL=3`
before anything imports TensorFlow. A fresh process per configuration is needed
anyway: the statistics are process-wide, and one configuration's allocations
and compiled graphs must not count against another's. A TensorFlow build
without oneDNN (some Arm and macOS wheels) keeps no CPU statistics whatever the
environment: then `measure_step` raises `AllocatorStatsUnavailableError`, and
`measure_in_fresh_process` raises it again in the calling process.
"""

import importlib
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

__all__ = [
    "AllocatorStatsUnavailableError",
    "measure_in_fresh_process",
    "measure_step",
]

# Set in the measuring process before anything imports TensorFlow.
_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
# Prefix of the line on which the measuring process reports its outcome;
# the worker may print lines of its own.
_OUTCOME = "keras_fusion._tools.profiling outcome: "
_CHILD = (
    "import sys; sys.path[:0] = {path!r}; "
    "from keras_fusion._tools.profiling import _run_worker_from_stdin; "
    "_run_worker_from_stdin()"
)


class AllocatorStatsUnavailableError(RuntimeError):
    """TensorFlow keeps no allocator statistics for the measured device.

    Its peak memory cannot be measured there (the module's docstring says
    when that happens); the message says what is missing and why.
    """


def measure_in_fresh_process(worker, *args, timeout=1800, env=None):
    """`worker(*args)`, run in a fresh process that measures TensorFlow.

    The process's environment is this one's with `TF_ENABLE_ONEDNN_OPTS=1`
    and `TF_CPP_MIN_LOG_LEVEL=3`, set before TensorFlow is imported, so
    that the CPU allocator keeps statistics whatever this process's
    environment says; `worker` typically builds a training step, runs it
    once and returns `measure_step(step)` (the module's docstring has a
    complete worker).

    Example:

    >>> from keras_fusion._tools.profiling import measure_in_fresh_process
    >>> measure_in_fresh_process("os:getenv", "TF_ENABLE_ONEDNN_OPTS")
    '1'

    Args:
        worker: a function defined at the top level of a module, or its
            name as `"module:function"`. A function of a script or a
            notebook (`__main__`, not run with `python -m`) is sent as its
            source, so it must import what it uses in its body.
        *args: JSON-serializable arguments for `worker`.
        timeout: seconds the process may take.
        env: environment variables set in the process after the ones
            above (tests use it to reproduce a machine without allocator
            statistics).

    Returns:
        `worker`'s return value, which must be JSON-serializable, as read
        back from JSON.

    Raises:
        AllocatorStatsUnavailableError: TensorFlow keeps no allocator
            statistics in that process either.
        RuntimeError: the process failed otherwise; the message ends with
            its standard error.
    """
    payload = {**_reference(worker), "args": list(args)}
    path = [_import_root("keras_fusion")]
    if payload["module"] is not None:
        path.insert(0, _import_root(payload["module"]))
    code = _CHILD.format(path=[p for p in path if p is not None])
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **_ENVIRONMENT, **(env or {})},
    )
    outcomes = [
        line[len(_OUTCOME) :]
        for line in result.stdout.splitlines()
        if line.startswith(_OUTCOME)
    ]
    if result.returncode != 0 or not outcomes:
        raise RuntimeError(
            f"{payload['name']}{tuple(args)} failed in a fresh process "
            f"(exit status {result.returncode}):\n{result.stderr[-4000:]}"
        )
    outcome = json.loads(outcomes[-1])
    if "unavailable" in outcome:
        raise AllocatorStatsUnavailableError(outcome["unavailable"])
    return outcome["result"]


def _reference(worker):
    """How the fresh process finds `worker`: module and name, or source."""
    if isinstance(worker, str):
        module, _, name = worker.partition(":")
        if not module or not name.isidentifier():
            raise ValueError(
                "`worker` should be a function or a 'module:function' "
                f"string. Received: worker={worker!r}"
            )
        return {"module": module, "name": name, "source": None}
    if not inspect.isfunction(worker) or not worker.__qualname__.isidentifier():
        raise ValueError(
            "`worker` should be a function defined at the top level of a "
            f"module (the fresh process imports it). Received: {worker!r}"
        )
    name, module = worker.__qualname__, worker.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None or spec.origin != worker.__code__.co_filename:
            source = textwrap.dedent(inspect.getsource(worker))
            return {"module": None, "name": name, "source": source}
        module = spec.name  # `python -m package.module`
    return {"module": module, "name": name, "source": None}


def _import_root(module):
    """The `sys.path` entry this process imports `module`'s package from,
    so that the fresh process imports the same files."""
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return os.path.dirname(list(spec.submodule_search_locations)[0])
    if spec.origin and os.path.isfile(spec.origin):
        return os.path.dirname(spec.origin)
    return None


def _run_worker_from_stdin():
    """The fresh process's side of `measure_in_fresh_process`."""
    payload = json.loads(sys.stdin.read())
    if payload["source"] is not None:
        namespace = {"__name__": "__keras_fusion_worker__"}
        exec(compile(payload["source"], "<worker>", "exec"), namespace)
        worker = namespace[payload["name"]]
    else:
        module = importlib.import_module(payload["module"])
        worker = getattr(module, payload["name"])
    try:
        outcome = {"result": worker(*payload["args"])}
    except AllocatorStatsUnavailableError as error:
        outcome = {"unavailable": str(error)}
    print(_OUTCOME + json.dumps(outcome), flush=True)


def measure_step(step, repeats=5, device=None):
    """Peak bytes of one call of `step` and the median time of `repeats`.

    The peak is the allocator peak of `device` during one call
    (`tf.config.experimental.reset_memory_stats` / `get_memory_info`)
    minus the memory in use before it. `step` must already have run once,
    so that tracing and variable creation are not counted. Call it in the
    process `measure_in_fresh_process` starts, one per configuration: the
    statistics are process-wide, and on many CPUs they exist only there
    (the module's docstring says why, and has an example).

    Args:
        step: a function running one step, e.g. a `tf.function`.
        repeats: steps to time after the measured one.
        device: the device whose allocator is read, e.g. `"CPU:0"`;
            default: where TensorFlow places ops, the first GPU if any,
            else `"CPU:0"`.

    Returns:
        A dict with `peak_bytes`, `step_seconds` (the median; `None` when
        `repeats` is 0), `step_times`, `device`, `allocator` (e.g.
        `"oneDNN CPU allocator"`) and `onednn` (whether oneDNN is on in
        this process).

    Raises:
        AllocatorStatsUnavailableError: TensorFlow keeps no statistics for
            `device` in this process.
    """
    import tensorflow as tf

    if device is None:
        device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    try:
        before = tf.config.experimental.get_memory_info(device)["current"]
        tf.config.experimental.reset_memory_stats(device)
    except ValueError as error:
        if "stats not available" not in str(error):
            raise
        raise AllocatorStatsUnavailableError(
            _unavailable_message(device)
        ) from error
    step()
    peak = tf.config.experimental.get_memory_info(device)["peak"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "peak_bytes": peak - before,
        "step_seconds": statistics.median(times) if times else None,
        "step_times": times,
        "device": device,
        "allocator": _allocator_name(device),
        "onednn": _onednn_enabled(),
    }


def _onednn_enabled():
    """Whether oneDNN is on in this process (`None` if TensorFlow does not
    say: the function is private to TensorFlow)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _allocator_name(device):
    if "GPU" in device.upper():
        kind = os.environ.get("TF_GPU_ALLOCATOR") or "BFC"
        return f"TensorFlow {kind} GPU allocator"
    if _onednn_enabled():
        return "oneDNN CPU allocator"
    return "TensorFlow CPU allocator"


def _unavailable_message(device):
    what = f"TensorFlow keeps no allocator statistics for {device!r}"
    if "GPU" in device.upper() or _onednn_enabled():
        return f"{what} in this process"
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if setting is not None and setting.lower() in ("1", "true"):
        return (
            f"{what}: on a CPU only oneDNN's allocator keeps them, and this "
            "TensorFlow build has no oneDNN (TF_ENABLE_ONEDNN_OPTS=1 did "
            "not turn it on, as with some Arm and macOS wheels), so "
            "TensorFlow's peak memory cannot be measured on this machine"
        )
    reason = (
        f"TF_ENABLE_ONEDNN_OPTS={setting}"
        if setting is not None
        else "TensorFlow leaves it off on CPUs without AVX-512 VNNI/BF16, "
        "AVX-VNNI or AMX"
    )
    return (
        f"{what}: on a CPU only oneDNN's allocator keeps them, and oneDNN "
        f"is off in this process ({reason}); measure through "
        "keras_fusion._tools.profiling.measure_in_fresh_process, which "
        "turns it on in a fresh process"
    )
