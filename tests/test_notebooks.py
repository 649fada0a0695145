"""The notebooks run top to bottom (in their fast mode) and show what they promise, so they never rot; they use only
public names; and cvattn.notebook, the helper they share, draws and scales what it says."""
import os
import re
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# What each notebook must display, beyond running without an error: (figures, markdown tables or text).
EXPECTED = {
    "bird_focus.ipynb": (1, ["| plain | gradcam |", "| CBAM | spatial_gate |", "| ViT | rollout |",
                             "| — | center |"]),
    "vit_attention.ipynb": (2, ["| grad_rollout |", "| center |"]),
    "ram_glimpses.ipynb": (2, ["Last glimpse centred on the object", "| glimpses |"]),
    "blocks_as_backbones.ipynb": (2, ["layer4.1.se.spatial", "methods for MyNet"]),
    "explain_your_model.ipynb": (4, ["methods for the ViT: ['attention', 'rollout', 'grad_rollout', 'gradcam'",
                                     "methods for ResNet-18: ['gradcam'", "Wrote 1 figure and index.html",
                                     "'index.html'"]),
    "trust_your_map.ipynb": (3, ["| brightness | 1.00 | 1.00 |", "randomised in this order: fc,", "| gradcam |"]),
}


def test_every_notebook_is_tested_and_stored_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)
    for path in NOTEBOOKS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), f"{path.name} has outputs"


def test_notebooks_import_only_public_names():
    """Packages' internals move (cvattn.saliency's did): a notebook imports from cvattn's packages (and from the model
    modules, cvattn.models.<family>, which hold the documented model helpers), never from their private modules."""
    public = re.compile(r"cvattn(\.\w+)?|cvattn\.models\.\w+")
    for path in NOTEBOOKS.glob("*.ipynb"):
        code = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
        modules = re.findall(r"^\s*(?:from|import) (cvattn[\w.]*)", code, flags=re.M)
        assert "cvattn.notebook" in modules, f"{path.name} does not use the shared helper"
        assert all(public.fullmatch(m) for m in modules), f"{path.name} imports internals: {modules}"


def test_notebook_helper_scales_each_map_and_draws_boxes_on_pixel_edges():
    from matplotlib.figure import Figure

    from cvattn.notebook import draw_box, scale_to_unit

    maps = torch.stack([torch.arange(4.0).reshape(2, 2) * 3 + 1, torch.full((2, 2), 5.0)])
    scaled = scale_to_unit(maps)
    assert torch.allclose(scaled[0], torch.tensor([[0, 1 / 3], [2 / 3, 1]]))
    assert torch.equal(scaled[1], torch.zeros(2, 2))                     # a flat map: zeros, not NaN
    with pytest.raises(ValueError, match=r"\(N, H, W\).*\(2, 2\)"):
        scale_to_unit(maps[0])
    ax = Figure().subplots()
    patch = draw_box(ax, torch.tensor([2, 3, 10, 7]))                     # exclusive ends: pixels 2..9 and 3..6
    assert patch.get_xy() == (1.5, 2.5) and (patch.get_width(), patch.get_height()) == (8.0, 4.0)
    assert patch in ax.patches


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, monkeypatch):
    root = NOTEBOOKS.parent
    monkeypatch.setenv("CVATTN_NOTEBOOK_FAST", "1")
    # One thread: on 2 shared cores, two threads per process oversubscribe and run several times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    for variable in ("CVATTN_CHECKPOINTS", "CVATTN_IMAGE_FOLDER", "CVATTN_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # The timeout guards against a hang; speed is the fast mode's job, not this test's.
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    figures = sum("image/png" in output.get("data", {}) for output in outputs)
    text = "".join(output.get("text", "") + output.get("data", {}).get("text/markdown", "") for output in outputs)
    min_figures, snippets = EXPECTED[name]
    assert figures >= min_figures
    for snippet in snippets:
        assert snippet in text
