import os

import pytest

# Keep TensorFlow's C++ start-up chatter out of test output; it is set before
# the first import of TensorFlow, which happens when the tests collect.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backends(*names, reason): run only under these Keras backends; "
        "skipped, with the reason, under the others",
    )


def pytest_report_header(config):
    import keras

    return f"Keras {keras.__version__}, backend {keras.backend.backend()}"


def pytest_collection_modifyitems(config, items):
    import keras

    backend = keras.backend.backend()
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is None or backend in marker.args:
            continue
        reason = marker.kwargs.get("reason")
        if not reason:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.backends needs a reason"
            )
        item.add_marker(
            pytest.mark.skip(
                reason=f"{'/'.join(marker.args)} only: {reason} "
                f"(backend is {backend})"
            )
        )
