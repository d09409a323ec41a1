"""Shared machinery of the benchmarks: subprocess workers, tables, files.

Every configuration runs in a fresh Python process, so that one
configuration's allocations and compiled graphs never count against
another's. A worker measures one training step's allocator peak with
`keras_fusion._tools.profiling.measure_step` (`reset_memory_stats` /
`get_memory_info(...)["peak"]`, minus the memory in use before the step)
and the step times after warm-up. The process is started by
`keras_fusion._tools.profiling.measure_in_fresh_process`, which turns
oneDNN on there: on a CPU only oneDNN's allocator keeps statistics (see
`keras_fusion/_tools/profiling.py`).
"""

import json
import math
import os
import platform
import sys
import time

from keras_fusion._tools.profiling import AllocatorStatsUnavailableError
from keras_fusion._tools.profiling import measure_in_fresh_process

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


# The dense block that `dense_block_residuals` (JAX) and
# `dense_block_saved_tensors` (PyTorch) count what autodiff keeps of.
DENSE_BLOCK_IMPLEMENTATIONS = ("plain", "full", "concat_bn")
DENSE_BLOCK_CASE = {"growth_rate": 12, "channels": 24, "size": 32, "batch": 32}


def dense_block_case(implementation, num_layers):
    """`(block, x, output_bytes)`: `MemoryEfficientDenseBlock` of
    `num_layers` layers, recomputing as `implementation` says (`"plain"`
    is `recompute=False`), a float32 input of `DENSE_BLOCK_CASE`'s size
    and the bytes of the block's output. Seeded: the same weights and
    input in every process."""
    import keras
    import numpy as np

    from keras_fusion import MemoryEfficientDenseBlock

    case = DENSE_BLOCK_CASE
    keras.utils.set_random_seed(0)
    recompute = False if implementation == "plain" else implementation
    block = MemoryEfficientDenseBlock(
        num_layers, case["growth_rate"], recompute=recompute
    )
    x = np.random.default_rng(0).standard_normal(
        (case["batch"], case["size"], case["size"], case["channels"]),
        dtype="float32",
    )
    channels = case["channels"] + num_layers * case["growth_rate"]
    output_bytes = x.nbytes // case["channels"] * channels
    return block, x, output_bytes


def dense_block_case_line():
    """The header line that says what `dense_block_case` builds."""
    case = DENSE_BLOCK_CASE
    return (
        f"- growth rate {case['growth_rate']}, {case['channels']} input "
        f"channels, {case['size']}x{case['size']}, batch {case['batch']}, "
        "float32; gradients of sum(block(x)) "
    )


def run_worker(worker, args, timeout=1800):
    """`worker(*args)` in a fresh process; its JSON result.

    Exits with a one-line message if TensorFlow keeps no allocator
    statistics on this machine.
    """
    try:
        return measure_in_fresh_process(worker, *args, timeout=timeout)
    except AllocatorStatsUnavailableError as error:
        sys.exit(f"benchmark stopped: {error}")


def sgd_training_step(model, x, loss_fn, y=None, learning_rate=0.01):
    """The step every memory benchmark measures: a `tf.function` running
    `model`'s forward pass on `x` in training mode, the gradients of
    `loss_fn(y, outputs)` (`loss_fn(outputs)` when `y` is None) and an SGD
    update. Returns `(step, optimizer)`; the optimizer is built."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(learning_rate)
    optimizer.build(model.trainable_variables)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            loss = loss_fn(outputs) if y is None else loss_fn(y, outputs)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return train_step, optimizer


def summary(group, peak_ratios, time_ratios):
    """The medians of a configuration's runs (`group`, `measure_step`
    results with `parameters`) and of its per-round ratios against plain,
    with the runs themselves: the fields every comparison table reads."""
    import statistics

    return {
        "parameters": group[0]["parameters"],
        "peak_bytes": statistics.median(r["peak_bytes"] for r in group),
        "step_seconds": statistics.median(r["step_seconds"] for r in group),
        "peak_ratios": peak_ratios,
        "time_ratios": time_ratios,
        "peak_ratio": statistics.median(peak_ratios),
        "time_ratio": statistics.median(time_ratios),
        "runs": group,
    }


def target_row(what, ratios, target):
    """A row of a targets table: the median of the per-round `ratios`
    (recompute against plain), each round's, and whether the median is at
    most `target`."""
    import statistics

    measured = ", ".join(f"{r:.3f}" for r in ratios)
    holds = statistics.median(ratios) <= target
    return (
        f"| {what} <= {target}x plain | {statistics.median(ratios):.3f} "
        f"({measured}) | {'yes' if holds else '**no**'} |"
    )


def fit_line(points):
    """Least-squares `(a, b)` of `y = a + b * x` through `(x, y)` points
    (e.g. a step's peak against its batch size)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return mean_y - b * mean_x, b


def largest_square_side(a, b, variable_bytes, capacity):
    """The largest square side `s` whose training step (a peak fitted as
    `a + b * s**2`, on top of the variables and the float32 RGB input)
    fits in `capacity`; `None` when the fitted slope is not positive
    (sizes too close for the fit to see the activations grow)."""
    per_pixel = b + 3 * 4
    if per_pixel <= 0:
        return None
    room = capacity - variable_bytes - a
    return max(0, int(math.sqrt(room / per_pixel))) if room > 0 else 0


def plot_peak_fits(points, fits, capacity, title, path):
    """Measured peaks (`points[implementation][side]`) and fitted lines
    (`fits[implementation] = (a, b)`) against the square input side, with
    the `capacity` line, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for implementation in points:
        sides = sorted(points[implementation])
        peaks = [points[implementation][s] / 2**20 for s in sides]
        label = "plain" if implementation == "plain" else "recompute=True"
        line = axes.plot(sides, peaks, "o", label=label)[0]
        a, b = fits[implementation]
        grid = range(min(sides) // 2, max(sides) * 3 // 2 + 1, 8)
        axes.plot(
            grid,
            [(a + b * s * s) / 2**20 for s in grid],
            "--",
            color=line.get_color(),
            alpha=0.6,
        )
    axes.axhline(capacity / 2**20, color="grey", lw=0.8)
    axes.text(
        min(sides) // 2,
        capacity / 2**20 * 1.02,
        f"{capacity / 2**30:.0f} GiB",
        color="grey",
    )
    axes.set_xlabel("square input side (pixels), batch 1")
    axes.set_ylabel("training-step peak (MB)")
    axes.set_title(title)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def allocators(runs):
    """The allocators the runs measured, for the table's header: e.g.
    "oneDNN CPU allocator on CPU:0, oneDNN on"."""
    names = {
        f"{run['allocator']} on {run['device']}, oneDNN "
        f"{'on' if run['onednn'] else 'off'}"
        for run in runs
    }
    return "; ".join(sorted(names))


def environment():
    """Machine and versions, for the table's header."""
    import keras
    import numpy as np
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores, {memory}; {cpu_isa()}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def cpu_isa():
    """The vector instructions oneDNN's kernels use here, for the table's
    header: the CPU's best (AVX-512 or AVX2), or the ceiling that
    `ONEDNN_MAX_CPU_ISA` sets. Time ratios differ between the two kinds
    (run a benchmark with `ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 machine
    to see the other kind's oneDNN kernels; TensorFlow's Eigen kernels are
    the same on both)."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    best = (
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    )
    ceiling = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if ceiling:
        return (
            f"CPU has {best or 'unknown ISA'}, oneDNN kernels limited to "
            f"{ceiling} (ONEDNN_MAX_CPU_ISA)"
        )
    return f"CPU has {best or 'unknown ISA'}, oneDNN kernels use it"


def write_results(name, header_lines, table_lines, data, directory):
    """Print the table and write it (and the raw data) to `directory`."""
    text = "\n".join([*header_lines, "", *table_lines, ""])
    print(text)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
