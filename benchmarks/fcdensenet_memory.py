"""Training memory and step time of FC-DenseNet103, plain and recomputing.

    python -m benchmarks.fcdensenet_memory [--repeats 3] [--rounds 3]

`keras_fusion.models.FCDenseNet103` (Jégou et al. 2017, "The One Hundred
Layers Tiramisu"; 9.4M parameters, 11 classes, logits) with
`recompute=False` and `recompute=True`:

- at 224x224, batch 2 (the paper's training crops; our target: the
  recomputing peak at most 35% of the plain one, at most 1.3x its time),
  plain and recomputing alternately `--rounds` times, ratios per round;
- at CamVid's full 360x480, batch 1, `--camvid-rounds` rounds;
- at the square sizes of `--fit-sizes`, batch 1, once each: the peak
  fitted as `a + b * pixels` answers "how large a square image trains in
  4 GiB?", counting the variables and the input on top of the step.

One `tf.function` training step (forward, gradients, SGD update) with
sparse categorical cross-entropy, in a fresh subprocess per configuration,
measured as in `benchmarks.densenet_memory`: the allocator's peak during a
step minus what is in use before it, and the median step time after
warm-up. Writes `benchmarks/results/fcdensenet_memory.{md,json,png}`
(`--results-dir` picks another directory).
"""

import argparse
import os
import statistics

from benchmarks.common import RESULTS_DIR
from benchmarks.common import allocators
from benchmarks.common import environment
from benchmarks.common import fit_line
from benchmarks.common import largest_square_side
from benchmarks.common import plot_peak_fits
from benchmarks.common import run_worker
from benchmarks.common import sgd_training_step
from benchmarks.common import write_results
from keras_fusion._tools.profiling import measure_step

CLASSES = 11
IMPLEMENTATIONS = ("plain", "recompute")
CAPACITY = 4 * 2**30


def worker(implementation, height, width, batch, repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fusion.models import FCDenseNet103

    keras.utils.set_random_seed(0)
    model = FCDenseNet103(
        input_shape=(height, width, 3),
        classes=CLASSES,
        classifier_activation=None,
        recompute=implementation == "recompute",
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, height, width, 3)), tf.float32)
    y = tf.constant(rng.integers(0, CLASSES, (batch, height, width)))
    train_step, _ = sgd_training_step(model, x, loss_fn, y)
    train_step()
    result = measure_step(train_step, repeats)
    result["parameters"] = int(model.count_params())
    result["variable_bytes"] = int(
        sum(np.prod(v.shape) * 4 for v in model.variables)
    )
    return result


def _run(implementation, size, batch, repeats, runs):
    height, width = size
    result = run_worker(worker, [implementation, height, width, batch, repeats])
    runs.setdefault((implementation, size, batch), []).append(result)
    print(
        f"{implementation} {height}x{width} batch {batch}: "
        f"{result['peak_bytes'] / 2**20:.0f} MB, "
        f"{result['step_seconds']:.2f} s",
        flush=True,
    )


def _compare(runs, size, batch):
    """Medians and per-round ratios of plain against recompute."""
    plain = runs[("plain", size, batch)]
    rows = []
    for implementation in IMPLEMENTATIONS:
        group = runs[(implementation, size, batch)]
        rows.append(
            {
                "implementation": implementation,
                "size": list(size),
                "batch": batch,
                "peak_bytes": statistics.median(r["peak_bytes"] for r in group),
                "step_seconds": statistics.median(
                    r["step_seconds"] for r in group
                ),
                "peak_ratio": statistics.median(
                    r["peak_bytes"] / p["peak_bytes"]
                    for r, p in zip(group, plain, strict=True)
                ),
                "time_ratio": statistics.median(
                    r["step_seconds"] / p["step_seconds"]
                    for r, p in zip(group, plain, strict=True)
                ),
                "runs": group,
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--camvid-rounds", type=int, default=1)
    parser.add_argument(
        "--fit-sizes",
        type=int,
        nargs="+",
        default=[128, 192, 256],
        help="square sides, batch 1, for the fit (default: 128 192 256)",
    )
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the table goes (default: benchmarks/results)",
    )
    args = parser.parse_args()
    if len(args.fit_sizes) < 2:
        parser.error("--fit-sizes needs at least two sizes")

    runs = {}
    for size, batch, rounds in (
        ((224, 224), 2, args.rounds),
        ((360, 480), 1, args.camvid_rounds),
    ):
        for round_index in range(rounds):
            order = IMPLEMENTATIONS[:: -1 if round_index % 2 else 1]
            for implementation in order:
                _run(implementation, size, batch, args.repeats, runs)
    for side in args.fit_sizes:
        for implementation in IMPLEMENTATIONS:
            _run(implementation, (side, side), 1, args.repeats, runs)

    env = environment()
    measured = allocators(run for group in runs.values() for run in group)
    comparisons = _compare(runs, (224, 224), 2) + _compare(runs, (360, 480), 1)
    rows = [
        f"| {r['size'][0]}x{r['size'][1]} | {r['batch']} | "
        f"{r['implementation']} | {r['peak_bytes'] / 2**20:.0f} | "
        f"{r['peak_ratio']:.3f} | {r['step_seconds']:.2f} | "
        f"{r['time_ratio']:.2f} |"
        for r in comparisons
    ]
    first = runs[("plain", (224, 224), 2)][0]
    variable_bytes = first["variable_bytes"]
    points, fits, fit_rows, fit_results = {}, {}, [], []
    for implementation in IMPLEMENTATIONS:
        points[implementation] = {
            side: runs[(implementation, (side, side), 1)][0]["peak_bytes"]
            for side in args.fit_sizes
        }
        a, b = fit_line(
            [
                (side * side, peak)
                for side, peak in points[implementation].items()
            ]
        )
        fits[implementation] = (a, b)
        side = largest_square_side(a, b, variable_bytes, CAPACITY)
        measured_peaks = ", ".join(
            f"{s}: {p / 2**20:.0f}"
            for s, p in sorted(points[implementation].items())
        )
        square = "none (slope <= 0)" if side is None else f"{side}x{side}"
        fit_rows.append(
            f"| {implementation} | {measured_peaks} | {a / 2**20:.0f} | "
            f"{b * 1e6 / 2**20:.0f} | {square} |"
        )
        fit_results.append(
            {
                "implementation": implementation,
                "peaks": points[implementation],
                "a_bytes": a,
                "b_bytes_per_pixel": b,
                "largest_side_4gib": side,
            }
        )
    header = [
        "# FC-DenseNet103: training-step memory and time",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, NumPy {env['numpy']}; {env['date']}",
        f"- `FCDenseNet103(classes={CLASSES}, classifier_activation=None, "
        f"recompute=...)`: {first['parameters']:,} parameters, float32; one "
        "tf.function step (forward, gradients, SGD update), fresh process "
        "per configuration",
        f"- allocator: {measured} (TensorFlow's allocator statistics, "
        "read in a fresh process per configuration with "
        "TF_ENABLE_ONEDNN_OPTS=1)",
        "- peak: allocator peak of the step minus memory in use before it; "
        f"time: median of {args.repeats} steps after warm-up; medians over "
        f"{args.rounds} alternating rounds at 224x224 and "
        f"{args.camvid_rounds} at 360x480, ratios per round",
    ]
    table = [
        "| input | batch | implementation | peak MB | peak / plain | "
        "step s | time / plain |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## The largest square input that trains in 4 GiB (batch 1)",
        "",
        "Peak of the step fitted as a + b * pixels (least squares over the "
        "sides " + ", ".join(str(s) for s in args.fit_sizes) + ", one run "
        "each); the largest side s with a + (b + 12 bytes of input) * s^2 "
        f"+ {variable_bytes / 2**20:.0f} MB of variables <= 4 GiB.",
        "",
        "| implementation | measured peak MB by side | a MB | b MB per "
        "megapixel | largest square in 4 GiB |",
        "|---|---|---|---|---|",
        *fit_rows,
    ]
    data = {
        "environment": env,
        "allocator": measured,
        "config": vars(args),
        "results": comparisons,
        "fit": fit_results,
        "variable_bytes": variable_bytes,
    }
    write_results("fcdensenet_memory", header, table, data, args.results_dir)
    plot_peak_fits(
        points,
        fits,
        CAPACITY,
        "FC-DenseNet103: peak training memory",
        os.path.join(args.results_dir, "fcdensenet_memory.png"),
    )


if __name__ == "__main__":
    main()
