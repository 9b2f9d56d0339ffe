"""Each notebooks/NN_topic.py and its paired .ipynb carry identical cells, outputs stripped."""

import re

import jupytext
import pytest

from .conftest import ROOT

SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _cells(notebook):
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_there_are_notebooks():
    assert SOURCES, "no notebooks/NN_topic.py found"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_py_and_ipynb_have_identical_cells(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} missing: run `make sync-notebooks`"
    from_py = jupytext.read(source)
    from_ipynb = jupytext.read(paired)
    assert _cells(from_py) == _cells(from_ipynb), f"{source.name} and {paired.name} differ"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_committed_with_outputs_stripped(source):
    notebook = jupytext.read(source.with_suffix(".ipynb"))
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_opens_and_closes_as_style_asks(source):
    notebook = jupytext.read(source)
    first, last_md = (
        notebook.cells[0].source,
        [c.source for c in notebook.cells if c.cell_type == "markdown"][-3:],
    )
    assert re.match(r"^# ", first), "opening cell starts with a title"
    closing = "\n".join(last_md).lower()
    assert "exercise" in closing and "reference" in closing
