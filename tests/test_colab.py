"""The notebooks run headless, top to bottom, without errors, and draw their plots."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

# Each notebook runs in its own kernel (tens of seconds to minutes): `make test-slow`.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,min_images", [("quickstart", 4), ("entropy", 2),
                                            ("sde_and_likelihood", 6),
                                            ("optimal_variance", 4), ("udm_processes", 5),
                                            ("hubness", 4), ("whitening", 3)])
def test_notebook_executes(name, min_images):
    path = os.path.join(ROOT, "colabs", f"{name}.ipynb")
    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: 8 fake devices, the compilation cache.
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= min_images
