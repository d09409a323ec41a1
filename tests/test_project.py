"""The project's promises about itself: install, Quickstart, CI."""

import os
import re
import subprocess
import sys

import keras_fusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def _quickstart_commands():
    readme = _read("README.md")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line and line[0] != "#"]


def test_installed_package_imports_outside_the_source_tree(tmp_path):
    # -I: neither the current directory nor PYTHONPATH is on sys.path, so
    # this imports what `pip install` put into the environment.
    code = (
        "import keras_fusion; from keras_fusion import CropAndConcat; "
        "print(keras_fusion.__version__)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == keras_fusion.__version__


def test_public_api_is_listed_in_all():
    for name in keras_fusion.__all__:
        assert hasattr(keras_fusion, name), name
    assert "CropAndConcat" in keras_fusion.__all__


def test_quickstart_has_two_commands_and_ci_runs_the_test_command():
    commands = _quickstart_commands()
    assert len(commands) == 2, commands
    test_command = commands[1]
    ci_lines = _read(".ci/run").splitlines()
    steps = [step.strip() for step in test_command.split("&&")]
    positions = [ci_lines.index(step) for step in steps]
    assert positions == sorted(positions), "CI runs the steps out of order"


def test_quickstart_main_job_is_the_demo():
    steps = [step.strip() for step in _quickstart_commands()[0].split("&&")]
    assert steps[-1] == ".venv/bin/keras-fusion demo"
    assert '.venv/bin/pip install ".[demo]"' in steps
