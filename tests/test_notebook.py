"""The viva notebook: saved clean, current with its builder, and runs top to bottom on the shipped model."""
import sys

import nbformat
import pytest

from conftest import ROOT, ddpm

NOTEBOOK = ROOT / "test_single_sample.ipynb"
sys.path.insert(0, str(ROOT / "tools"))
import make_notebook  # noqa: E402


def test_notebook_is_saved_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_notebook_is_what_its_builder_writes():
    assert nbformat.writes(make_notebook.build_notebook()) + "\n" == NOTEBOOK.read_text() or \
        nbformat.writes(make_notebook.build_notebook()) == NOTEBOOK.read_text()


@pytest.fixture(scope="module")
def executed():
    from nbclient import NotebookClient
    if not (ROOT / "saved_models" / "ddpm_animals.pt").exists():
        pytest.fail("saved_models/ddpm_animals.pt is missing: the notebook has no model to load")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return notebook


def outputs_of(notebook, kind):
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
            if out.output_type == kind or kind in out.get("data", {})]


def test_notebook_runs_ddim_from_noise_to_one_image_per_class(executed):
    """The sampler, steps and guidance of the report's sample grid."""
    printed = "".join(out.get("text", "") for out in outputs_of(executed, "stream"))
    assert "classes: Dolphin, Giraffe, Panda, Tiger, Zebra" in printed
    assert "x_T: shape (5, 3, 64, 64)" in printed
    assert f"50 DDIM steps at guidance {ddpm.DEFAULT_GUIDANCE:g} for 5 images in" in printed
    assert not outputs_of(executed, "error")


def test_notebook_shows_the_results_and_each_class_steps(executed):
    assert len(outputs_of(executed, "image/png")) == 2  # one image per class, then their steps from noise
