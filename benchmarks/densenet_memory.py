"""Training memory and step time of whole DenseNets.

    python -m benchmarks.densenet_memory [--repeats 5] [--rounds 2]
        [--depths 121 169 201 264]

`keras.applications.DenseNet121/169/201` and DenseNet-264 (blocks 6, 12,
64, 48), all built by `benchmarks.reference_densenet.DenseNet`, the
`keras.applications.densenet` code written with public layers, against
`keras_fusion.models.DenseNet121/169/201/264(recompute="full")`, plus our
DenseNet-121 with `recompute="concat_bn"`: 224x224x3 inputs, batch 8, 10
classes, one `tf.function` training step (forward, gradients, SGD update)
in a fresh subprocess per configuration, measured as in
`benchmarks.dense_block_memory`. The DenseNet-121 configurations run
alternately `--rounds` times; the deeper ones (`--depths`) once. Writes
`benchmarks/results/densenet_memory.{md,json,png}` (`--results-dir` picks
another directory, for trial runs); the table's header names the allocator
measured.
"""

import argparse
import os
import statistics

from benchmarks.common import RESULTS_DIR
from benchmarks.common import allocators
from benchmarks.common import environment
from benchmarks.common import run_worker
from benchmarks.common import write_results
from keras_fusion.profiling import measure_step

BLOCKS = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}
BATCH = 8
SIZE = 224
CLASSES = 10


def build(implementation, depth):
    if implementation == "keras.applications":
        from benchmarks import reference_densenet

        return reference_densenet.DenseNet(
            list(BLOCKS[depth]),
            weights=None,
            input_shape=(SIZE, SIZE, 3),
            classes=CLASSES,
        )
    from keras_fusion.models import DenseNet

    return DenseNet(
        BLOCKS[depth],
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        classes=CLASSES,
        recompute=implementation,
    )


def worker(implementation, depth, repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build(implementation, depth)
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((BATCH, SIZE, SIZE, 3)), tf.float32)
    y = tf.constant(rng.integers(0, CLASSES, BATCH))

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    train_step()
    return measure_step(train_step, repeats)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for implementation, label, marker in (
        ("keras.applications", "keras.applications (plain Keras layers)", "o"),
        ("full", 'keras_fusion, recompute="full"', "s"),
    ):
        points = sorted(
            (r["depth"], r["peak_bytes"] / 2**30)
            for r in results
            if r["implementation"] == implementation
        )
        axes.plot(*zip(*points, strict=True), marker=marker, label=label)
    axes.set_title(
        f"DenseNet training step, {SIZE}x{SIZE}, batch {BATCH} (CPU)"
    )
    axes.set_xlabel("depth (layers)")
    axes.set_ylabel("peak allocator memory (GiB)")
    axes.set_xticks(sorted({r["depth"] for r in results}))
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--depths",
        type=int,
        nargs="+",
        choices=sorted(BLOCKS),
        default=sorted(BLOCKS),
        help="the depths to measure; DenseNet-121, which the ratios refer "
        "to, always runs (default: all)",
    )
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the table and figure go (default: benchmarks/results)",
    )
    args = parser.parse_args()

    plan = []
    compared = ("keras.applications", "full", "concat_bn")
    for round_index in range(args.rounds):
        order = compared if round_index % 2 == 0 else compared[::-1]
        plan += [(implementation, 121) for implementation in order]
    for depth in sorted(set(args.depths) - {121}):
        plan += [("keras.applications", depth), ("full", depth)]
    runs = {}
    for implementation, depth in plan:
        result = run_worker(worker, [implementation, depth, args.repeats])
        runs.setdefault((implementation, depth), []).append(result)
        print(
            f"DenseNet-{depth} {implementation}: "
            f"{result['peak_bytes'] / 2**20:.0f} MB, "
            f"{result['step_seconds']:.2f} s",
            flush=True,
        )

    env = environment()
    measured = allocators(run for group in runs.values() for run in group)
    base = runs[("keras.applications", 121)]
    results = []
    rows = []
    for (implementation, depth), group in runs.items():
        reference = runs[("keras.applications", depth)]
        peak = statistics.median(r["peak_bytes"] for r in group)
        reference_peak = statistics.median(r["peak_bytes"] for r in reference)
        time_ratio = statistics.median(
            r["step_seconds"] / b["step_seconds"]
            for r, b in zip(group, reference, strict=True)
        )
        seconds = statistics.median(r["step_seconds"] for r in group)
        results.append(
            {
                "implementation": implementation,
                "depth": depth,
                "peak_bytes": peak,
                "peak_ratio": peak / reference_peak,
                "step_seconds": seconds,
                "time_ratio": time_ratio,
                "runs": group,
            }
        )
    results.sort(key=lambda r: (r["depth"], r["implementation"]))
    base_peak = statistics.median(r["peak_bytes"] for r in base)
    for r in results:
        rows.append(
            f"| DenseNet-{r['depth']} | {r['implementation']} | "
            f"{r['peak_bytes'] / 2**20:.0f} | {r['peak_ratio']:.3f} | "
            f"{r['peak_bytes'] / base_peak:.3f} | {r['step_seconds']:.2f} | "
            f"{r['time_ratio']:.2f} |"
        )
    header = [
        "# DenseNets: training-step memory and time",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, NumPy {env['numpy']}; {env['date']}",
        f"- {SIZE}x{SIZE}x3 inputs, batch {BATCH}, {CLASSES} classes, "
        "float32; one tf.function step (forward, gradients, SGD update), "
        "fresh process per configuration",
        f"- allocator: {measured} (TensorFlow's allocator statistics, "
        "read in a fresh process per configuration with "
        "TF_ENABLE_ONEDNN_OPTS=1)",
        "- peak: allocator peak of the step minus memory in "
        f"use before it; time: median of {args.repeats} steps after warm-up; "
        f"DenseNet-121 rows: median over {args.rounds} alternating rounds, "
        "ratios per round",
    ]
    table = [
        "| model | implementation | peak MB | peak / keras.applications "
        "same depth | peak / keras.applications DenseNet-121 | step s | "
        "time / keras.applications same depth |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    data = {
        "environment": env,
        "allocator": measured,
        "config": vars(args),
        "results": results,
    }
    write_results("densenet_memory", header, table, data, args.results_dir)
    plot(results, os.path.join(args.results_dir, "densenet_memory.png"))


if __name__ == "__main__":
    main()
