"""Running an export the way a deployment does: without keras_fusion.

Each format is run in a separate Python process (isolated mode: no
current directory or PYTHONPATH on `sys.path`) by the runtime its users
deploy with, and the process fails if anything imports keras_fusion:

- a SavedModel directory (`model.export(path)`): `tf.saved_model.load`
  and its `serve` endpoint;
- a `.tflite` file (`model.export(path, format="litert")`): the LiteRT
  interpreter of the `ai-edge-litert` package, through the model's
  signature runner;
- an `.onnx` file (`model.export(path, format="onnx")`): an ONNX Runtime
  `InferenceSession`.

The LiteRT and ONNX processes must not import TensorFlow or Keras either:
a phone or an ONNX server has neither.

`serve_in_fresh_process` starts one process for one export (the demo).
`ExportServer` keeps one process per format and sends it export after
export (the test suite, which serves hundreds: importing TensorFlow alone
takes 4 to 8 s of a CI core). Each request loads its export afresh, and
the modules check runs after every request, so a served export sees what
it would in a fresh process.
"""

import json
import os
import queue
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np

_SERVE_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys
    import traceback
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np


    def serve(export_format, path, inputs_path, outputs_path, names):
        data = np.load(inputs_path)
        inputs = [data[f"x{i}"] for i in range(len(data.files))]
        if export_format == "tf_saved_model":
            import tensorflow as tf

            loaded = tf.saved_model.load(path)
            outputs = loaded.serve(inputs if len(inputs) > 1 else inputs[0])
            outputs = np.asarray(outputs)
        elif export_format == "litert":
            from ai_edge_litert.interpreter import Interpreter

            # The signature runner resizes every input to the array it
            # gets, so a model exported with None sizes runs at any size.
            runner = Interpreter(model_path=path).get_signature_runner()
            expected = sorted(runner.get_input_details())
            names = names or expected
            if sorted(names) != expected:
                raise ValueError(
                    f"LiteRT inputs {expected}, given {sorted(names)}"
                )
            results = runner(**dict(zip(names, inputs)))
            outputs = results[sorted(results)[0]]
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(
                path, providers=["CPUExecutionProvider"]
            )
            feeds = [i.name for i in session.get_inputs()]
            outputs = session.run(
                None, dict(zip(feeds, inputs, strict=True))
            )[0]
        np.save(outputs_path, np.asarray(outputs))


    def forbidden_import(export_format):
        for module in ("keras_fusion", "tensorflow", "keras"):
            if module in sys.modules and (
                module == "keras_fusion" or export_format != "tf_saved_model"
            ):
                return f"{module} was imported while running the export"
        return None


    if sys.argv[1] == "--serve-requests":
        # One JSON request per line on stdin, one JSON reply per line on
        # stdout, until stdin closes. Whatever else writes to stdout (a
        # runtime's C++ logging included) goes to stderr instead.
        replies = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        export_format = sys.argv[2]
        for line in sys.stdin:
            request = json.loads(line)
            try:
                serve(export_format, *request)
                error = forbidden_import(export_format)
            except Exception:
                error = traceback.format_exc()
            print(json.dumps(error), file=replies, flush=True)
    else:
        export_format = sys.argv[1]
        serve(export_format, *sys.argv[2:5], sys.argv[5:])
        error = forbidden_import(export_format)
        if error:
            sys.exit(error)
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


def _arrays_and_names(export_format, inputs, input_names):
    arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    if len(arrays) == 1:
        # One input: each runtime has just one to feed, whatever its name.
        return arrays, []
    if input_names is None:
        if export_format == "litert":
            raise ValueError(
                "Running a LiteRT model with several inputs needs their "
                "names: pass `input_names=[t.name for t in model.inputs]`. "
                f"Received: {len(arrays)} inputs and input_names=None"
            )
        return arrays, []
    return arrays, list(input_names)


def _save_inputs(directory, arrays):
    inputs_path = os.path.join(directory, "inputs.npz")
    np.savez(
        inputs_path, **{f"x{i}": np.asarray(x) for i, x in enumerate(arrays)}
    )
    return inputs_path, os.path.join(directory, "outputs.npy")


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
    export_format = export_format_of(path)
    arrays, names = _arrays_and_names(export_format, inputs, input_names)
    with tempfile.TemporaryDirectory() as directory:
        inputs_path, outputs_path = _save_inputs(directory, arrays)
        result = subprocess.run(
            [sys.executable, "-I", "-c", _SERVE_SCRIPT, export_format]
            + [str(path), inputs_path, outputs_path, *names],
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


class ExportServer:
    """Serves exports in long-lived processes, one per format.

    `serve` gives what `serve_in_fresh_process` gives, but the format's
    process (started at its first export) stays for the next export, so
    its runtime is imported once. A process whose export fails, that
    dies or that overruns its timeout is replaced at the next request;
    `close` (or leaving a `with` block) ends them all, as does the end of
    the Python process that started them (their stdin closes).

    Example:

    ```python
    with ExportServer() as server:
        outputs = server.serve("model.onnx", images)
    ```
    """

    def __init__(self):
        self._processes = {}

    def serve(self, path, inputs, input_names=None, timeout=600):
        """Outputs of an exported model for `inputs`: the arguments and
        the result of `serve_in_fresh_process`. An export that fails to
        load or run raises a `RuntimeError` with its traceback."""
        export_format = export_format_of(path)
        arrays, names = _arrays_and_names(export_format, inputs, input_names)
        with tempfile.TemporaryDirectory() as directory:
            inputs_path, outputs_path = _save_inputs(directory, arrays)
            request = [str(path), inputs_path, outputs_path, names]
            error = self._send(export_format, request, timeout)
            if error:
                raise RuntimeError(
                    f"Running the {export_format} export in its serving "
                    "process failed:\n" + error[-3000:]
                )
            return np.load(outputs_path)

    def close(self):
        """Ends every serving process."""
        for served in self._processes.values():
            served.end()
        self._processes.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _send(self, export_format, request, timeout):
        if export_format not in self._processes:
            self._processes[export_format] = _ServingProcess(export_format)
        served = self._processes[export_format]
        process, replies = served.process, served.replies
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            reply, cause = replies.get(timeout=timeout), None
        except OSError as error:
            reply, cause = None, f"the request could not be sent: {error}"
        except queue.Empty:
            reply, cause = None, f"no reply in {timeout} s"
            process.kill()
        error = None if reply is None else json.loads(reply)
        if reply is None or error:
            # Failed, died (a crash in the runtime) or overran: the next
            # request starts a new process, whatever this one holds.
            del self._processes[export_format]
            stderr = served.end()
        if reply is None:
            cause = cause or f"the process exited with {process.returncode}"
            return f"{cause}; its stderr:\n{stderr}"
        return error


class _ServingProcess:
    """One format's serving process, its replies as they come (read by a
    thread, so that a reply can be waited for with a timeout) and its
    stderr."""

    def __init__(self, export_format):
        # The runtime's own chatter (TensorFlow's C++ logging) goes to a
        # file, where no unread pipe can fill up and stall the process;
        # its tail is reported if the process fails.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _SERVE_SCRIPT, "--serve-requests"]
            + [export_format],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.replies = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def end(self):
        """Ends the process (closing its stdin ends its loop) and gives
        the tail of its stderr."""
        try:
            self.process.stdin.close()
        except OSError:
            pass  # Already dead, its end of the pipe gone.
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join()
        self.process.stdout.close()
        self.log.seek(0)
        stderr = self.log.read()[-3000:]
        self.log.close()
        return stderr
