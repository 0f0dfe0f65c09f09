"""Every committed notebook is stripped, thin, and has the one typed parameters cell."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from workbench.runner import notebook_parameters, pipeline_notebooks

REPO = Path(__file__).resolve().parents[1]
ALL = sorted((REPO / "notebooks").rglob("*.ipynb"))
PIPELINE = pipeline_notebooks(REPO)


def test_there_are_notebooks() -> None:
    assert PIPELINE, "no pipeline notebooks found"
    assert PIPELINE[0].name == "00_simulate.ipynb"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_outputs_are_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: a cell has outputs; strip them"
            assert cell.execution_count is None, f"{path.name}: execution counts left in"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_notebooks_stay_thin(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), (
        "title first"
    )
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert "!pip" not in cell.source and "%pip" not in cell.source
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef), (
                f"{path.name}: logic belongs in workbench/, not in a notebook"
            )
        assert "/work/" not in cell.source and "data/" not in cell.source, "no hard-coded paths"


@pytest.mark.parametrize("path", PIPELINE, ids=lambda p: p.name)
def test_one_typed_commented_parameters_cell(path: Path) -> None:
    params = notebook_parameters(path)  # raises on untyped, uncommented or several cells
    names = [p.name for p in params]
    assert "run_id" in names, "every pipeline notebook takes the run id"
    for p in params:
        assert p.type in {"int", "float", "str", "bool"}, (
            f"{p.name}: parameters are typed primitives"
        )
        assert len(p.help) > 5


@pytest.mark.parametrize("path", PIPELINE, ids=lambda p: p.name)
def test_parameters_are_checked_before_use(path: Path) -> None:
    """papermill injects its values in a cell right after the parameters cell, untyped: the
    next cell of the notebook types them (workbench.runner.check_parameters) before any use."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    body = ast.parse(code[first + 1].source).body
    statements = [n for n in body if not isinstance(n, ast.Import | ast.ImportFrom)]
    assert ast.unparse(statements[0]) == "wb.check_parameters(globals())", path.name
