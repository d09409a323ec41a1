"""What JAX saves for a dense block's backward pass, and what XLA plans for
its training step, against its depth.

    python -m benchmarks.dense_block_residuals [--layers 8 16 32 64]
        [--repeats 5]

Runs on the JAX backend (it sets `KERAS_BACKEND=jax`). For the plain block
(`recompute=False`) and `MemoryEfficientDenseBlock(recompute="full")` and
`"concat_bn"`, at growth rate 12, 24 input channels, 32x32, batch 32 (the
configuration of `benchmarks.dense_block_memory`), the training step is the
gradients of `sum(block(x))` with respect to the weights and `x`, under
`jax.jit`. Each configuration runs in a fresh process and reports:

- saved: the residuals JAX keeps from the forward pass for those gradients
  (`jax.ad_checkpoint.print_saved_residuals`, through
  `keras_fusion._tools.residuals.saved_residuals`), their bytes summed,
  leaving out
  the function's arguments (weights and input), which exist anyway. This
  is what the traced program asks for, before XLA optimises it; exact.
- XLA: `jax.jit(step).lower(...).compile().memory_analysis()`, XLA's static
  buffer assignment for the compiled program on this backend (the CPU
  here): `argument_size_in_bytes` (the parameter buffers),
  `output_size_in_bytes` (the result buffers: the gradients, plus the
  result tuple's table of pointers), `alias_size_in_bytes` (arguments
  reused as outputs; none, nothing is donated) and `temp_size_in_bytes`,
  the size of the one temporary allocation into which XLA's buffer
  assignment packs every intermediate buffer of the scheduled program,
  buffers whose live ranges do not overlap sharing addresses. It is thus
  XLA's planned peak of intermediate memory (live buffers at the
  program's worst point, plus any packing loss) after XLA's fusion,
  common-subexpression elimination and scheduling; not a measurement of
  a run. The `peak_memory_in_bytes` field is not used: on this CPU
  backend it leaves the temporary allocation out. The counts are exact
  for this JAX/XLA version and backend; a GPU or TPU compiles another
  program.
- step: the median time of `--repeats` calls of that compiled program
  after a warm-up call.

Results go to `benchmarks/results/dense_block_residuals.{md,json}`
(`--results-dir` picks another directory, for trial runs). The run takes
about 20 minutes on a 2-core machine, most of it the 64-layer rows (a
plain 64-layer step takes 40 s there; `--layers 8 16 32` skips them).
"""

import os

os.environ["KERAS_BACKEND"] = "jax"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from benchmarks.common import DENSE_BLOCK_IMPLEMENTATIONS  # noqa: E402
from benchmarks.common import RESULTS_DIR  # noqa: E402
from benchmarks.common import dense_block_case  # noqa: E402
from benchmarks.common import dense_block_case_line  # noqa: E402
from benchmarks.common import environment  # noqa: E402
from benchmarks.common import run_worker  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

IMPLEMENTATIONS = DENSE_BLOCK_IMPLEMENTATIONS


def worker(implementation, num_layers, repeats):
    import jax
    import keras

    from keras_fusion._tools.residuals import saved_residuals

    assert keras.backend.backend() == "jax", keras.backend.backend()
    block, x, output_bytes = dense_block_case(implementation, num_layers)
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
    start = time.perf_counter()
    compiled = step.lower(trainable, x).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    if memory is None:
        raise RuntimeError(
            f"no memory analysis on the {jax.default_backend()} backend"
        )
    jax.block_until_ready(compiled(trainable, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(trainable, x))
        times.append(time.perf_counter() - start)
    return {
        "saved_bytes": saved_bytes,
        "argument_bytes": argument_bytes,
        "residual_arrays": len(residuals),
        "output_bytes": output_bytes,
        "xla_backend": jax.default_backend(),
        "xla_temp_bytes": memory.temp_size_in_bytes,
        "xla_argument_bytes": memory.argument_size_in_bytes,
        "xla_output_bytes": memory.output_size_in_bytes,
        "xla_alias_bytes": memory.alias_size_in_bytes,
        "xla_generated_code_bytes": memory.generated_code_size_in_bytes,
        "compile_seconds": compile_seconds,
        "step_seconds": statistics.median(times),
        "step_times": times,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[8, 16, 32, 64],
        help="depths (default: 8 16 32 64; 64 takes minutes per row)",
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
                f"XLA temp {result['xla_temp_bytes'] / 2**20:.1f} MB, "
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
                f"{r['residual_arrays']} | "
                f"{r['xla_temp_bytes'] / 2**20:.1f} | "
                f"{r['xla_argument_bytes'] / 2**20:.1f} | "
                f"{r['xla_output_bytes'] / 2**20:.1f} | "
                f"{r['xla_temp_bytes'] / plain['xla_temp_bytes']:.3f} | "
                f"{r['step_seconds']:.3f} | "
                f"{r['step_seconds'] / plain['step_seconds']:.2f} |"
            )
            data["results"].append(
                {"num_layers": num_layers, "implementation": implementation} | r
            )
    depths = sorted(args.layers)

    def per_layer_rows(key):
        lines = []
        for implementation in IMPLEMENTATIONS:
            values = [results[(implementation, n)][key] for n in depths]
            per_layer = [
                (b - a) / (m - n) / 2**20
                for a, b, n, m in zip(
                    values[:-1],
                    values[1:],
                    depths[:-1],
                    depths[1:],
                    strict=True,
                )
            ]
            lines.append(
                f"| {implementation} | "
                + " | ".join(f"{value:.2f}" for value in per_layer)
                + " |"
            )
        return lines

    spans = [f"{n}->{m}" for n, m in zip(depths[:-1], depths[1:], strict=True)]
    backend = ", ".join(sorted({r["xla_backend"] for r in results.values()}))
    aliased = max(r["xla_alias_bytes"] for r in results.values())
    aliases = (
        "no argument aliased with an output"
        if aliased == 0
        else f"up to {aliased / 2**20:.1f} MB of arguments reused as outputs"
    )
    header = [
        "# Dense block under JAX: saved residuals and XLA's plan against depth",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, JAX {jax.__version__}, Keras "
        f"{env['keras']}, NumPy {env['numpy']}; {env['date']}",
        dense_block_case_line() + "with respect to the weights and x",
        "- saved: bytes of the residuals jax.ad_checkpoint."
        "print_saved_residuals lists, arguments (weights, x) left out; exact "
        "(one trace)",
        f"- XLA: the compiled step's memory_analysis() on the {backend} "
        "backend: temp = the temporary allocation XLA's buffer assignment "
        "plans (its planned peak of intermediate buffers), args = "
        "parameter buffers (weights, x), output = result buffers "
        f"(gradients); {aliases}; static, exact for these versions",
        f"- step: median of {args.repeats} calls of that compiled step "
        "(forward + gradients) after warm-up; fresh process per row",
    ]
    table = [
        "| layers | implementation | saved MB | saved / output bytes | "
        "saved / plain | residual arrays | XLA temp MB | XLA args MB | "
        "XLA output MB | temp / plain | step s | time / plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Saved MB added per layer, between depths (constant = linear in "
        "depth):",
        "",
        "| implementation | " + " | ".join(spans) + " |",
        "|---|" + "---|" * len(spans),
        *per_layer_rows("saved_bytes"),
        "",
        "XLA temp MB added per layer, between depths:",
        "",
        "| implementation | " + " | ".join(spans) + " |",
        "|---|" + "---|" * len(spans),
        *per_layer_rows("xla_temp_bytes"),
    ]
    write_results(
        "dense_block_residuals", header, table, data, args.results_dir
    )


if __name__ == "__main__":
    main()
