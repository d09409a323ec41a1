"""Training memory and step time of the paper's U-Net: plain, `Recompute`
per level, and `keras.remat` per level.

    python -m benchmarks.unet_memory [--repeats 3] [--rounds 5]

`keras_fusion.models.UNet` as Ronneberger et al. (2015) ran it: a 572x572
one-channel input, widths 64 to 1024, batch 1, 2 classes (a 388x388
output), with and without BatchNorm after each convolution (`batch_norm`),
three ways:

- plain: `recompute=False`;
- Recompute: `recompute=True`, each level a sub-model wrapped in
  `keras_fusion.Recompute`;
- keras.remat: the same levels, each called through `keras.remat` (here
  `tf.recompute_grad`) as a user would wrap them, for memory only: it
  updates BatchNorm's moving statistics a second time in the recomputation
  and is not exact with dropout (see `tests/layers/test_recompute.py`).

One `tf.function` training step (forward, gradients, SGD update) with
sparse categorical cross-entropy, in a fresh subprocess per
configuration, measured as in `benchmarks.densenet_memory`: the
allocator's peak during a step minus what is in use before it, and the
median step time after warm-up. Plain and Recompute run alternately
`--rounds` times, keras.remat once per setting; ratios are per round.
Writes `benchmarks/results/unet_memory.{md,json}` (`--results-dir` picks
another directory).
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

SIZE = 572
BATCH = 1
CLASSES = 2
FILTERS = 64
IMPLEMENTATIONS = ("plain", "Recompute", "keras.remat")


def build(implementation, batch_norm):
    import keras

    from keras_fusion import Recompute
    from keras_fusion.models import UNet

    model = UNet(
        input_shape=(SIZE, SIZE, 1),
        classes=CLASSES,
        filters=FILTERS,
        batch_norm=batch_norm,
        recompute=implementation != "plain",
    )
    if implementation != "keras.remat":
        return model

    class KerasRematLevel(keras.layers.Wrapper):
        """A level called through `keras.remat`."""

        def call(self, inputs, training=None):
            flat = keras.tree.flatten(inputs)

            def level(*xs):
                return self.layer(
                    keras.tree.pack_sequence_as(inputs, list(xs)),
                    training=training,
                )

            return keras.remat(level)(*flat)

    def swap(layer):
        if isinstance(layer, Recompute):
            return KerasRematLevel(layer.layer, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=swap)


def worker(implementation, batch_norm, repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build(implementation, batch_norm)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    output_size = model.output_shape[1]
    x = tf.constant(rng.random((BATCH, SIZE, SIZE, 1)), tf.float32)
    y = tf.constant(rng.integers(0, CLASSES, (BATCH, output_size, output_size)))
    train_step, _ = sgd_training_step(model, x, loss_fn, y)
    train_step()
    result = measure_step(train_step, repeats)
    result["parameters"] = int(model.count_params())
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the table goes (default: benchmarks/results)",
    )
    args = parser.parse_args()

    plan = []
    for batch_norm in (True, False):
        for round_index in range(args.rounds):
            order = IMPLEMENTATIONS[:2]
            if round_index % 2:
                order = order[::-1]
            plan += [(implementation, batch_norm) for implementation in order]
        plan.append(("keras.remat", batch_norm))
    runs = {}
    for implementation, batch_norm in plan:
        result = run_worker(worker, [implementation, batch_norm, args.repeats])
        runs.setdefault((implementation, batch_norm), []).append(result)
        print(
            f"batch_norm={batch_norm} {implementation}: "
            f"{result['peak_bytes'] / 2**20:.0f} MB, "
            f"{result['step_seconds']:.2f} s",
            flush=True,
        )

    env = environment()
    measured = allocators(run for group in runs.values() for run in group)
    results = []
    rows = []
    for batch_norm in (True, False):
        plain = runs[("plain", batch_norm)]
        for implementation in IMPLEMENTATIONS:
            group = runs[(implementation, batch_norm)]
            # Per round: each run against the plain run of its round (the
            # single keras.remat run against the first round's).
            peak_ratio = statistics.median(
                r["peak_bytes"] / p["peak_bytes"]
                for r, p in zip(group, plain, strict=False)
            )
            time_ratio = statistics.median(
                r["step_seconds"] / p["step_seconds"]
                for r, p in zip(group, plain, strict=False)
            )
            peak = statistics.median(r["peak_bytes"] for r in group)
            seconds = statistics.median(r["step_seconds"] for r in group)
            results.append(
                {
                    "implementation": implementation,
                    "batch_norm": batch_norm,
                    "peak_bytes": peak,
                    "peak_ratio": peak_ratio,
                    "step_seconds": seconds,
                    "time_ratio": time_ratio,
                    "runs": group,
                }
            )
            rows.append(
                f"| {'yes' if batch_norm else 'no'} | {implementation} | "
                f"{peak / 2**20:.0f} | {peak_ratio:.3f} | {seconds:.2f} | "
                f"{time_ratio:.2f} |"
            )
    parameters = runs[("plain", True)][0]["parameters"]
    header = [
        "# U-Net (572x572): training-step memory and time",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, NumPy {env['numpy']}; {env['date']}",
        f"- `UNet(input_shape=({SIZE}, {SIZE}, 1), classes={CLASSES}, "
        f"filters={FILTERS})`: widths 64 to 1024, {parameters:,} parameters "
        f"with BatchNorm; batch {BATCH}, float32; one tf.function step "
        "(forward, gradients, SGD update), fresh process per configuration",
        f"- allocator: {measured} (TensorFlow's allocator statistics, "
        "read in a fresh process per configuration with "
        "TF_ENABLE_ONEDNN_OPTS=1)",
        "- peak: allocator peak of the step minus memory in use before it; "
        f"time: median of {args.repeats} steps after warm-up; plain and "
        f"Recompute: medians over {args.rounds} alternating rounds, ratios "
        "per round; keras.remat: one run, for memory (it updates BatchNorm's "
        "moving statistics twice)",
    ]
    table = [
        "| BatchNorm | implementation | peak MB | peak / plain | step s | "
        "time / plain |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    data = {
        "environment": env,
        "allocator": measured,
        "config": vars(args),
        "results": results,
    }
    write_results("unet_memory", header, table, data, args.results_dir)


if __name__ == "__main__":
    main()
