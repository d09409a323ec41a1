"""What PyTorch keeps for a dense block's backward pass, against its depth.

    python -m benchmarks.dense_block_saved_tensors [--layers 8 16 32]
        [--repeats 5]

Runs on the PyTorch backend (it sets `KERAS_BACKEND=torch`). For the plain
block (`recompute=False`) and `MemoryEfficientDenseBlock(recompute="full")`
and `"concat_bn"`, at growth rate 12, 24 input channels, 32x32, batch 32
(the configuration of `benchmarks.dense_block_residuals`, its JAX
counterpart), the training step is the gradients of `sum(block(x))` with
respect to the weights and `x`, run eagerly as PyTorch runs a Keras
training step. Each configuration runs in a fresh process and reports:

- saved: the bytes the backward pass keeps from the forward pass
  (`benchmarks.residuals.saved_residuals`): every storage autograd saves
  (`torch.autograd.graph.saved_tensors_hooks`, each storage once), the
  inputs `torch.utils.checkpoint` keeps for its recomputation and the
  generator state it keeps per checkpoint (5 KB on the CPU), leaving out
  the function's arguments (weights and input), which exist anyway.
  Exact: one forward pass, counted tensor by tensor.
- activations: the same without the generator states.
- peak RSS: the process's peak resident memory (`ru_maxrss`) after the
  measured steps, a real but coarse reading (it includes the
  interpreter, PyTorch, TensorFlow, which the fresh-process runner
  imports, and the allocator's caching), for a sense of the saving in
  the process.
- step: the median time of `--repeats` training steps (forward,
  gradients) after a warm-up step.

Results go to `benchmarks/results/dense_block_saved_tensors.{md,json}`
(`--results-dir` picks another directory, for trial runs).
"""

import os

os.environ["KERAS_BACKEND"] = "torch"

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
    import resource
    import sys

    import keras
    import numpy as np
    import torch

    from benchmarks.residuals import GENERATOR_STATE
    from benchmarks.residuals import saved_residuals
    from keras_fusion import MemoryEfficientDenseBlock

    assert keras.backend.backend() == "torch", keras.backend.backend()
    keras.utils.set_random_seed(0)
    recompute = False if implementation == "plain" else implementation
    block = MemoryEfficientDenseBlock(
        num_layers, GROWTH_RATE, recompute=recompute
    )
    x = np.random.default_rng(0).standard_normal(
        (BATCH, SIZE, SIZE, CHANNELS), dtype="float32"
    )
    kept = [
        r for r in saved_residuals(block, x) if not r[3].startswith("from the")
    ]
    saved_bytes = sum(r[2] for r in kept)
    states = [r for r in kept if r[3] == GENERATOR_STATE]

    inputs = torch.tensor(x)

    def step():
        inputs.grad = None
        for variable in block.trainable_variables:
            variable.value.grad = None
        y = block(inputs.requires_grad_(True), training=True)
        torch.sum(y).backward()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    output_bytes = BATCH * SIZE * SIZE * (CHANNELS + num_layers * GROWTH_RATE)
    return {
        "saved_bytes": saved_bytes,
        "activation_bytes": saved_bytes - sum(r[2] for r in states),
        "generator_states": len(states),
        "saved_arrays": len(kept),
        "output_bytes": output_bytes * 4,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        * 1024,
        "tensorflow_imported": "tensorflow" in sys.modules,
        "step_seconds": statistics.median(times),
        "step_times": times,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers", type=int, nargs="+", default=[8, 16, 32], help="depths"
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
                f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MB, "
                f"{result['step_seconds']:.3f} s",
                flush=True,
            )

    import torch

    env = environment()
    rows = []
    data = {
        "environment": {**env, "torch": torch.__version__},
        "results": [],
    }
    for num_layers in args.layers:
        plain = results[("plain", num_layers)]
        for implementation in IMPLEMENTATIONS:
            r = results[(implementation, num_layers)]
            rows.append(
                f"| {num_layers} | {implementation} | "
                f"{r['saved_bytes'] / 2**20:.1f} | "
                f"{r['activation_bytes'] / 2**20:.1f} | "
                f"{r['saved_bytes'] / r['output_bytes']:.2f} | "
                f"{r['saved_bytes'] / plain['saved_bytes']:.3f} | "
                f"{r['saved_arrays']} | "
                f"{r['generator_states']} | "
                f"{r['peak_rss_bytes'] / 2**20:.0f} | "
                f"{r['peak_rss_bytes'] / plain['peak_rss_bytes']:.2f} | "
                f"{r['step_seconds']:.3f} | "
                f"{r['step_seconds'] / plain['step_seconds']:.2f} |"
            )
            data["results"].append(
                {"num_layers": num_layers, "implementation": implementation} | r
            )
    depths = sorted(args.layers)
    spans = [f"{n}->{m}" for n, m in zip(depths[:-1], depths[1:], strict=True)]
    per_layer = []
    for implementation in IMPLEMENTATIONS:
        values = [results[(implementation, n)]["saved_bytes"] for n in depths]
        steps = [
            (b - a) / (m - n) / 2**20
            for a, b, n, m in zip(
                values[:-1], values[1:], depths[:-1], depths[1:], strict=True
            )
        ]
        per_layer.append(
            f"| {implementation} | "
            + " | ".join(f"{value:.2f}" for value in steps)
            + " |"
        )
    header = [
        "# Dense block under PyTorch: what autograd keeps against depth",
        "",
        f"- machine: {env['machine']}",
        f"- versions: Python {env['python']}, PyTorch {torch.__version__}, "
        f"Keras {env['keras']}, NumPy {env['numpy']}; {env['date']}",
        f"- growth rate {GROWTH_RATE}, {CHANNELS} input channels, "
        f"{SIZE}x{SIZE}, batch {BATCH}, float32; gradients of sum(block(x)) "
        "with respect to the weights and x, eager",
        "- saved: bytes autograd saves (torch.autograd.graph."
        "saved_tensors_hooks, each storage once) plus the inputs and "
        "generator states torch.utils.checkpoint keeps, arguments "
        "(weights, x) left out; exact (one forward pass); activations: "
        "without the generator states (5 KB per checkpoint)",
        "- peak RSS: the fresh process's ru_maxrss after the steps "
        "(interpreter, PyTorch and TensorFlow, which the fresh-process "
        "runner imports, included; coarse)",
        f"- step: median of {args.repeats} eager training steps (forward + "
        "gradients) after a warm-up step; fresh process per row",
    ]
    table = [
        "| layers | implementation | saved MB | activations MB | "
        "saved / output bytes | saved / plain | saved arrays | "
        "generator states | peak RSS MB | RSS / plain | step s | "
        "time / plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Saved MB added per layer, between depths (constant = linear in "
        "depth):",
        "",
        "| implementation | " + " | ".join(spans) + " |",
        "|---|" + "---|" * len(spans),
        *per_layer,
    ]
    write_results(
        "dense_block_saved_tensors", header, table, data, args.results_dir
    )


if __name__ == "__main__":
    main()
