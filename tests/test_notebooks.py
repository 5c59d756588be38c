"""The example notebooks run top to bottom in a real kernel, through nbmake (acceptance 4).

`make test` runs plain `pytest`, so this module executes them with nbmake's own runner rather
than relying on the `--nbmake` flag (`pytest --nbmake notebooks/` works too). They need no
network and no Redis: each starts its stand-in vendors on loopback and stores into a temp dir.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from nbmake.nb_run import NotebookRun

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["quickstart.ipynb", "latency-analysis.ipynb"])
def test_notebook_runs_top_to_bottom(name: str) -> None:
    result = NotebookRun(NOTEBOOKS / name, default_timeout=120).execute()
    assert result.error is None, f"{name} failed:\n{result.error.summary}\n{result.error.trace}"
    code_cells = [c for c in result.nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), "a cell did not run"
    assert any(o.get("data", {}).get("application/vnd.jupyter.widget-view+json")
               for c in code_cells for o in c.outputs), "no timeline widget was displayed"


def test_notebooks_are_stored_without_outputs() -> None:
    import nbformat

    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
