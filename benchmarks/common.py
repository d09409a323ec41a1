"""Shared machinery of the benchmarks: subprocess workers, tables, files.

Every configuration runs in a fresh Python process, so that one
configuration's allocations and compiled graphs never count against
another's. A worker measures one training step's TensorFlow CPU allocator
peak (`reset_memory_stats` / `get_memory_info("CPU:0")["peak"]`, minus the
memory in use before the step) and the step times after warm-up.
"""

import json
import os
import platform
import subprocess
import sys
import time


def run_worker(module, args, timeout=1800):
    """Run `python -m module --worker *args`; return its JSON result."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", module, "--worker", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"worker {module} {args} failed:\n{result.stderr[-4000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def environment():
    """Machine and versions, for the table's header."""
    import keras
    import numpy as np
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores, {memory}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(name, header_lines, table_lines, data):
    """Print the table and write it (and the raw data) to results/."""
    text = "\n".join([*header_lines, "", *table_lines, ""])
    print(text)
    directory = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
