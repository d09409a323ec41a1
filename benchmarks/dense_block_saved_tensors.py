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
  (`keras_fusion._tools.residuals.saved_residuals`): every storage autograd
  saves
  (`torch.autograd.graph.saved_tensors_hooks`, each storage once), the
  inputs `torch.utils.checkpoint` keeps for its recomputation and the
  generator state it keeps per checkpoint (5 KB on the CPU), leaving out
  the function's arguments (weights and input), which exist anyway.
  Exact: one forward pass, counted tensor by tensor.
- activations: the same without the generator states.
- RSS: the process's peak resident memory (`ru_maxrss`), a real but
  coarse reading: "first step" is how much the first training step
  raised it (the block built and called once before, outside autograd),
  "peak" the reading after all steps (the interpreter, PyTorch and
  TensorFlow, which the fresh-process runner imports, included). glibc's
  heap keeps much of what a step frees, so later steps raise the peak
  further, more so for the recomputing blocks, which free and allocate
  each layer's tensors again in the backward pass.
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

from benchmarks.common import DENSE_BLOCK_IMPLEMENTATIONS  # noqa: E402
from benchmarks.common import RESULTS_DIR  # noqa: E402
from benchmarks.common import dense_block_case  # noqa: E402
from benchmarks.common import dense_block_case_line  # noqa: E402
from benchmarks.common import environment  # noqa: E402
from benchmarks.common import run_worker  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

IMPLEMENTATIONS = DENSE_BLOCK_IMPLEMENTATIONS


def worker(implementation, num_layers, repeats):
    import resource
    import sys

    import keras
    import torch

    from keras_fusion._tools.residuals import GENERATOR_STATE
    from keras_fusion._tools.residuals import saved_residuals

    assert keras.backend.backend() == "torch", keras.backend.backend()

    def peak_rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    block, x, output_bytes = dense_block_case(implementation, num_layers)
    inputs = torch.tensor(x)
    with torch.no_grad():
        block(inputs[:1], training=False)
    rss_before = peak_rss()

    def step():
        inputs.grad = None
        for variable in block.trainable_variables:
            variable.value.grad = None
        y = block(inputs.requires_grad_(True), training=True)
        torch.sum(y).backward()

    step()
    first_step_rss = peak_rss() - rss_before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_rss_bytes = peak_rss()
    # Counted after the steps, so that its hooks' bookkeeping is not in
    # the RSS readings.
    kept = [
        r for r in saved_residuals(block, x) if not r[3].startswith("from the")
    ]
    saved_bytes = sum(r[2] for r in kept)
    states = [r for r in kept if r[3] == GENERATOR_STATE]
    return {
        "saved_bytes": saved_bytes,
        "activation_bytes": saved_bytes - sum(r[2] for r in states),
        "generator_states": len(states),
        "saved_arrays": len(kept),
        "output_bytes": output_bytes,
        "first_step_rss_bytes": first_step_rss,
        "peak_rss_bytes": peak_rss_bytes,
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
                f"first step RSS +{result['first_step_rss_bytes'] / 2**20:.0f}"
                f" MB, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MB, "
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
            first = r["first_step_rss_bytes"]
            rss_ratio = first / plain["first_step_rss_bytes"]
            rows.append(
                f"| {num_layers} | {implementation} | "
                f"{r['saved_bytes'] / 2**20:.1f} | "
                f"{r['activation_bytes'] / 2**20:.1f} | "
                f"{r['saved_bytes'] / r['output_bytes']:.2f} | "
                f"{r['saved_bytes'] / plain['saved_bytes']:.3f} | "
                f"{r['saved_arrays']} | "
                f"{r['generator_states']} | "
                f"{r['first_step_rss_bytes'] / 2**20:.0f} | "
                f"{rss_ratio:.2f} | "
                f"{r['peak_rss_bytes'] / 2**20:.0f} | "
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
        dense_block_case_line() + "with respect to the weights and x, eager",
        "- saved: bytes autograd saves (torch.autograd.graph."
        "saved_tensors_hooks, each storage once) plus the inputs and "
        "generator states torch.utils.checkpoint keeps, arguments "
        "(weights, x) left out; exact (one forward pass); activations: "
        "without the generator states (5 KB per checkpoint)",
        "- RSS: the fresh process's peak resident memory (ru_maxrss); "
        "first step: how much the first training step raised it (the "
        "block built and called once before); peak: after all steps, "
        "the interpreter, PyTorch and TensorFlow (which the fresh-process "
        "runner imports) included. Coarse: glibc's heap keeps much of "
        "what the steps free, so later steps raise the peak further",
        f"- step: median of {args.repeats} eager training steps (forward + "
        "gradients) after a warm-up step; fresh process per row",
    ]
    table = [
        "| layers | implementation | saved MB | activations MB | "
        "saved / output bytes | saved / plain | saved arrays | "
        "generator states | first step RSS MB | first step RSS / plain | "
        "peak RSS MB | step s | time / plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
