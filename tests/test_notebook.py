"""notebooks/quickstart.ipynb runs top to bottom, headless, and is stored without outputs."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    # A smoke run: few steps, every file under tmp_path (the kernel inherits the environment).
    monkeypatch.setenv("MLM_NOTEBOOK_STEPS", "2")
    monkeypatch.setenv("MLM_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("MLM_NOTEBOOK_RECIPE", "bert_test")  # the recipes run elsewhere
    monkeypatch.setenv("MLM_NOTEBOOK_SEEDS", "1")
    monkeypatch.setenv("MLM_NOTEBOOK_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "held-out masked accuracy" in text and "test accuracy" in text
    # The curves cell drew a figure inline.
    assert any("image/png" in o.get("data", {}) for o in outputs)
    for run in ("pretrain", "continued"):
        assert (tmp_path / "runs" / run / "preset" / "config.json").is_file()
        assert (tmp_path / "runs" / run / "report.md").is_file()
