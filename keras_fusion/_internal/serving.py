"""Serving a SavedModel the way a deployment does: without keras_fusion."""

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

_SERVE_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_path, outputs_path = sys.argv[1:4]
    data = np.load(inputs_path)
    inputs = [data[f"x{i}"] for i in range(len(data.files))]
    loaded = tf.saved_model.load(export_dir)
    outputs = loaded.serve(inputs if len(inputs) > 1 else inputs[0])
    if "keras_fusion" in sys.modules:
        sys.exit("keras_fusion was imported while serving the export")
    np.save(outputs_path, np.asarray(outputs))
    """
)


def serve_in_fresh_process(export_dir, inputs, timeout=600):
    """Outputs of `model.export()`'s `serve` endpoint, computed in a new
    Python process (isolated mode: no current directory or PYTHONPATH on
    `sys.path`) that loads the SavedModel with `tf.saved_model.load` and
    fails if anything imports keras_fusion.

    Args:
        export_dir: the directory `model.export()` wrote.
        inputs: one array, or a list of arrays for a model with several
            inputs.
        timeout: seconds the process may take.

    Returns:
        The outputs as a NumPy array.
    """
    arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    with tempfile.TemporaryDirectory() as directory:
        inputs_path = os.path.join(directory, "inputs.npz")
        outputs_path = os.path.join(directory, "outputs.npy")
        np.savez(
            inputs_path,
            **{f"x{i}": np.asarray(x) for i, x in enumerate(arrays)},
        )
        result = subprocess.run(
            [sys.executable, "-I", "-c", _SERVE_SCRIPT, str(export_dir)]
            + [inputs_path, outputs_path],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                "Serving the export in a fresh process failed:\n"
                + result.stderr[-3000:]
            )
        return np.load(outputs_path)
