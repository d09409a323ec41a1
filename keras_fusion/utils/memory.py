"""Peak memory and time of a training step, from TensorFlow's allocator."""

import statistics
import time


def measure_step(step, repeats=5):
    """Peak bytes of one call of `step` and the median time of `repeats`.

    The peak is TensorFlow's CPU allocator peak during one call
    (`tf.config.experimental.reset_memory_stats` / `get_memory_info`) minus
    the memory in use before it. `step` must already have run once, so
    that tracing and variable creation are not counted. Run it in a fresh
    process for each configuration: the allocator's statistics are
    process-wide.

    Returns:
        A dict with `peak_bytes`, `step_seconds` (the median) and
        `step_times`.
    """
    import tensorflow as tf

    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    step()
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "peak_bytes": peak - before,
        "step_seconds": statistics.median(times) if times else None,
        "step_times": times,
    }
