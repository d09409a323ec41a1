"""`MultiWorkerMirroredStrategy` with 2 worker processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.backend_utils import tensorflow_only

pytestmark = [tensorflow_only("tf.distribute"), pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TIMEOUT_SECONDS = 300


def _free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(output_dir):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    try:
        for index in range(2):
            env = {
                **os.environ,
                "KERAS_BACKEND": "tensorflow",
                "TF_CONFIG": json.dumps(
                    {
                        "cluster": cluster,
                        "task": {"type": "worker", "index": index},
                    }
                ),
            }
            log = open(os.path.join(output_dir, f"worker{index}.log"), "w")
            workers.append(
                (
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tests.distribute.multi_worker",
                            str(output_dir),
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
        deadline = time.monotonic() + TIMEOUT_SECONDS
        codes = []
        for process, _ in workers:
            remaining = max(deadline - time.monotonic(), 1)
            codes.append(process.wait(timeout=remaining))
        return codes
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def _log(output_dir, index):
    with open(os.path.join(output_dir, f"worker{index}.log")) as f:
        return f.read()[-3000:]


def test_two_workers_end_with_identical_weights(tmp_path):
    codes = _run_workers(tmp_path)
    for index, code in enumerate(codes):
        assert code == 0, _log(tmp_path, index)
    results = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    assert int(results[0]["replicas"]) == 2
    weights = [
        [r[f"arr_{i}"] for i in range(len(r.files) - 2)] for r in results
    ]
    assert len(weights[0]) == len(weights[1]) > 50
    for mine, other in zip(*weights, strict=True):
        np.testing.assert_array_equal(mine, other)
    assert np.isfinite(results[0]["loss"]).all()
    np.testing.assert_array_equal(results[0]["loss"], results[1]["loss"])
