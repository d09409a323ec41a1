"""`ExportServer`: exports served one after another by one process per
format, that process replaced after a failure, against NumPy's result."""

import numpy as np
import pytest

from keras_fusion._tools.serving import ExportServer


def _dense_model_and_reference():
    import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    kernel, bias = (np.asarray(w) for w in model.get_weights())
    x = np.random.default_rng(0).random((4, 3)).astype("float32")
    model(x)  # Keras's ONNX exporter refuses a model never called.
    return model, x, x @ kernel + bias


@pytest.mark.backends(
    "tensorflow",
    reason="Keras writes a SavedModel and a LiteRT file from TensorFlow",
)
@pytest.mark.parametrize("filename", ["export", "model.tflite", "model.onnx"])
def test_one_process_serves_export_after_export(filename, tmp_path):
    model, x, expected = _dense_model_and_reference()
    path = str(tmp_path / filename)
    export_format = {"export": "tf_saved_model"}.get(
        filename, filename.split(".")[-1].replace("tflite", "litert")
    )
    model.export(path, format=export_format, verbose=False)
    with ExportServer() as server:
        first = server.serve(path, x)
        process = server._processes[export_format].process
        second = server.serve(path, x[:1])
        assert server._processes[export_format].process is process
    np.testing.assert_allclose(first, expected, rtol=1e-6)
    np.testing.assert_allclose(second, expected[:1], rtol=1e-6)
    assert process.poll() == 0  # Ended by close().


@pytest.mark.backends(
    "tensorflow",
    reason="Keras writes a LiteRT file from TensorFlow",
)
def test_a_failed_export_is_reported_and_the_next_has_a_new_process(
    tmp_path,
):
    model, x, expected = _dense_model_and_reference()
    path = str(tmp_path / "model.tflite")
    model.export(path, format="litert", verbose=False)
    with ExportServer() as server:
        server.serve(path, x)
        process = server._processes["litert"].process
        with pytest.raises(RuntimeError, match="(?s)litert export.*Error"):
            server.serve(str(tmp_path / "missing.tflite"), x)
        assert "litert" not in server._processes
        assert process.poll() is not None
        np.testing.assert_allclose(server.serve(path, x), expected, rtol=1e-6)
        assert server._processes["litert"].process is not process


def test_several_inputs_to_litert_need_their_names():
    with pytest.raises(ValueError, match="input_names=None"):
        ExportServer().serve("model.tflite", [np.zeros(1), np.zeros(1)])
