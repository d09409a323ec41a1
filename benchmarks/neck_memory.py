"""Training memory and step time of the detection necks, plain and
recomputing.

    python -m benchmarks.neck_memory [--repeats 10] [--rounds 3]

The necks run on the levels P3-P5 of `keras.applications.ResNet50(
include_top=False, weights=None)` (random weights) at `--size` 896x896,
batch `--batch` 2: C3 is 112x112x512, C4 56x56x1024, C5 28x28x2048.

- `BiFPN.efficientdet("d3")` (160 filters, 6 cells, P3-P7), with
  `recompute=False` and `recompute=True`, alternately `--rounds` times,
  ratios per round (our target: the recomputing neck's peak at most 0.5x
  the plain neck's, at most 1.3x its step time); in the same rounds the
  plain D3 with `normalization="softmax"` (EfficientDet's `attn`) against
  the default `"fast"` (`fastattn`);
- `FeaturePyramid(256)` and `PathAggregation(256)` (RetinaNet's width,
  P3-P7), plain and recomputing, `--other-rounds` rounds;
- the whole detector's step, ResNet50 and the D3 neck trained together
  from the image, plain and recomputing neck, `--other-rounds` rounds:
  what the neck's saving is worth when the encoder trains too.

The neck's step is measured on the encoder's levels computed beforehand
(inputs held in memory before the step, as the encoder's would be): its
forward pass in training mode, the gradients of the sum over levels of
the mean of squares, and an SGD update, in one `tf.function`, in a fresh
subprocess per configuration, measured as in `benchmarks.densenet_memory`
(the allocator's peak during a step minus what is in use before it, and
the median step time after warm-up). Writes
`benchmarks/results/neck_memory.{md,json}` (`--results-dir` picks
another directory).
"""

import argparse
import os
import statistics

from benchmarks.common import RESULTS_DIR
from benchmarks.common import allocators
from benchmarks.common import environment
from benchmarks.common import run_worker
from benchmarks.common import sgd_training_step
from benchmarks.common import summary
from benchmarks.common import target_row
from benchmarks.common import write_results
from keras_fusion._tools.profiling import measure_step

IMPLEMENTATIONS = ("plain", "recompute")
# The targets for `BiFPN.efficientdet("d3")`, recompute against
# plain.
PEAK_TARGET = 0.5
TIME_TARGET = 1.3
LEVELS = ("P3", "P4", "P5")
RETINANET_FILTERS = 256
BIFPN = "BiFPN"
BIFPN_ATTN = "BiFPN-attn"
FPN = "FeaturePyramid"
PAN = "PathAggregation"
DETECTOR = "detector"
LABELS = {
    BIFPN: 'BiFPN.efficientdet("d3"), fastattn',
    BIFPN_ATTN: 'BiFPN.efficientdet("d3", normalization="softmax"), attn',
    FPN: f"FeaturePyramid({RETINANET_FILTERS})",
    PAN: f"PathAggregation({RETINANET_FILTERS})",
    DETECTOR: 'ResNet50 + BiFPN.efficientdet("d3"), encoder trained too',
}


def build_neck(name, implementation):
    from keras_fusion import BiFPN
    from keras_fusion import FeaturePyramid
    from keras_fusion import PathAggregation

    recompute = implementation == "recompute"
    if name in (BIFPN, DETECTOR):
        return BiFPN.efficientdet("d3", recompute=recompute)
    if name == BIFPN_ATTN:
        return BiFPN.efficientdet(
            "d3", normalization="softmax", recompute=recompute
        )
    if name == FPN:
        return FeaturePyramid(RETINANET_FILTERS, recompute=recompute)
    return PathAggregation(RETINANET_FILTERS, recompute=recompute)


def mean_squares(outputs):
    from keras import ops

    return sum(ops.mean(ops.square(p)) for p in outputs.values())


def worker(name, implementation, side, batch, repeats):
    import gc

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fusion.models import pyramid_outputs

    keras.utils.set_random_seed(0)
    encoder = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    levels = pyramid_outputs(encoder)
    image = tf.constant(
        np.random.default_rng(0).random((batch, side, side, 3)), tf.float32
    )
    neck = build_neck(name, implementation)
    if name == DETECTOR:
        model = keras.Model(
            encoder.input, neck({key: levels[key] for key in LEVELS})
        )
        x = image
    else:
        features = keras.Model(encoder.input, [levels[key] for key in LEVELS])
        x = dict(
            zip(
                LEVELS,
                (tf.constant(f) for f in features.predict(image, verbose=0)),
                strict=True,
            )
        )
        del features, encoder, levels
        gc.collect()
        model = neck
        # Built (and the levels' shapes read) before the optimizer is.
        shapes = {key: list(value.shape) for key, value in neck(x).items()}
    train_step, _ = sgd_training_step(model, x, mean_squares)
    train_step()
    result = measure_step(train_step, repeats)
    result["parameters"] = int(neck.count_params())
    result["levels"] = None if name == DETECTOR else shapes
    return result


def _run(name, implementation, side, batch, repeats, runs):
    result = run_worker(worker, [name, implementation, side, batch, repeats])
    runs.setdefault((name, implementation), []).append(result)
    print(
        f"{name} {implementation} {side}x{side} batch {batch}: "
        f"{result['peak_bytes'] / 2**20:.0f} MB, "
        f"{result['step_seconds']:.2f} s",
        flush=True,
    )


def _row(name, implementation, group, baseline):
    pairs = list(zip(group, baseline, strict=True))
    peaks = [r["peak_bytes"] / b["peak_bytes"] for r, b in pairs]
    times = [r["step_seconds"] / b["step_seconds"] for r, b in pairs]
    return {
        "neck": name,
        "implementation": implementation,
        **summary(group, peaks, times),
    }


def _compare(runs, name):
    plain = runs[(name, "plain")]
    return [
        _row(name, implementation, runs[(name, implementation)], plain)
        for implementation in IMPLEMENTATIONS
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="steps timed per neck configuration (default: 10; a D3 "
        "step takes about 1 s here, and 3 steps left its time ratio "
        "between 1.25 and 1.45 over three rounds)",
    )
    parser.add_argument(
        "--detector-repeats",
        type=int,
        default=3,
        help="steps timed for the detector (default: 3, of 6 s each here)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--other-rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=896)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the table goes (default: benchmarks/results)",
    )
    args = parser.parse_args()

    side, batch = args.size, args.batch
    runs = {}
    for round_index in range(args.rounds):
        order = IMPLEMENTATIONS[:: -1 if round_index % 2 else 1]
        for implementation in order:
            _run(BIFPN, implementation, side, batch, args.repeats, runs)
        _run(BIFPN_ATTN, "plain", side, batch, args.repeats, runs)
    for name in (FPN, PAN, DETECTOR):
        for round_index in range(args.other_rounds):
            order = IMPLEMENTATIONS[:: -1 if round_index % 2 else 1]
            repeats = (
                args.detector_repeats if name == DETECTOR else args.repeats
            )
            for implementation in order:
                _run(name, implementation, side, batch, repeats, runs)

    env = environment()
    measured = allocators(run for group in runs.values() for run in group)
    bifpn = _compare(runs, BIFPN)
    attn = _row(
        BIFPN_ATTN, "plain", runs[(BIFPN_ATTN, "plain")], runs[(BIFPN, "plain")]
    )
    comparisons = [
        *bifpn,
        *_compare(runs, FPN),
        *_compare(runs, PAN),
        *_compare(runs, DETECTOR),
    ]
    rows = [
        f"| {LABELS[r['neck']]} | {r['implementation']} | "
        f"{r['parameters']:,} | {r['peak_bytes'] / 2**20:.0f} | "
        f"{r['peak_ratio']:.3f} | {r['step_seconds']:.2f} | "
        f"{r['time_ratio']:.2f} |"
        for r in comparisons
    ]
    recompute = bifpn[1]
    targets = [
        target_row("peak", recompute["peak_ratios"], PEAK_TARGET),
        target_row("step time", recompute["time_ratios"], TIME_TARGET),
    ]
    fast = bifpn[0]
    speed = [1 / ratio for ratio in attn["time_ratios"]]
    fusion_rows = [
        f"| {LABELS[BIFPN]} | {fast['step_seconds']:.3f} | 1.000 | |",
        f"| {LABELS[BIFPN_ATTN]} | {attn['step_seconds']:.3f} | "
        f"{attn['time_ratio']:.3f} | "
        + ", ".join(f"{s:.3f}" for s in speed)
        + " |",
    ]
    levels = runs[(BIFPN, "plain")][0]["levels"]
    header = [
        "# Detection necks on ResNet50's levels: training-step memory and time",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, TensorFlow {env['tensorflow']}, "
        f"Keras {env['keras']}, NumPy {env['numpy']}; {env['date']}",
        "- input: the levels P3, P4, P5 of `keras.applications.ResNet50("
        "include_top=False, weights=None)` (random weights) on a "
        f"{side}x{side} image, batch {batch}, computed before the step; "
        "outputs "
        + ", ".join(
            f"{k} {'x'.join(map(str, v[1:]))}" for k, v in levels.items()
        )
        + " for the D3 neck",
        "- step: one tf.function (forward in training mode, gradients of the "
        "sum over levels of the mean of squares, SGD update), float32, "
        "fresh process per configuration; the detector row trains "
        "ResNet50 and the neck from the image",
        f"- allocator: {measured} (TensorFlow's allocator statistics, "
        "read in a fresh process per configuration with "
        "TF_ENABLE_ONEDNN_OPTS=1)",
        "- peak: allocator peak of the step minus memory in use before it; "
        f"time: median of {args.repeats} steps after warm-up "
        f"({args.detector_repeats} for the detector); medians over "
        f"{args.rounds} alternating rounds for the BiFPN and "
        f"{args.other_rounds} for the others, ratios per round",
    ]
    table = [
        f"## {side}x{side}, batch {batch}",
        "",
        "| neck | implementation | parameters | peak MB | peak / plain | "
        "step s | time / plain |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        '## The targets: `BiFPN.efficientdet("d3", recompute=True)` against '
        f"plain, {side}x{side}, batch {batch}",
        "",
        "| target | recompute / plain: median (per round) | holds |",
        "|---|---|---|",
        *targets,
        "",
        "## fastattn against attn (plain D3 neck, same rounds)",
        "",
        "EfficientDet reports fastattn 1.26-1.31x faster than attn on a GPU "
        "(Table 6 of the paper). Here, on this CPU:",
        "",
        "| fusion | step s | time / fastattn | fastattn speed-up per round |",
        "|---|---|---|---|",
        *fusion_rows,
    ]
    data = {
        "environment": env,
        "allocator": measured,
        "config": {
            **vars(args),
            "results_dir": os.path.relpath(args.results_dir),
        },
        "results": [*comparisons, attn],
        "targets": {
            "peak_ratio": PEAK_TARGET,
            "time_ratio": TIME_TARGET,
            "peak_holds": recompute["peak_ratio"] <= PEAK_TARGET,
            "time_holds": recompute["time_ratio"] <= TIME_TARGET,
        },
        "fastattn_speedup": statistics.median(speed),
    }
    write_results("neck_memory", header, table, data, args.results_dir)


if __name__ == "__main__":
    main()
