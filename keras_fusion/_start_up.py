"""The `keras-fusion` command's start-up: TensorFlow's C++ log lines kept
off the terminal.

Only the standard library, and nothing of keras_fusion: the package's
`__init__.py` calls `quiet_tensorflow_start_up` before it imports Keras,
because the command (`keras-fusion`, `python -m keras_fusion`) imports the
package, and TensorFlow with it, before `keras_fusion.cli.main` runs. In
every other program the call returns at once.
"""

import contextlib
import os
import re
import sys
import tempfile

# The module names `python -m` runs the command as.
_COMMAND_MODULES = ("keras_fusion", "keras_fusion.__main__")
# TensorFlow's start-up lines that TF_CPP_MIN_LOG_LEVEL does not silence:
# logged while its libraries load, before absl::InitializeLog, when absl
# writes every message to standard error (e.g. `I0000 ... port.cc` on
# oneDNN, `I0000 ... cudart_stub.cc` on a machine without CUDA).
_START_UP_LINE = re.compile(
    r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog\(\))"
)


def quiet_tensorflow_start_up():
    """Keep TensorFlow's C++ log lines off the terminal in the command.

    Called by `keras_fusion/__init__.py` before it imports Keras: the
    console script and `python -m keras_fusion` import the package, and
    with it Keras and TensorFlow, before `main` runs (Python imports a
    package before any module of it), and TensorFlow logs at that import
    and at its first op. Does nothing in other programs
    (importing keras_fusion leaves their TensorFlow logging alone) or when
    the user set `TF_CPP_MIN_LOG_LEVEL`. Otherwise it sets it to 3 and
    imports Keras with the informational lines that TensorFlow logs while
    loading (which ignore `TF_CPP_MIN_LOG_LEVEL`) left out of standard
    error; everything else written there meanwhile is written afterwards.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or not _started_as_command():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _start_up_lines_left_out():
        import keras  # noqa: F401


def _started_as_command():
    """Whether this process is `keras-fusion ...` or `python -m
    keras_fusion ...`."""
    if not sys.argv:
        return False
    # The console script; pip's launchers on Windows add these suffixes.
    program = re.sub(r"(-script\.pyw?|\.exe)$", "", sys.argv[0])
    if os.path.basename(program) == "keras-fusion":
        return True
    # `python -m`: argv[0] is "-m" while the package is being imported.
    if sys.argv[0] != "-m":
        return False
    arguments = getattr(sys, "orig_argv", [])[1:]
    for index, argument in enumerate(arguments):
        if argument.startswith("-m"):
            module = argument[2:] or next(iter(arguments[index + 1 :]), "")
            return module in _COMMAND_MODULES
    return False


@contextlib.contextmanager
def _start_up_lines_left_out():
    """Standard error (the file descriptor, which TensorFlow's C++ code
    writes to) goes to a temporary file; on exit, what was written there
    is written to standard error but TensorFlow's start-up lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):
        yield  # no standard error file descriptor to redirect
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            for line in text.splitlines(keepends=True):
                if not _START_UP_LINE.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
