"""The tutorials in `notebooks/`: committed with their outputs, run top to
bottom, and reproduce the examples of the seed articles.

The slow test executes every notebook in a fresh kernel of this Python
(`sys.executable`, with the source tree first on its `PYTHONPATH` like the
rest of the tests) and fails on any error, including the notebooks' own
assert cells, which check the seed examples against the articles' arrays.
The outputs, committed and fresh, are also compared here with the text the
articles print.
"""

import glob
import json
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = [
    "01_concatenation.ipynb",
    "02_padding_and_cropping.ipynb",
    "03_unet_crop_and_concat.ipynb",
    "04_add_vs_concat.ipynb",
    "05_memory_efficient_densenet.ipynb",
    "06_export.ipynb",
    "07_tiramisu.ipynb",
    "08_pretrained_encoders.ipynb",
    "09_detection_necks.ipynb",
]
# Figures (PNG outputs) each notebook commits.
FIGURES = {
    "03_unet_crop_and_concat.ipynb": 3,
    "04_add_vs_concat.ipynb": 1,
    "05_memory_efficient_densenet.ipynb": 1,
    "07_tiramisu.ipynb": 2,
    "08_pretrained_encoders.ipynb": 1,
    "09_detection_necks.ipynb": 2,
}
KERNEL_NAME = "keras-fusion-tests"
CELL_TIMEOUT = 600

# The articles' printed results, copied from them, keyed by notebook and by
# the tag of the cell that reproduces them. The web pages lost the original
# line breaks and indentation, so outputs are compared token by token.
SEED_OUTPUTS = {
    "01_concatenation.ipynb": {
        # Seed 001, "ディープラーニングにおけるconcatenateの使用について".
        "seed-001-rows": """
            array([[1, 2],
            [3, 4],
            [5, 6]])
            """,
        "seed-001-columns": """
            array([[1, 2, 5],
            [3, 4, 6]])
            """,
        # Seed 000, "深度学习:Concatenate的理解".
        "seed-000-axis0": """
            [[[ 1.  2.]
              [ 2.  3.]]
             [[ 4.  4.]
              [ 5.  3.]]
             [[ 7.  4.]
              [ 8.  4.]]
             [[ 2. 10.]
              [15. 11.]]]
            """,
        "seed-000-axis1": """
            [[[ 1.  2.]
              [ 2.  3.]
              [ 7.  4.]
              [ 8.  4.]]
             [[ 4.  4.]
              [ 5.  3.]
              [ 2. 10.]
              [15. 11.]]]
            """,
        "seed-000-axis2": """
            [[[ 1.  2.  7.  4.]
              [ 2.  3.  8.  4.]]
             [[ 4.  4.  2. 10.]
              [ 5.  3. 15. 11.]]]
            """,
        "seed-000-default": """
            [[[ 1.  2.  7.  4.]
              [ 2.  3.  8.  4.]]
             [[ 4.  4.  2. 10.]
              [ 5.  3. 15. 11.]]]
            """,
    },
    "02_padding_and_cropping.ipynb": {
        # Seed 003, "【深度学习】深入浅出神经网络框架的模型元件
        # (常用层和卷积层)".
        "seed-003-pad-1-0": (
            "[[0. 0. 0. 0.] [0. 1. 2. 3.] [0. 4. 5. 6.] [0. 7. 8. 9.]]"
        ),
        "seed-003-pad-2-0": (
            "[[0. 0. 0. 0. 0.] [0. 0. 0. 0. 0.] [0. 0. 1. 2. 3.] "
            "[0. 0. 4. 5. 6.] [0. 0. 7. 8. 9.]]"
        ),
        "seed-003-pad-1-1": (
            "[[0. 0. 0. 0. 0.] [0. 1. 2. 3. 0.] [0. 4. 5. 6. 0.] "
            "[0. 7. 8. 9. 0.] [0. 0. 0. 0. 0.]]"
        ),
    },
}


def _read(name):
    return nbformat.read(os.path.join(NOTEBOOKS_DIR, name), as_version=4)


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _output_text(cell):
    """What a cell printed and displayed as text."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type == "execute_result":
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def _assert_seed_outputs(name, notebook):
    tagged = {
        tag: cell
        for cell in _code_cells(notebook)
        for tag in cell.metadata.get("tags", [])
    }
    for tag, expected in SEED_OUTPUTS.get(name, {}).items():
        assert tag in tagged, f"{name}: no cell tagged {tag!r}"
        printed = " ".join(_output_text(tagged[tag]).split())
        assert f" {' '.join(expected.split())} " in f" {printed} ", (
            f"{name}, cell {tag!r}: the output is not what the article "
            f"prints.\nExpected:\n{expected}\nGot:\n{printed}"
        )


def _kernel_manager(directory):
    """A kernel of this Python that imports keras_fusion from the source
    tree, whatever kernels the machine has installed as `python3`."""
    spec_dir = os.path.join(directory, "kernels", KERNEL_NAME)
    os.makedirs(spec_dir)
    python_path = [ROOT, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    spec = {
        "argv": [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
        "display_name": "keras_fusion tests",
        "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join(p for p in python_path if p)},
    }
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(
            kernel_dirs=[os.path.join(directory, "kernels")]
        ),
    )


def test_every_notebook_is_tested():
    found = sorted(
        os.path.basename(p)
        for p in glob.glob(os.path.join(NOTEBOOKS_DIR, "*.ipynb"))
    )
    assert found == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_ran_top_to_bottom(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    cells = _code_cells(notebook)
    # One fresh kernel, every cell once, in order.
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), counts
    errors = [
        output
        for cell in cells
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors, errors
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in cells
        for output in cell.outputs
    )
    assert figures == FIGURES.get(name, 0)


@pytest.mark.parametrize("name", sorted(SEED_OUTPUTS))
def test_committed_notebook_shows_the_seed_outputs(name):
    _assert_seed_outputs(name, _read(name))


# Notebooks that teach TensorFlow artifacts: TensorFlow's allocator peaks
# (05, 07) and SavedModel export (06); and those that train for minutes,
# where the tests named run the same layers, their recomputation and
# freezing under every backend: 04 (four fusions), 07 (an FC-DenseNet), 08
# (two U-Nets on pretrained encoders) and 09 (five BiFPN detectors). The
# others run under every backend.
TENSORFLOW_NOTEBOOKS = {
    "04_add_vs_concat.ipynb": "trains four classifiers for a minute; "
    "tests/layers/test_fusion_selector.py runs the fusions on every "
    "backend, and CI must stay under 45 minutes",
    "05_memory_efficient_densenet.ipynb": "measures TensorFlow's allocator",
    "06_export.ipynb": "exports and serves a SavedModel",
    "07_tiramisu.ipynb": "measures TensorFlow's allocator and trains an "
    "FC-DenseNet for minutes; tests/models/test_fc_densenet.py runs "
    "FC-DenseNet and its recomputation on every backend",
    "08_pretrained_encoders.ipynb": "fine-tunes two U-Nets for minutes; "
    "tests/models/test_decoders.py runs the decoders on every backend, "
    "and CI must stay under 45 minutes",
    "09_detection_necks.ipynb": "trains five small detectors for two "
    "minutes; tests/layers/test_bifpn.py runs the BiFPN and its fusions on "
    "every backend, and CI must stay under 45 minutes",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.backends(
                "tensorflow", reason=TENSORFLOW_NOTEBOOKS[name]
            ),
        )
        if name in TENSORFLOW_NOTEBOOKS
        else name
        for name in NOTEBOOKS
    ],
)
def test_notebook_runs_and_reproduces_the_seeds(name, tmp_path):
    notebook = _read(name)
    files_before = sorted(os.listdir(NOTEBOOKS_DIR))
    km = _kernel_manager(str(tmp_path))
    client = NotebookClient(
        notebook,
        km=km,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": NOTEBOOKS_DIR}},
        shutdown_kernel="immediate",
    )
    # Raises CellExecutionError, with the cell and its traceback, on the
    # first cell that raises. A client given its kernel manager leaves the
    # kernel running (and its memory held) unless told to clean up, which
    # it then does whether the notebook ran or not.
    client.execute(cleanup_kc=True)
    assert not km.has_kernel
    _assert_seed_outputs(name, notebook)
    assert sorted(os.listdir(NOTEBOOKS_DIR)) == files_before
