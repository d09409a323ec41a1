"""What XLA plans for a DenseNet-121 training step under JAX, and its time.

    python -m benchmarks.densenet_xla_plan [--repeats 5]

Runs on the JAX backend (it sets `KERAS_BACKEND=jax`). The DenseNet-121 of
`keras.applications` written with public Keras layers
(`keras_fusion._tools.reference_densenet.DenseNet`, as
`benchmarks.densenet_memory` builds it) against
`keras_fusion.models.DenseNet121(recompute="full")` and
`recompute="concat_bn"` (dense blocks, transitions and the stem
recomputing): 224x224x3 inputs, batch 8, 10 classes, float32. The step is
the gradients of the mean categorical cross-entropy with respect to the
trainable weights, under `jax.jit`, in a fresh process per configuration:

- XLA temp: `memory_analysis().temp_size_in_bytes` of the compiled step on
  this backend (the CPU here), XLA's planned peak of intermediate buffers,
  as `benchmarks.dense_block_residuals` reads it; static and exact for
  these versions.
- step: the median time of `--repeats` calls after a warm-up call.

Results go to `benchmarks/results/densenet_xla_plan.{md,json}`
(`--results-dir` picks another directory).
"""

import os

os.environ["KERAS_BACKEND"] = "jax"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from benchmarks.common import RESULTS_DIR  # noqa: E402
from benchmarks.common import environment  # noqa: E402
from benchmarks.common import run_worker  # noqa: E402
from benchmarks.common import target_row  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

IMPLEMENTATIONS = ("keras.applications", "full", "concat_bn")
BATCH = 8
SIZE = 224
CLASSES = 10
TARGETS = {"temp": 0.35, "time": 1.3}


def worker(implementation, repeats):
    import jax
    import keras
    import numpy as np

    assert keras.backend.backend() == "jax", keras.backend.backend()
    keras.utils.set_random_seed(0)
    if implementation == "keras.applications":
        from keras_fusion._tools import reference_densenet

        model = reference_densenet.DenseNet(
            [6, 12, 24, 16],
            weights=None,
            input_shape=(SIZE, SIZE, 3),
            classes=CLASSES,
        )
    else:
        from keras_fusion.models import DenseNet121

        model = DenseNet121(
            weights=None,
            input_shape=(SIZE, SIZE, 3),
            classes=CLASSES,
            recompute=implementation,
        )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZE, SIZE, 3), dtype="float32")
    y = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, BATCH)]
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable, x):
        outputs, _ = model.stateless_call(
            trainable, non_trainable, x, training=True
        )
        return keras.ops.mean(keras.losses.categorical_crossentropy(y, outputs))

    step = jax.jit(jax.grad(loss))
    start = time.perf_counter()
    compiled = step.lower(trainable, x).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(trainable, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(trainable, x))
        times.append(time.perf_counter() - start)
    return {
        "xla_backend": jax.default_backend(),
        "xla_temp_bytes": memory.temp_size_in_bytes,
        "xla_argument_bytes": memory.argument_size_in_bytes,
        "xla_output_bytes": memory.output_size_in_bytes,
        "compile_seconds": compile_seconds,
        "step_seconds": statistics.median(times),
        "step_times": times,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the tables go (default: benchmarks/results)",
    )
    args = parser.parse_args()

    results = {}
    for implementation in IMPLEMENTATIONS:
        result = run_worker(worker, [implementation, args.repeats])
        results[implementation] = result
        print(
            f"{implementation}: XLA temp "
            f"{result['xla_temp_bytes'] / 2**20:.1f} MB, "
            f"{result['step_seconds']:.3f} s",
            flush=True,
        )

    import jax

    env = environment()
    plain = results["keras.applications"]
    rows = []
    for implementation in IMPLEMENTATIONS:
        r = results[implementation]
        rows.append(
            f"| {implementation} | {r['xla_temp_bytes'] / 2**20:.1f} | "
            f"{r['xla_temp_bytes'] / plain['xla_temp_bytes']:.3f} | "
            f"{r['xla_argument_bytes'] / 2**20:.1f} | "
            f"{r['step_seconds']:.3f} | "
            f"{r['step_seconds'] / plain['step_seconds']:.2f} | "
            f"{r['compile_seconds']:.0f} |"
        )
    full = results["full"]
    temp_ratio = full["xla_temp_bytes"] / plain["xla_temp_bytes"]
    time_ratio = full["step_seconds"] / plain["step_seconds"]
    header = [
        "# DenseNet-121 under JAX: XLA's plan for the training step",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, JAX {jax.__version__}, Keras "
        f"{env['keras']}, NumPy {env['numpy']}; {env['date']}",
        f"- {SIZE}x{SIZE}x3 inputs, batch {BATCH}, {CLASSES} classes, "
        "float32; gradients of the mean categorical cross-entropy with "
        "respect to the trainable weights, jax.jit, fresh process per row",
        "- XLA temp: the compiled step's memory_analysis() temporary "
        f"allocation on the {plain['xla_backend']} backend (XLA's planned "
        "peak of intermediate buffers); static, exact for these versions",
        f"- step: median of {args.repeats} calls after warm-up",
    ]
    table = [
        "| implementation | XLA temp MB | temp / keras.applications | "
        "XLA args MB | step s | time / keras.applications | compile s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| target (full) | measured | holds |",
        "|---|---|---|",
        target_row("XLA temp", [temp_ratio], TARGETS["temp"]),
        target_row("step time", [time_ratio], TARGETS["time"]),
    ]
    data = {
        "environment": {**env, "jax": jax.__version__},
        "results": [{"implementation": k} | v for k, v in results.items()],
    }
    write_results("densenet_xla_plan", header, table, data, args.results_dir)


if __name__ == "__main__":
    main()
