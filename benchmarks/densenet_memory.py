"""Training memory and step time of whole DenseNets.

    python -m benchmarks.densenet_memory [--repeats 5] [--rounds 2]
        [--depths 121 169 201 264]

`keras.applications.DenseNet121/169/201` and DenseNet-264 (blocks 6, 12,
64, 48), all built by `keras_fusion._tools.reference_densenet.DenseNet`, the
`keras.applications.densenet` code written with public layers, against
`keras_fusion.models.DenseNet121/169/201/264(recompute="full")`, plus our
DenseNet-121 with `recompute="concat_bn"`: 224x224x3 inputs, batch 8, 10
classes, one `tf.function` training step (forward, gradients, SGD update)
in a fresh subprocess per configuration, measured as in
`benchmarks.dense_block_memory`. The DenseNet-121 configurations run
alternately `--rounds` times; the deeper ones (`--depths`) once. Then
DenseNet-121 runs at the `--fit-batches` batch sizes (4 and 16) for each
implementation, and a least-squares line peak = a + b * batch through
those and batch 8 answers "how large a batch can I train?": the largest
batch that fits in 4 GiB and in 16 GiB, counting the variables and the
batch on top of the step's peak. Writes
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
from benchmarks.common import fit_line
from benchmarks.common import run_worker
from benchmarks.common import sgd_training_step
from benchmarks.common import write_results
from keras_fusion._tools.profiling import measure_step

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
        from keras_fusion._tools import reference_densenet

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


def worker(implementation, depth, repeats, batch=BATCH):
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build(implementation, depth)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, SIZE, SIZE, 3)), tf.float32)
    y = tf.constant(rng.integers(0, CLASSES, batch))
    train_step, optimizer = sgd_training_step(model, x, loss_fn, y)
    train_step()
    result = measure_step(train_step, repeats)
    # What stays allocated between steps: the variables (the optimizer's
    # too) and the batch; the step's peak is measured above it.
    result["resident_bytes"] = int(
        sum(
            np.prod(v.shape) * np.dtype(v.dtype).itemsize
            for v in [*model.variables, *optimizer.variables]
        )
        + x.shape.num_elements() * 4
        + y.shape.num_elements() * 8
    )
    result["input_bytes"] = x.shape.num_elements() * 4
    result["batch"] = batch
    return result


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


def largest_batch(a, b, resident_per_batch, resident_fixed, capacity):
    """The largest batch whose step fits in `capacity` bytes: the step's
    peak `a + b * batch` on top of what stays allocated (the variables
    and the batch itself)."""
    per_batch = b + resident_per_batch
    return max(0, int((capacity - resident_fixed - a) // per_batch))


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
        "--fit-batches",
        type=int,
        nargs="*",
        default=[4, 16],
        help=f"DenseNet-121 batch sizes measured besides {BATCH} for the "
        "fit of peak against batch (default: 4 16; none to skip the fit)",
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
        plan += [(implementation, 121, BATCH) for implementation in order]
    for depth in sorted(set(args.depths) - {121}):
        plan += [("keras.applications", depth, BATCH), ("full", depth, BATCH)]
    for batch in args.fit_batches:
        plan += [(implementation, 121, batch) for implementation in compared]
    runs = {}
    fit_runs = {}
    for implementation, depth, batch in plan:
        result = run_worker(
            worker, [implementation, depth, args.repeats, batch]
        )
        if batch == BATCH:
            runs.setdefault((implementation, depth), []).append(result)
        fit_runs.setdefault(implementation, {}).setdefault(batch, []).append(
            result
        )
        print(
            f"DenseNet-{depth} {implementation}, batch {batch}: "
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
                "peak_per_input_bytes": peak / group[0]["input_bytes"],
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
            f"{r['peak_bytes'] / 2**20:.0f} | "
            f"{r['peak_per_input_bytes']:.0f} | {r['peak_ratio']:.3f} | "
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
        "ratios per round; input batch bytes: the float32 images of one "
        "batch",
    ]
    table = [
        "| model | implementation | peak MB | peak / input batch bytes | "
        "peak / keras.applications same depth | "
        "peak / keras.applications DenseNet-121 | step s | "
        "time / keras.applications same depth |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    headroom = []
    fits = {}
    if args.fit_batches:
        headroom = [
            "",
            f"## How large a batch fits: DenseNet-121 at {SIZE}x{SIZE}",
            "",
            "Peak of the step fitted as a + b * batch (least squares over "
            "batches "
            + ", ".join(str(b) for b in sorted(fit_runs["full"]))
            + "; medians where a batch ran more than once); the largest "
            "batch counts the variables, the optimizer's state and the "
            "batch itself on top of that peak.",
            "",
            "| implementation | a MB | b MB per image | largest batch in "
            "4 GiB | largest batch in 16 GiB |",
            "|---|---|---|---|---|",
        ]
        for implementation in compared:
            by_batch = fit_runs[implementation]
            points = [
                (batch, statistics.median(r["peak_bytes"] for r in group))
                for batch, group in sorted(by_batch.items())
            ]
            a, b = fit_line(points)
            # Resident memory: fixed part (variables) and per image (the
            # input and its label), from two batch sizes.
            (b0, g0), (b1, g1) = sorted(by_batch.items())[:2]
            r0, r1 = g0[0]["resident_bytes"], g1[0]["resident_bytes"]
            resident_per_batch = (r1 - r0) / (b1 - b0)
            resident_fixed = r0 - resident_per_batch * b0
            largest = {
                gib: largest_batch(
                    a, b, resident_per_batch, resident_fixed, gib * 2**30
                )
                for gib in (4, 16)
            }
            fits[implementation] = {
                "points": points,
                "a_bytes": a,
                "b_bytes_per_image": b,
                "resident_fixed_bytes": resident_fixed,
                "resident_bytes_per_image": resident_per_batch,
                "largest_batch": largest,
            }
            headroom.append(
                f"| {implementation} | {a / 2**20:.0f} | {b / 2**20:.1f} | "
                f"{largest[4]} | {largest[16]} |"
            )
    data = {
        "environment": env,
        "allocator": measured,
        "config": vars(args),
        "results": results,
        "batch_fit": fits,
    }
    write_results(
        "densenet_memory", header, table + headroom, data, args.results_dir
    )
    plot(results, os.path.join(args.results_dir, "densenet_memory.png"))


if __name__ == "__main__":
    main()
