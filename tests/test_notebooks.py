"""The notebooks are stored executed, with outputs of their current code, and run top to bottom (in their fast mode)
to the same kinds of outputs, so they never rot; they use only public names; and cvattn.notebook, the helper they
share, draws and scales what it says."""
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)
# What some notebooks must display, beyond what every notebook must: (figures, markdown tables or text).
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
RERUN = "re-run `python notebooks/execute.py {name}` (or --fast) and commit the notebook"


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def kinds(cell: nbformat.NotebookNode) -> list[str]:
    """What a cell shows, in order: 'figure' (a PNG or JPEG), 'table' (markdown), 'html', 'text' (a plain repr), 'stdout',
    'error'; stderr (library notices) is left out, since what a library warns of may differ between modes."""
    shown = []
    for output in cell.outputs:
        data = output.get("data", {})
        kind = ("error" if output.output_type == "error" else output.get("name") if output.output_type == "stream"
                else "figure" if any(key.startswith("image/") for key in data)
                else "table" if "text/markdown" in data else "html" if "text/html" in data else "text")
        if kind != "stderr":
            shown.append(kind)
    return shown


def shown_text(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") + output.get("data", {}).get("text/markdown", "")
                   for cell in code_cells(notebook) for output in cell.outputs)


def test_every_notebook_is_picked_up():
    """A new notebook needs no entry here: every notebooks/*.ipynb is checked; EXPECTED adds promises of some."""
    assert PATHS and set(EXPECTED) <= {path.name for path in PATHS}


@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.name)
def test_notebook_is_stored_executed_with_outputs_of_its_current_code(path):
    notebook = nbformat.read(path, as_version=4)
    cells = code_cells(notebook)
    rerun = RERUN.format(name=path.stem)
    assert path.stat().st_size <= execute.MAX_BYTES, f"{path.name} is over 2 MB: {rerun} (it shrinks figures)"
    recorded = notebook.metadata.get("cvattn", {})
    assert recorded.get("mode") in ("fast", "full"), f"{path.name} is stored unexecuted: {rerun}"
    assert recorded.get("sources") == execute.source_hashes(notebook), (
        f"{path.name}: code cells changed since its outputs were computed: {rerun}")
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), f"{path.name}: {rerun}"
    assert not [kind for cell in cells for kind in kinds(cell) if kind == "error"], f"{path.name} stores an error"
    assert any("figure" in kinds(cell) for cell in cells), f"{path.name} shows no figure"
    assert not any(cell.metadata for cell in notebook.cells), f"{path.name}: cell metadata (timings, widgets) stored"
    assert set(notebook.metadata) <= {"kernelspec", "language_info", "cvattn"}, f"{path.name}: metadata noise"
    assert not execute.machine_paths(notebook), f"{path.name} names folders of the machine it ran on"
    min_figures, snippets = EXPECTED.get(path.name, (1, []))
    assert sum(kinds(cell).count("figure") for cell in cells) >= min_figures
    assert [snippet for snippet in snippets if snippet not in shown_text(notebook)] == []


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
@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.name)
def test_notebook_runs_to_the_stored_kinds_of_output(path):
    """Executed afresh in fast mode (notebooks/execute.py's environment: this checkout, no user data or checkpoints),
    the notebook shows, cell by cell, the same figures, tables and prints as its stored outputs, and no error."""
    stored = nbformat.read(path, as_version=4)
    # The timeout guards against a hang; speed is the fast mode's job, not this test's.
    fresh = execute.execute(path, fast=True, timeout=600)
    assert [cell.source for cell in code_cells(fresh)] == [cell.source for cell in code_cells(stored)]
    for index, (new, old) in enumerate(zip(code_cells(fresh), code_cells(stored))):
        assert "error" not in kinds(new), f"{path.name} code cell {index} failed: {new.outputs}"
        assert kinds(new) == kinds(old), (f"{path.name} code cell {index} now shows {kinds(new)}, stored "
                                          f"{kinds(old)}: {RERUN.format(name=path.stem)}")
    min_figures, snippets = EXPECTED.get(path.name, (1, []))
    assert sum(kinds(cell).count("figure") for cell in code_cells(fresh)) >= min_figures
    assert [snippet for snippet in snippets if snippet not in shown_text(fresh)] == []


def test_full_mode_loads_the_benchmarks_models_and_data_or_says_how_to_train_them(tmp_path, monkeypatch, capsys):
    """Full mode: canvas_data gives the data the benchmark's models were trained on; fit gives the benchmark's model
    with its weights, or trains the notebook's own for the given steps and prints the command that trains it."""
    from types import SimpleNamespace

    import yaml

    import cvattn.notebook as helper
    from cvattn.config import build_from_config
    from cvattn.lightning import ImageClassifier

    run = tmp_path / "runs" / "saliency_convnet4" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "model": {"class_path": "cvattn.lightning.ImageClassifier",
                  "init_args": {"model": "convnet2", "model_kwargs": {"width": 4}, "in_chans": 1}},
        "data": {"class_path": "cvattn.data.FashionMNISTDataModule",
                 "init_args": {"data_dir": str(tmp_path / "data"), "canvas_size": 60, "num_distractors": 2,
                               "batch_size": 128, "num_workers": 2, "download": False, "num_objects": 2}}}))
    benchmark_model = build_from_config(run / "config.yaml")[0]
    with torch.no_grad():
        for i, param in enumerate(benchmark_model.parameters()):
            param.fill_(0.01 * i)
    checkpoint = run / "checkpoints" / "epoch=3-step=40.ckpt"
    torch.save({"state_dict": benchmark_model.state_dict()}, checkpoint)
    bench = SimpleNamespace(MODELS=["convnet4", "se_convnet4"],
                            best_checkpoint=lambda model, objects: checkpoint if model == "convnet4" else None,
                            train_command=lambda model, objects: [sys.executable, "train.py", "--run", model])
    monkeypatch.setattr(helper, "_benchmark", lambda: bench)
    monkeypatch.setattr(helper, "FAST", False)
    monkeypatch.setattr(helper, "CHECKPOINTS", None)
    monkeypatch.delenv("CVATTN_IMAGE_FOLDER", raising=False)

    data = helper.canvas_data(canvas_size=50, batch_size=8)
    assert data.image_size == (60, 60) and (data.batch_size, data.num_workers) == (8, 0)   # the benchmark's canvas
    assert data.num_objects == 1     # a multi-object benchmark's canvases, one object each: (images, labels, boxes)
    assert "the benchmark's data (" in capsys.readouterr().out

    def own() -> ImageClassifier:
        return ImageClassifier(model="convnet2", model_kwargs={"width": 16}, num_classes=10, in_chans=1)

    loaded = helper.fit(own(), data, "plain", 2, benchmark="convnet4")
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), benchmark_model.state_dict().values()))
    assert capsys.readouterr().out == "plain: the benchmark's convnet4 (epoch=3-step=40.ckpt)\n"

    untrained = own()
    before = [param.clone() for param in untrained.parameters()]
    fitted = helper.fit(untrained, data, "SE", 2, benchmark="se_convnet4")
    assert fitted is untrained and any(not torch.equal(a, b) for a, b in zip(before, fitted.parameters()))
    out = capsys.readouterr().out
    assert out.startswith("SE: no trained benchmark checkpoint, so trained here for 2 steps only")
    assert out.rstrip().endswith("train it with: python train.py --run se_convnet4") and sys.executable not in out
