"""Training memory and step time of the decoders on a ResNet50 encoder,
plain and recomputing.

    python -m benchmarks.segmentation_memory [--repeats 3] [--rounds 3]

`keras_fusion.models.UNet`, `UNetPlusPlus` and `FPN` with their default
decoders on `keras.applications.ResNet50(include_top=False,
weights=None, input_shape=(None, None, 3))` (random weights), 2 classes,
logits, with `recompute=False` and `recompute=True`:

- `UNet(encoder=...)` at `--size` 512x512, batch `--batch` 4 (our
  target: the recomputing peak at most 45% of the plain one, at most
  1.35x its time), plain and recomputing alternately `--rounds` times,
  ratios per round;
- `UNetPlusPlus` and `FPN` at the same size, `--other-rounds` rounds;
- the reference a user would write without keras_fusion, plain only:
  the same ResNet50 with a hand-wired U-Net decoder (skips from
  `conv1_relu`, `conv2_block3_out`, `conv3_block4_out`,
  `conv4_block6_out`, `conv5_block3_out`; per level `UpSampling2D(2)`,
  `Concatenate` and two 3x3 convolutions with BatchNorm and ReLU, widths
  256, 128, 64, 32, 16, the last level without skip; a 1x1 head), which
  only runs at sizes divisible by 32, `--other-rounds` runs;
- `UNet(encoder=...)` at the square sizes of `--fit-sizes`, batch 1,
  once each: the peak fitted as `a + b * pixels` answers "how large a
  square image trains in 4 GiB?", counting the variables and the input
  on top of the step.

One `tf.function` training step (forward, gradients, SGD update) with
sparse categorical cross-entropy, in a fresh subprocess per configuration,
measured as in `benchmarks.densenet_memory`: the allocator's peak during a
step minus what is in use before it, and the median step time after
warm-up. Writes `benchmarks/results/segmentation_memory.{md,json,png}`
(`--results-dir` picks another directory).
"""

import argparse
import os

from benchmarks.common import RESULTS_DIR
from benchmarks.common import allocators
from benchmarks.common import environment
from benchmarks.common import fit_line
from benchmarks.common import largest_square_side
from benchmarks.common import plot_peak_fits
from benchmarks.common import run_worker
from benchmarks.common import sgd_training_step
from benchmarks.common import summary
from benchmarks.common import target_row
from benchmarks.common import write_results
from keras_fusion._tools.profiling import measure_step

CLASSES = 2
IMPLEMENTATIONS = ("plain", "recompute")
CAPACITY = 4 * 2**30
# The targets for `UNet(encoder=ResNet50)`, recompute against plain.
PEAK_TARGET = 0.45
TIME_TARGET = 1.35
HAND_WIRED = "hand-wired"
LABELS = {
    "UNet": "UNet(encoder=ResNet50)",
    "UNetPlusPlus": "UNetPlusPlus(encoder=ResNet50)",
    "FPN": "FPN(encoder=ResNet50)",
    HAND_WIRED: "hand-wired (keras.applications + Concatenate)",
}
SKIPS = (
    "conv4_block6_out",
    "conv3_block4_out",
    "conv2_block3_out",
    "conv1_relu",
)
HAND_WIRED_FILTERS = (256, 128, 64, 32, 16)


def hand_wired_unet(encoder):
    """The U-Net decoder as a user wires it on `keras.applications`'
    ResNet50: a `Concatenate` of equal sizes, so sizes divisible by 32."""
    import keras

    x = encoder.output
    skips = [encoder.get_layer(name).output for name in SKIPS]
    for i, filters in enumerate(HAND_WIRED_FILTERS):
        x = keras.layers.UpSampling2D(2)(x)
        if i < len(skips):
            x = keras.layers.Concatenate()([x, skips[i]])
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(
                x
            )
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
    outputs = keras.layers.Conv2D(CLASSES, 1)(x)
    return keras.Model(encoder.input, outputs)


def build(model_name, implementation):
    import keras

    from keras_fusion import models

    encoder = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    if model_name == HAND_WIRED:
        return hand_wired_unet(encoder)
    return getattr(models, model_name)(
        encoder=encoder,
        classes=CLASSES,
        recompute=implementation == "recompute",
    )


def worker(model_name, implementation, side, batch, repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build(model_name, implementation)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, side, side, 3)), tf.float32)
    y = tf.constant(rng.integers(0, CLASSES, (batch, side, side)))
    train_step, _ = sgd_training_step(model, x, loss_fn, y)
    train_step()
    result = measure_step(train_step, repeats)
    result["parameters"] = int(model.count_params())
    result["variable_bytes"] = int(
        sum(np.prod(v.shape) * 4 for v in model.variables)
    )
    return result


def _run(model_name, implementation, side, batch, repeats, runs):
    result = run_worker(
        worker, [model_name, implementation, side, batch, repeats]
    )
    runs.setdefault((model_name, implementation, side, batch), []).append(
        result
    )
    print(
        f"{model_name} {implementation} {side}x{side} batch {batch}: "
        f"{result['peak_bytes'] / 2**20:.0f} MB, "
        f"{result['step_seconds']:.2f} s",
        flush=True,
    )


def _row(model_name, implementation, side, batch, group, peaks, times):
    return {
        "model": model_name,
        "implementation": implementation,
        "size": [side, side],
        "batch": batch,
        **summary(group, peaks, times),
    }


def _compare(runs, model_name, side, batch):
    """Medians and per-round ratios of plain against recompute."""
    plain = runs[(model_name, "plain", side, batch)]
    rows = []
    for implementation in IMPLEMENTATIONS:
        group = runs[(model_name, implementation, side, batch)]
        pairs = list(zip(group, plain, strict=True))
        rows.append(
            _row(
                model_name,
                implementation,
                side,
                batch,
                group,
                [r["peak_bytes"] / p["peak_bytes"] for r, p in pairs],
                [r["step_seconds"] / p["step_seconds"] for r, p in pairs],
            )
        )
    return rows


def _against_unet(runs, unet_plain, side, batch):
    """The hand-wired reference against the median of the plain UNet."""
    group = runs[(HAND_WIRED, "plain", side, batch)]
    return _row(
        HAND_WIRED,
        "plain",
        side,
        batch,
        group,
        [r["peak_bytes"] / unet_plain["peak_bytes"] for r in group],
        [r["step_seconds"] / unet_plain["step_seconds"] for r in group],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--other-rounds", type=int, default=1)
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help="square side of the comparisons (default: 512; the hand-wired "
        "reference needs a multiple of 32)",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--fit-sizes",
        type=int,
        nargs="+",
        default=[256, 384, 512],
        help="square sides, batch 1, for the fit (default: 256 384 512)",
    )
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the table goes (default: benchmarks/results)",
    )
    args = parser.parse_args()
    if len(args.fit_sizes) < 2:
        parser.error("--fit-sizes needs at least two sizes")
    if args.size % 32:
        parser.error(
            "--size should be a multiple of 32 (the hand-wired reference's "
            f"Concatenate needs it). Received: --size {args.size}"
        )

    side, batch = args.size, args.batch
    runs = {}
    for model_name, rounds in (
        ("UNet", args.rounds),
        ("UNetPlusPlus", args.other_rounds),
        ("FPN", args.other_rounds),
    ):
        for round_index in range(rounds):
            order = IMPLEMENTATIONS[:: -1 if round_index % 2 else 1]
            for implementation in order:
                _run(
                    model_name, implementation, side, batch, args.repeats, runs
                )
    for _ in range(args.other_rounds):
        _run(HAND_WIRED, "plain", side, batch, args.repeats, runs)
    for fit_side in args.fit_sizes:
        for implementation in IMPLEMENTATIONS:
            if ("UNet", implementation, fit_side, 1) not in runs:
                _run("UNet", implementation, fit_side, 1, args.repeats, runs)

    env = environment()
    measured = allocators(run for group in runs.values() for run in group)
    unet = _compare(runs, "UNet", side, batch)
    comparisons = [
        *unet,
        _against_unet(runs, unet[0], side, batch),
        *_compare(runs, "UNetPlusPlus", side, batch),
        *_compare(runs, "FPN", side, batch),
    ]
    rows = [
        f"| {LABELS[r['model']]} | {r['implementation']} | "
        f"{r['parameters']:,} | {r['peak_bytes'] / 2**20:.0f} | "
        f"{r['peak_ratio']:.3f} | {r['step_seconds']:.2f} | "
        f"{r['time_ratio']:.2f} |"
        for r in comparisons
    ]
    recompute = unet[1]
    targets = [
        target_row("peak", recompute["peak_ratios"], PEAK_TARGET),
        target_row("step time", recompute["time_ratios"], TIME_TARGET),
    ]
    first = runs[("UNet", "plain", side, batch)][0]
    variable_bytes = first["variable_bytes"]
    points, fits, fit_rows, fit_results = {}, {}, [], []
    for implementation in IMPLEMENTATIONS:
        points[implementation] = {
            s: runs[("UNet", implementation, s, 1)][0]["peak_bytes"]
            for s in args.fit_sizes
        }
        a, b = fit_line(
            [(s * s, peak) for s, peak in points[implementation].items()]
        )
        fits[implementation] = (a, b)
        largest = largest_square_side(a, b, variable_bytes, CAPACITY)
        measured_peaks = ", ".join(
            f"{s}: {p / 2**20:.0f}"
            for s, p in sorted(points[implementation].items())
        )
        square = "none (slope <= 0)"
        if largest is not None:
            square = f"{largest}x{largest}"
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
                "largest_side_4gib": largest,
            }
        )
    header = [
        "# Decoders on ResNet50: training-step memory and time",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, NumPy {env['numpy']}; {env['date']}",
        "- encoder: `keras.applications.ResNet50(include_top=False, "
        "weights=None, input_shape=(None, None, 3))`; `UNet(encoder=..., "
        f"classes={CLASSES}, recompute=...)`, `UNetPlusPlus` and `FPN` "
        "likewise, with their default decoders (`FPN`: dropout 0.2); "
        "logits, float32; one tf.function step (forward, gradients, SGD "
        "update) with sparse categorical cross-entropy, fresh process per "
        "configuration",
        "- hand-wired: the same ResNet50 with UpSampling2D(2) + "
        "Concatenate + two 3x3 Conv-BN-ReLU per level from "
        "conv5_block3_out, on the skips "
        f"{', '.join(reversed(SKIPS))}, widths "
        f"{', '.join(str(f) for f in HAND_WIRED_FILTERS)} (the last level "
        "without skip) and a 1x1 head, plain only; its ratios are against "
        "the median of `UNet(encoder=ResNet50)` plain",
        f"- allocator: {measured} (TensorFlow's allocator statistics, "
        "read in a fresh process per configuration with "
        "TF_ENABLE_ONEDNN_OPTS=1)",
        "- peak: allocator peak of the step minus memory in use before it; "
        f"time: median of {args.repeats} steps after warm-up; medians over "
        f"{args.rounds} alternating rounds for UNet and {args.other_rounds} "
        "for the others, ratios per round",
    ]
    table = [
        f"## {side}x{side}, batch {batch}",
        "",
        "| model | implementation | parameters | peak MB | peak / plain | "
        "step s | time / plain |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## The targets: `UNet(encoder=ResNet50, recompute=True)` against "
        f"plain, {side}x{side}, batch {batch}",
        "",
        "| target | recompute / plain: median (per round) | holds |",
        "|---|---|---|",
        *targets,
        "",
        "## The largest square input that trains in 4 GiB (batch 1)",
        "",
        "`UNet(encoder=ResNet50)`. Peak of the step fitted as a + b * "
        "pixels (least squares over the sides "
        + ", ".join(str(s) for s in args.fit_sizes)
        + ", one run each); the largest side s with a + (b + 12 bytes of "
        f"input) * s^2 + {variable_bytes / 2**20:.0f} MB of variables "
        "<= 4 GiB.",
        "",
        "| implementation | measured peak MB by side | a MB | b MB per "
        "megapixel | largest square in 4 GiB |",
        "|---|---|---|---|---|",
        *fit_rows,
    ]
    data = {
        "environment": env,
        "allocator": measured,
        "config": {
            **vars(args),
            "results_dir": os.path.relpath(args.results_dir),
        },
        "results": comparisons,
        "targets": {
            "peak_ratio": PEAK_TARGET,
            "time_ratio": TIME_TARGET,
            "peak_holds": recompute["peak_ratio"] <= PEAK_TARGET,
            "time_holds": recompute["time_ratio"] <= TIME_TARGET,
        },
        "fit": fit_results,
        "variable_bytes": variable_bytes,
    }
    write_results("segmentation_memory", header, table, data, args.results_dir)
    plot_peak_fits(
        points,
        fits,
        CAPACITY,
        "UNet(encoder=ResNet50): peak training memory",
        os.path.join(args.results_dir, "segmentation_memory.png"),
    )


if __name__ == "__main__":
    main()
