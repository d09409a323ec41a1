"""`keras-fusion demo`, end to end (`--quick`), and its errors."""

import os
import subprocess
import sys

import keras
import pytest

from keras_fusion import demo


def _run_demo(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "keras_fusion", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.backends(
    "tensorflow",
    reason="the demo exports a SavedModel and reads TensorFlow's allocator",
)
@pytest.mark.slow
def test_quick_demo_runs_every_step_and_writes_its_artifacts(tmp_path):
    output = tmp_path / "out"
    result = _run_demo("--quick", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for step in range(1, 5):
        assert f"[step {step}/5]" in result.stdout
    summary = result.stdout.split("\nSummary\n", 1)[1]
    for metric in (
        "held-out pixel accuracy",
        "held-out foreground IoU",
        "held-out accuracy",
        "peak ratio True / False",
        "max |served - Keras|",
    ):
        assert metric in summary
    ratio_line = next(
        line for line in summary.splitlines() if "peak ratio" in line
    )
    assert 0 < float(ratio_line.split()[-2]) < 1
    assert (output / "unet_predictions.png").stat().st_size > 10_000
    assert (output / "unet_savedmodel" / "saved_model.pb").exists()


def test_console_script_is_installed_next_to_python():
    script = os.path.join(os.path.dirname(sys.executable), "keras-fusion")
    assert os.path.exists(script)
    result = subprocess.run(
        [script, "demo", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0
    assert "--quick" in result.stdout and "[step" not in result.stdout
    assert "DenseNet-BC" in result.stdout


def test_demo_errors_if_output_is_a_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    result = _run_demo("--output", str(target), cwd=tmp_path)
    assert result.returncode == 2
    assert "`--output` should be a directory" in result.stderr
    assert "which is a file" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_demo_errors_if_output_is_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="writable directory.*locked"):
        demo.check_output_dir(str(locked))


def test_demo_errors_if_output_cannot_be_created(tmp_path):
    parent = tmp_path / "file"
    parent.write_text("")
    with pytest.raises(ValueError, match="can be created.*file/sub"):
        demo.check_output_dir(str(parent / "sub"))


def test_demo_names_the_extra_when_a_dependency_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(SystemExit, match=r'pip install "keras-fusion\[demo\]"'):
        demo.check_demo_dependencies()


def test_demo_names_the_backend_it_needs(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow.*'jax'"):
        demo.check_backend()
