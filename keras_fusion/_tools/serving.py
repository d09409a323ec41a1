"""Running an export the way a deployment does: without keras_fusion.

Each format is run in a new Python process (isolated mode: no current
directory or PYTHONPATH on `sys.path`) by the runtime its users deploy
with, and the process fails if anything imports keras_fusion:

- a SavedModel directory (`model.export(path)`): `tf.saved_model.load`
  and its `serve` endpoint;
- a `.tflite` file (`model.export(path, format="litert")`): the LiteRT
  interpreter of the `ai-edge-litert` package, through the model's
  signature runner;
- an `.onnx` file (`model.export(path, format="onnx")`): an ONNX Runtime
  `InferenceSession`.

The LiteRT and ONNX processes must not import TensorFlow or Keras either:
a phone or an ONNX server has neither.
"""

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

    export_format, path, inputs_path, outputs_path = sys.argv[1:5]
    names = sys.argv[5:]
    data = np.load(inputs_path)
    inputs = [data[f"x{i}"] for i in range(len(data.files))]
    if export_format == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        outputs = loaded.serve(inputs if len(inputs) > 1 else inputs[0])
        outputs = np.asarray(outputs)
    elif export_format == "litert":
        from ai_edge_litert.interpreter import Interpreter

        # The signature runner resizes every input to the array it gets,
        # so a model exported with None sizes runs at any size.
        runner = Interpreter(model_path=path).get_signature_runner()
        expected = sorted(runner.get_input_details())
        names = names or expected
        if sorted(names) != expected:
            sys.exit(f"LiteRT inputs {expected}, given {sorted(names)}")
        results = runner(**dict(zip(names, inputs)))
        outputs = results[sorted(results)[0]]
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(
            path, providers=["CPUExecutionProvider"]
        )
        feeds = [i.name for i in session.get_inputs()]
        outputs = session.run(None, dict(zip(feeds, inputs, strict=True)))[0]
    for module in ("keras_fusion", "tensorflow", "keras"):
        if module in sys.modules and (
            module == "keras_fusion" or export_format != "tf_saved_model"
        ):
            sys.exit(f"{module} was imported while running the export")
    np.save(outputs_path, np.asarray(outputs))
    """
)


def export_format_of(path):
    """The export format a path holds: `"litert"` for a `.tflite` file,
    `"onnx"` for an `.onnx` file, `"tf_saved_model"` for a directory."""
    path = str(path)
    if path.endswith(".tflite"):
        return "litert"
    if path.endswith(".onnx"):
        return "onnx"
    return "tf_saved_model"


def serve_in_fresh_process(path, inputs, input_names=None, timeout=600):
    """Outputs of an exported model for `inputs`, computed in a new Python
    process by the format's own runtime (see the module docstring).

    Args:
        path: what `model.export()` wrote: a SavedModel directory, a
            `.tflite` file or an `.onnx` file.
        inputs: one array, or a list of arrays for a model with several
            inputs, in the order of the model's inputs.
        input_names: the names of the model's inputs
            (`[t.name for t in model.inputs]`). LiteRT feeds inputs by
            name (its signature lists them sorted), so a LiteRT model
            with several inputs needs them; the other formats take the
            model's order.
        timeout: seconds the process may take.

    Returns:
        The (first) output as a NumPy array.
    """
    arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    export_format = export_format_of(path)
    if len(arrays) == 1:
        # One input: each runtime has just one to feed, whatever its name.
        input_names = []
    elif input_names is None:
        if export_format == "litert":
            raise ValueError(
                "Running a LiteRT model with several inputs needs their "
                "names: pass `input_names=[t.name for t in model.inputs]`. "
                f"Received: {len(arrays)} inputs and input_names=None"
            )
        input_names = []
    with tempfile.TemporaryDirectory() as directory:
        inputs_path = os.path.join(directory, "inputs.npz")
        outputs_path = os.path.join(directory, "outputs.npy")
        np.savez(
            inputs_path,
            **{f"x{i}": np.asarray(x) for i, x in enumerate(arrays)},
        )
        result = subprocess.run(
            [sys.executable, "-I", "-c", _SERVE_SCRIPT, export_format]
            + [str(path), inputs_path, outputs_path, *input_names],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"Running the {export_format} export in a fresh process "
                "failed:\n" + result.stderr[-3000:]
            )
        return np.load(outputs_path)
