"""The retraining notebook runs top to bottom on the CDNOW sample, and is stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs"


@pytest.mark.slow
def test_retrain_notebook_runs_and_registers(tmp_path, mlflow_store):
    nb = nbformat.read(NOTEBOOKS / "01-retrain.ipynb", as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = (
        'SOURCE = "cdnow-sample"\nCUTOFF = "1998-06-30"\nHORIZON_DAYS = 90\n'
        f'REGISTER = True\nOUT_DIR = "{tmp_path / "out"}"'
    )
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "registered version 1 as champion" in text
    assert (tmp_path / "out" / "backtest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "out"]


@pytest.mark.slow
def test_replenishment_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "02-replenishment.ipynb", as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = "SOURCE = None\nSYNTH_CUSTOMERS = 2000\nAS_OF = None\nHORIZON_DAYS = 60\nLEAD_DAYS = 7"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert any("pairs;" in o.get("text", "") and "due within 14 days" in o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth-replenishment.parquet"]
