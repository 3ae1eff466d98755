"""The notebooks for biologists run top to bottom on the bundled sample (nbclient, fresh kernel).

Each runs in its own temporary working folder (the demo models and CSVs they write land
there). A failure names the notebook and shows the failing cell with its traceback.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat  # the dev extra (scripts/setup.sh installs it): nbclient, nbformat, ipykernel
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_and_explain_themselves():
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and "What it is for" in first.source and "What to change" in first.source, path.name
        assert nb.cells[1].cell_type == "code", f"{path.name}: the settings cell comes right after the introduction"
        stored = [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not stored, f"{path.name}: clear the outputs before committing (Edit > Clear Outputs of All Cells)"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    import nbclient

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n" + re.sub(r"\x1b\[[0-9;]*m", "", str(exc)), pytrace=False)  # no colour codes
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
