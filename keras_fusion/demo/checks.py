"""What the demo needs before it starts: the TensorFlow backend, a writable
output directory, its extra dependencies."""

import os

_INSTALL_HINT = (
    "The demo needs scikit-learn (its digits data set) and matplotlib; "
    'install them with: pip install "keras-fusion[demo]"'
)


def check_backend():
    """The demo needs the TensorFlow backend: it measures TensorFlow's
    allocator and exports a SavedModel."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            "`keras-fusion demo` measures TensorFlow's allocator and exports "
            "a SavedModel: run it with KERAS_BACKEND=tensorflow. Received: "
            f"backend={backend!r}"
        )


def check_output_dir(path):
    """Create `path` if needed; raise `ValueError` if it cannot hold files."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"`--output` should be a directory. Received: {path!r}, which "
            "is a file"
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"`--output` should be a directory that can be created. "
            f"Received: {path!r} ({error.strerror})"
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(
            f"`--output` should be a writable directory. Received: {path!r}, "
            "which is not writable"
        )
    return os.path.abspath(path)


def check_demo_dependencies():
    """Raise `SystemExit` with the install command if an extra is missing."""
    for module in ("sklearn", "matplotlib"):
        try:
            __import__(module)
        except ImportError as error:
            raise SystemExit(
                f"{_INSTALL_HINT} (missing: {error.name})"
            ) from error
