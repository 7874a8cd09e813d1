"""The quickstart notebook runs headless, top to bottom, without errors."""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(tmp_path):
    path = os.path.join(ROOT, "colabs", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: 8 fake devices, Agg backend.
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4   # schedule plot, mixture scatter, sample grid, interpolation
