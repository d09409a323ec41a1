import os

import pytest
from hypothesis import settings

# Keep TensorFlow's C++ start-up chatter out of test output; it is set before
# the first import of TensorFlow, which happens when the tests collect.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# XLA's CPU compiler without LLVM's optimisations, for the suite only (the
# benchmarks and the users keep XLA's default). The suite's JAX run is
# mostly XLA compiling, once per new shape: each conv kernel's random
# initializer alone takes 0.7 s to compile, so building DenseNet-C-40
# took 27.9 s and 4.6 s without. tests/models/test_fc_densenet.py took
# 216 s on JAX and 79 s without, and passes either way: XLA optimises
# the same graphs (its HLO passes run), only LLVM's tuning of the
# machine code is off. Set before the first import of JAX or TensorFlow,
# and inherited by the notebooks' kernels and the suite's fresh
# processes; a level given in XLA_FLAGS wins.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()

# Hypothesis profiles for the property tests (tests/*/test_properties.py).
# `max_examples` is what an eager property runs; a traced or compiled one
# runs a share of it (tests/property_cases.py, `examples`). "ci", loaded
# where the CI variable is set: the same examples on every run
# (derandomized) and no example database. "dev", the default: as many
# examples, new ones on each run, failures kept in .hypothesis/ and tried
# first the next time. "long" (HYPOTHESIS_PROFILE=long; the variable picks
# the others too): 20 times as many, for a longer search. No deadline: a
# first trace or XLA compilation can take a second on a loaded machine.
settings.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=None
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile(
    os.environ.get(
        "HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"
    )
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backends(*names, reason): run only under these Keras backends; "
        "skipped, with the reason, under the others",
    )


def pytest_report_header(config):
    import keras

    return f"Keras {keras.__version__}, backend {keras.backend.backend()}"


# Modules whose tests each run for minutes (a notebook, the demo). They go
# first, so that pytest-xdist's two workers share them from the start
# instead of one worker running the last of them while the other waits.
LONG_RUNNING_MODULES = ("tests/test_notebooks.py", "tests/test_demo.py")


# The docstring examples of the model builders run under TensorFlow only:
# they show what a builder makes of its arguments (layers, shapes,
# parameter counts), the same on every backend, while building their
# full-size models costs JAX a compilation per new weight shape (two
# DenseNet-121s took 54 s); tests/models runs every builder on every
# backend (tests/backend_utils.py, BUILT_THE_SAME_ON_EVERY_BACKEND).
BUILDER_EXAMPLES = "keras_fusion/models/"


def pytest_collection_modifyitems(config, items):
    import keras

    items.sort(
        key=lambda item: item.nodeid.split("::")[0] not in LONG_RUNNING_MODULES
    )
    backend = keras.backend.backend()
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.nodeid.startswith(
            BUILDER_EXAMPLES
        ):
            item.add_marker(
                pytest.mark.backends(
                    "tensorflow",
                    reason="a builder's docstring example, built the same "
                    "on every backend (conftest.py)",
                )
            )
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
