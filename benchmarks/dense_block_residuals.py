"""What JAX saves for a dense block's backward pass, against its depth.

    python -m benchmarks.dense_block_residuals [--layers 8 16 32 64]
        [--repeats 5]

Runs on the JAX backend (it sets `KERAS_BACKEND=jax`). For the plain block
(`recompute=False`) and `MemoryEfficientDenseBlock(recompute="full")` and
`"concat_bn"`, at growth rate 12, 24 input channels, 32x32, batch 32 (the
configuration of `benchmarks.dense_block_memory`), it lists the residuals
JAX keeps from the forward pass for the gradients of `sum(block(x))` with
respect to the weights and `x` (`jax.ad_checkpoint.print_saved_residuals`,
through `benchmarks.residuals.saved_residuals`) and sums their bytes, leaving
out the function's arguments (weights and input), which exist anyway. The
count is exact: it depends on the traced program, not on timing. Each
configuration runs in a fresh process, which also times `--repeats` jitted
training steps (forward and gradients) after a warm-up and reports their
median. Results go to `benchmarks/results/dense_block_residuals.{md,json}`
(`--results-dir` picks another directory, for trial runs).
"""

import os

os.environ["KERAS_BACKEND"] = "jax"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from benchmarks.common import RESULTS_DIR  # noqa: E402
from benchmarks.common import environment  # noqa: E402
from benchmarks.common import run_worker  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

IMPLEMENTATIONS = ("plain", "full", "concat_bn")
GROWTH_RATE = 12
CHANNELS = 24
SIZE = 32
BATCH = 32


def worker(implementation, num_layers, repeats):
    import jax
    import keras
    import numpy as np

    from benchmarks.residuals import saved_residuals
    from keras_fusion import MemoryEfficientDenseBlock

    assert keras.backend.backend() == "jax", keras.backend.backend()
    keras.utils.set_random_seed(0)
    recompute = False if implementation == "plain" else implementation
    block = MemoryEfficientDenseBlock(
        num_layers, GROWTH_RATE, recompute=recompute
    )
    x = np.random.default_rng(0).standard_normal(
        (BATCH, SIZE, SIZE, CHANNELS), dtype="float32"
    )
    residuals = saved_residuals(block, x)
    argument_bytes = sum(
        r[2] for r in residuals if r[3].startswith("from the argument")
    )
    saved_bytes = sum(
        r[2] for r in residuals if not r[3].startswith("from the argument")
    )

    trainable = [v.value for v in block.trainable_variables]
    non_trainable = [v.value for v in block.non_trainable_variables]

    def loss(trainable, x):
        y, _ = block.stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.sum(y)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(step(trainable, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(trainable, x))
        times.append(time.perf_counter() - start)
    output_bytes = BATCH * SIZE * SIZE * (CHANNELS + num_layers * GROWTH_RATE)
    return {
        "saved_bytes": saved_bytes,
        "argument_bytes": argument_bytes,
        "residual_arrays": len(residuals),
        "output_bytes": output_bytes * 4,
        "step_seconds": statistics.median(times),
        "step_times": times,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers", type=int, nargs="+", default=[8, 16, 32, 64]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--results-dir",
        default=RESULTS_DIR,
        help="where the tables go (default: benchmarks/results)",
    )
    args = parser.parse_args()

    results = {}
    for num_layers in args.layers:
        for implementation in IMPLEMENTATIONS:
            result = run_worker(
                worker, [implementation, num_layers, args.repeats]
            )
            results[(implementation, num_layers)] = result
            print(
                f"L={num_layers} {implementation}: "
                f"{result['saved_bytes'] / 2**20:.1f} MB saved, "
                f"{result['step_seconds']:.3f} s",
                flush=True,
            )

    import jax

    env = environment()
    rows = []
    data = {"environment": {**env, "jax": jax.__version__}, "results": []}
    for num_layers in args.layers:
        plain = results[("plain", num_layers)]
        for implementation in IMPLEMENTATIONS:
            r = results[(implementation, num_layers)]
            rows.append(
                f"| {num_layers} | {implementation} | "
                f"{r['saved_bytes'] / 2**20:.1f} | "
                f"{r['saved_bytes'] / r['output_bytes']:.2f} | "
                f"{r['saved_bytes'] / plain['saved_bytes']:.3f} | "
                f"{r['residual_arrays']} | {r['step_seconds']:.3f} | "
                f"{r['step_seconds'] / plain['step_seconds']:.2f} |"
            )
            data["results"].append(
                {"num_layers": num_layers, "implementation": implementation} | r
            )
    growth = []
    depths = sorted(args.layers)
    for implementation in IMPLEMENTATIONS:
        saved = [results[(implementation, n)]["saved_bytes"] for n in depths]
        per_layer = [
            (b - a) / (m - n) / 2**20
            for a, b, n, m in zip(
                saved[:-1], saved[1:], depths[:-1], depths[1:], strict=True
            )
        ]
        growth.append(
            f"| {implementation} | "
            + " | ".join(f"{value:.2f}" for value in per_layer)
            + " |"
        )
    spans = [f"{n}->{m}" for n, m in zip(depths[:-1], depths[1:], strict=True)]
    header = [
        "# Dense block under JAX: saved residuals against depth",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, JAX {jax.__version__}, Keras "
        f"{env['keras']}, NumPy {env['numpy']}; {env['date']}",
        f"- growth rate {GROWTH_RATE}, {CHANNELS} input channels, "
        f"{SIZE}x{SIZE}, batch {BATCH}, float32; gradients of sum(block(x)) "
        "with respect to the weights and x",
        "- saved: bytes of the residuals jax.ad_checkpoint."
        "print_saved_residuals lists, arguments (weights, x) left out; exact "
        f"(one trace); step: median of {args.repeats} jitted steps "
        "(forward + gradients) after warm-up, fresh process per row",
    ]
    table = [
        "| layers | implementation | saved MB | saved / output bytes | "
        "saved / plain | residual arrays | step s | time / plain |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Saved MB added per layer, between depths (constant = linear in "
        "depth):",
        "",
        "| implementation | " + " | ".join(spans) + " |",
        "|---|" + "---|" * len(spans),
        *growth,
    ]
    write_results(
        "dense_block_residuals", header, table, data, args.results_dir
    )


if __name__ == "__main__":
    main()
