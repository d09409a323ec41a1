"""`keras-fusion demo`, end to end (`--quick`), and its errors."""

import contextlib
import functools
import os
import pwd
import re
import subprocess
import sys
import tempfile

import keras
import pytest

from keras_fusion import demo
from tests.backend_utils import TF_ALLOCATOR
from tests.backend_utils import tensorflow_only

SCRIPT = os.path.join(os.path.dirname(sys.executable), "keras-fusion")
# A line TensorFlow's C++ code logs (`I0000 00:00:... port.cc:153] ...`),
# or one of its start-up messages however it is formatted.
TENSORFLOW_LOG_LINE = re.compile(
    r"^[IWEF]\d{4} |cpu_feature_guard|cuda_platform|cudart_stub|"
    r"absl::InitializeLog",
    re.M,
)


def _environment(**variables):
    """This environment without TF_CPP_MIN_LOG_LEVEL (which the tests'
    conftest sets), as a user's shell has it, plus `variables`."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return {**env, **variables}


def _run_demo(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "keras_fusion", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


@pytest.mark.backends(
    "tensorflow",
    reason="the demo exports a SavedModel and reads TensorFlow's allocator",
)
@pytest.mark.slow
def test_quick_demo_runs_every_step_and_writes_its_artifacts(tmp_path):
    # As on a CPU without AVX-512, where TensorFlow leaves oneDNN, and with
    # it the CPU allocator's statistics, off.
    output = tmp_path / "out"
    result = _run_demo(
        "--quick",
        "--output",
        str(output),
        cwd=tmp_path,
        env=_environment(TF_ENABLE_ONEDNN_OPTS="0"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not TENSORFLOW_LOG_LINE.search(result.stdout + result.stderr), (
        result.stdout + result.stderr
    )
    assert re.search(
        r"^measured with TensorFlow's allocator statistics: the \S.* "
        r"allocator on (CPU|GPU):\d",
        result.stdout,
        re.M,
    ), result.stdout
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
    # The quick run learns: DenseNet-BC's held-out accuracy is far above
    # chance (0.1 for ten digits), where 16 steps of training left it.
    accuracy_line = next(
        line for line in summary.splitlines() if "held-out accuracy" in line
    )
    assert float(accuracy_line.split()[-2]) > 0.5, accuracy_line
    ratio_line = next(
        line for line in summary.splitlines() if "peak ratio" in line
    )
    assert 0 < float(ratio_line.split()[-2]) < 1
    # One row per export format, each served within the demo's bound.
    for export in ("SavedModel", "LiteRT", "ONNX"):
        row = next(
            line
            for line in summary.splitlines()
            if line.startswith(f"U-Net {export} ")
        )
        assert "max |served - Keras|" in row
        assert 0 <= float(row.split()[-2]) <= 1e-4, row
    assert (output / "unet_predictions.png").stat().st_size > 10_000
    assert (output / "unet_savedmodel" / "saved_model.pb").exists()
    assert (output / "unet.tflite").stat().st_size > 10_000
    assert (output / "unet.onnx").stat().st_size > 10_000
    artifacts = summary.split("\nArtifacts\n", 1)[1]
    for name in ("unet_savedmodel", "unet.tflite", "unet.onnx"):
        assert str(output / name) in artifacts


def test_console_script_is_installed_next_to_python():
    assert os.path.exists(SCRIPT)
    result = subprocess.run(
        [SCRIPT, "demo", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0
    assert "--quick" in result.stdout and "[step" not in result.stdout
    assert "DenseNet-BC" in result.stdout


@tensorflow_only("keeps TensorFlow's C++ log lines off the terminal")
@pytest.mark.parametrize(
    "command",
    [[SCRIPT], [sys.executable, "-m", "keras_fusion"]],
    ids=["console-script", "python-m"],
)
def test_command_keeps_tensorflow_log_lines_off_the_terminal(command):
    result = subprocess.run(
        [*command, "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(TF_ENABLE_ONEDNN_OPTS="0"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--quick" in result.stdout
    output = result.stdout + result.stderr
    assert not TENSORFLOW_LOG_LINE.search(output), output


@tensorflow_only("keeps TensorFlow's C++ log lines off the terminal")
def test_command_respects_the_users_tensorflow_log_level():
    result = subprocess.run(
        [SCRIPT, "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(TF_CPP_MIN_LOG_LEVEL="0"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^[IWEF]\d{4} ", result.stderr, re.M), result.stderr


def _log_level_after_importing(module, variables):
    code = f"import os, {module}; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(**variables),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()[-1]


@pytest.mark.parametrize("level", [None, "1"], ids=["unset", "set"])
def test_importing_keras_fusion_leaves_tensorflow_logging_alone(level):
    variables = {} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level}
    ours = _log_level_after_importing("keras_fusion", variables)
    # The reference is Keras alone: TensorFlow's own library sets the
    # variable to 1 when it is unset, at its import.
    assert ours == _log_level_after_importing("keras", variables)
    if level is not None:
        assert ours == level


@tensorflow_only(TF_ALLOCATOR)
@pytest.mark.slow
def test_memory_step_is_skipped_in_one_line_without_allocator_statistics(
    monkeypatch, capsys
):
    # Measuring processes with oneDNN off keep no CPU allocator statistics,
    # as on a TensorFlow build without oneDNN.
    monkeypatch.setattr(
        demo.memory,
        "measure_in_fresh_process",
        functools.partial(
            demo.memory.measure_in_fresh_process,
            env={"TF_ENABLE_ONEDNN_OPTS": "0"},
        ),
    )
    settings = {"densenet_depth": 16, "batch": 8}
    assert demo.memory.measure(settings) == []
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1, printed
    assert printed[0].startswith("memory step skipped: TensorFlow keeps no")
    assert "oneDNN" in printed[0]


def test_demo_errors_if_output_is_a_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    # On the TensorFlow backend, or the demo stops at the backend check.
    result = _run_demo(
        "--output",
        str(target),
        cwd=tmp_path,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 2
    assert "`--output` should be a directory" in result.stderr
    assert "which is a file" in result.stderr


@contextlib.contextmanager
def _unprivileged():
    """This user, or `nobody` when the tests run as root (as in CI), which
    can write any directory: real and effective IDs, which `os.access`
    reads, with root's kept as the saved IDs to return to."""
    if os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    os.setresgid(nobody.pw_gid, nobody.pw_gid, 0)
    os.setresuid(nobody.pw_uid, nobody.pw_uid, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)


def test_demo_errors_if_output_is_not_writable():
    # Outside pytest's temporary directories, which only their owner can
    # enter: `nobody` must reach the directory to find it unwritable.
    with tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o755)
        locked = os.path.join(parent, "locked")
        os.mkdir(locked, 0o555)
        with _unprivileged():
            with pytest.raises(ValueError, match="writable directory.*locked"):
                demo.check_output_dir(locked)


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
