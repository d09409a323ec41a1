"""Training memory and step time of a dense block against its depth.

    python -m benchmarks.dense_block_memory [--layers 8 16 32 64]
        [--repeats 5] [--rounds 2]

Compares, at growth rate 12, 24 input channels, 32x32, batch 32:
- `baseline`: the block as `keras.applications.densenet` wires it, plain
  Keras layers with a `Concatenate` per layer
  (`keras_fusion._tools.reference_densenet.conv_block`);
- `full`: `MemoryEfficientDenseBlock(recompute="full")`;
- `concat_bn`: `MemoryEfficientDenseBlock(recompute="concat_bn")`.

Each (implementation, depth) runs in a fresh subprocess: one `tf.function`
training step (forward, gradients, SGD update) traced and run once, then the
allocator peak of one step (minus the memory in use before it) and the
median time of `--repeats` further steps. Implementations run alternately,
`--rounds` times, and the table reports the median over rounds, so that
drifts in machine speed hit all of them alike. Results go to
`benchmarks/results/dense_block_memory.{md,json}` (`--results-dir` picks
another directory, for trial runs).

The peak is read from TensorFlow's allocator statistics, in a process
started by `keras_fusion._tools.profiling.measure_in_fresh_process` with
oneDNN on: on a CPU only oneDNN's allocator keeps them
(`keras_fusion/_tools/profiling.py` says why); the table's header names
the allocator measured.
"""

import argparse
import statistics

from benchmarks.common import RESULTS_DIR
from benchmarks.common import allocators
from benchmarks.common import environment
from benchmarks.common import run_worker
from benchmarks.common import sgd_training_step
from benchmarks.common import write_results
from keras_fusion._tools.profiling import measure_step

IMPLEMENTATIONS = ("baseline", "full", "concat_bn")
GROWTH_RATE = 12
CHANNELS = 24
SIZE = 32
BATCH = 32


def keras_applications_block(x, num_layers, growth_rate):
    """The dense block exactly as keras.applications.densenet wires it: its
    `conv_block` per layer, each ending in a `Concatenate`."""
    from keras_fusion._tools.reference_densenet import conv_block

    for i in range(num_layers):
        x = conv_block(x, growth_rate, name=f"block{i + 1}")
    return x


def worker(implementation, num_layers, repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fusion import MemoryEfficientDenseBlock

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, CHANNELS))
    if implementation == "baseline":
        outputs = keras_applications_block(inputs, num_layers, GROWTH_RATE)
    else:
        outputs = MemoryEfficientDenseBlock(
            num_layers, GROWTH_RATE, recompute=implementation
        )(inputs)
    model = keras.Model(inputs, outputs)
    x = tf.constant(
        np.random.default_rng(0).standard_normal((BATCH, SIZE, SIZE, CHANNELS)),
        tf.float32,
    )
    train_step, _ = sgd_training_step(
        model, x, lambda y: tf.reduce_mean(tf.square(y))
    )
    train_step()
    result = measure_step(train_step, repeats)
    result["output_bytes"] = int(np.prod(outputs.shape[1:])) * BATCH * 4
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers", type=int, nargs="+", default=[8, 16, 32, 64]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the tables go (default: benchmarks/results)",
    )
    args = parser.parse_args()

    runs = {}
    for num_layers in args.layers:
        for round_index in range(args.rounds):
            order = (
                IMPLEMENTATIONS
                if round_index % 2 == 0
                else (IMPLEMENTATIONS[::-1])
            )
            for implementation in order:
                result = run_worker(
                    worker, [implementation, num_layers, args.repeats]
                )
                runs.setdefault((implementation, num_layers), []).append(result)
                print(
                    f"L={num_layers} {implementation}: "
                    f"{result['peak_bytes'] / 2**20:.1f} MB, "
                    f"{result['step_seconds']:.3f} s",
                    flush=True,
                )

    env = environment()
    rows = []
    measured = allocators(run for group in runs.values() for run in group)
    data = {
        "environment": env,
        "allocator": measured,
        "config": vars(args),
        "results": [],
    }
    for num_layers in args.layers:
        base = runs[("baseline", num_layers)]
        base_peak = statistics.median(r["peak_bytes"] for r in base)
        for implementation in IMPLEMENTATIONS:
            results = runs[(implementation, num_layers)]
            peak = statistics.median(r["peak_bytes"] for r in results)
            # Time ratio per round (alternating runs), then the median.
            time_ratio = statistics.median(
                r["step_seconds"] / b["step_seconds"]
                for r, b in zip(results, base, strict=True)
            )
            seconds = statistics.median(r["step_seconds"] for r in results)
            output_bytes = results[0]["output_bytes"]
            rows.append(
                f"| {num_layers} | {implementation} | {peak / 2**20:.1f} | "
                f"{peak / output_bytes:.1f} | {peak / base_peak:.3f} | "
                f"{seconds:.3f} | {time_ratio:.2f} |"
            )
            data["results"].append(
                {
                    "num_layers": num_layers,
                    "implementation": implementation,
                    "peak_bytes": peak,
                    "output_bytes": output_bytes,
                    "peak_ratio_to_baseline": peak / base_peak,
                    "step_seconds": seconds,
                    "time_ratio_to_baseline": time_ratio,
                    "runs": results,
                }
            )
    scaling = []
    if 32 in args.layers and 64 in args.layers:
        for implementation in IMPLEMENTATIONS:
            peaks = {
                r["num_layers"]: r["peak_bytes"]
                for r in data["results"]
                if r["implementation"] == implementation
            }
            scaling.append(
                f"| {implementation} | {peaks[64] / peaks[32]:.2f} |"
            )
    header = [
        "# Dense block: training-step memory and time against depth",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, NumPy {env['numpy']}; {env['date']}",
        f"- growth rate {GROWTH_RATE}, {CHANNELS} input channels, "
        f"{SIZE}x{SIZE}, batch {BATCH}, float32; one tf.function step "
        "(forward, gradients, SGD update)",
        f"- allocator: {measured} (TensorFlow's allocator statistics, "
        "read in a fresh process per configuration with "
        "TF_ENABLE_ONEDNN_OPTS=1)",
        "- peak: allocator peak of one step minus memory in "
        "use before it, median over "
        f"{args.rounds} rounds (fresh process each); time: median of "
        f"{args.repeats} steps after warm-up; ratios against the baseline "
        "run in the same round",
    ]
    table = [
        "| layers | implementation | peak MB | peak / output bytes | "
        "peak / baseline | step s | time / baseline |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    floors = []
    for num_layers in args.layers:
        peaks = {
            r["implementation"]: r["peak_bytes"]
            for r in data["results"]
            if r["num_layers"] == num_layers
        }
        # "concat_bn" keeps every bottleneck output (4 * growth rate
        # channels per layer) besides what "full" keeps: its own floor.
        bottleneck_bytes = (
            num_layers * 4 * GROWTH_RATE * SIZE * SIZE * BATCH * 4
        )
        floor = peaks["full"] + bottleneck_bytes
        floors.append(
            f"| {num_layers} | {peaks['full'] / 2**20:.1f} | "
            f"{bottleneck_bytes / 2**20:.1f} | "
            f"{peaks['concat_bn'] / 2**20:.1f} | "
            f"{peaks['concat_bn'] / floor:.3f} |"
        )
    table += [
        "",
        '"concat_bn" against its floor, the peak of "full" plus the kept '
        "bottleneck outputs:",
        "",
        "| layers | full peak MB | bottleneck outputs MB | concat_bn peak MB "
        "| concat_bn / (full + bottleneck outputs) |",
        "|---|---|---|---|---|",
        *floors,
    ]
    if scaling:
        table += [
            "",
            "| implementation | peak(64) / peak(32) |",
            "|---|---|",
            *scaling,
        ]
    write_results("dense_block_memory", header, table, data, args.results_dir)


if __name__ == "__main__":
    main()
