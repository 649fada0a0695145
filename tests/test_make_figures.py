"""bench/make_figures.py: a missing checkpoint is an error naming its training command, and from checkpoints (tiny
random-weight models saved as train.py runs would be) it writes the figures it promises, small enough to commit."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import make_figures  # noqa: E402
from cvattn.saliency import randomised_copy  # noqa: E402

CANVAS = 100
DATA = {"class_path": "cvattn.data.FashionMNISTDataModule",
        "init_args": {"canvas_size": CANVAS, "num_distractors": 8, "batch_size": 16, "num_workers": 0,
                      "download": False}}
CNN = {"class_path": "cvattn.lightning.ImageClassifier", "init_args": {"model": "convnet2", "in_chans": 1}}
TINY = {   # stand-ins for the benchmark's models (their names), as small as they go
    "convnet4": {**CNN, "init_args": {**CNN["init_args"], "model_kwargs": {"width": 4}}},
    **{f"{attn}_convnet4": {**CNN, "init_args": {**CNN["init_args"], "model_kwargs": {"width": 8, "attn_layer": attn}}}
       for attn in ("se", "eca", "cbam")},
    "classattn_convnet4": {**CNN, "init_args": {**CNN["init_args"], "model": "classattn_convnet2",
                                                "model_kwargs": {"width": 4}}},
    "vit": {"class_path": "cvattn.lightning.ImageClassifier",
            "init_args": {"model": "vit_tiny_patch4_28", "in_chans": 1,
                          "model_kwargs": {"img_size": CANVAS, "patch_size": 10, "embed_dim": 16, "depth": 2,
                                           "num_heads": 2}}},
    "ram": {"class_path": "cvattn.lightning.RAMModule", "init_args": {"model": "ram_100", "in_chans": 1}},
}


def fake_command(model: str, objects: int) -> list[str]:
    """As saliency_results.train_command: without the interpreter; no multi-object RAM."""
    if model == "ram" and objects != 1:
        raise ValueError("The RAM classifies one object per canvas: there is no multi-object RAM; use objects=1.")
    return ["train.py", "--config", f"configs/{model}.yaml", "--data.init_args.num_objects", str(objects)]


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """``saliency_results``'s interface over tiny random-weight runs in ``tmp_path`` (run folder with config.yaml,
    checkpoint under checkpoints/); returns the dict of checkpoints, which a test may empty."""
    from cvattn.config import build_from_config

    checkpoints = {}
    for model, section in TINY.items():
        run = tmp_path / "runs" / model / "version_0"
        (run / "checkpoints").mkdir(parents=True)
        data = {**DATA, "init_args": {**DATA["init_args"], "data_dir": str(tmp_path / "data")}}
        (run / "config.yaml").write_text(yaml.safe_dump({"model": section, "data": data}))
        module, _ = build_from_config(run / "config.yaml")
        torch.save({"state_dict": module.state_dict()}, run / "checkpoints" / "epoch=0-step=1.ckpt")
        checkpoints[model] = run / "checkpoints" / "epoch=0-step=1.ckpt"
    monkeypatch.setattr(make_figures.bench, "best_checkpoint", lambda model, objects: checkpoints.get(model),
                        raising=False)
    monkeypatch.setattr(make_figures.bench, "train_command", fake_command, raising=False)
    return checkpoints


def test_missing_checkpoints_are_an_error_naming_each_training_command(trained, tmp_path, capsys):
    del trained["eca_convnet4"], trained["ram"]
    assert make_figures.main(["--out", str(tmp_path / "figures")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no trained checkpoint for eca_convnet4, ram (objects=1)")
    assert "  eca_convnet4: python train.py --config configs/eca_convnet4.yaml --data.init_args.num_objects 1" in error
    assert "  ram: python train.py --config configs/ram.yaml" in error and "--allow-missing" in error
    assert sys.executable not in error
    assert not (tmp_path / "figures").exists()                   # nothing half-written

    trained.clear()                                              # none trained: an error even with --allow-missing
    assert make_figures.main(["--out", str(tmp_path / "figures"), "--allow-missing", "--objects", "2"]) == 2
    error = capsys.readouterr().err                              # no multi-object RAM: not asked for
    assert "for convnet4, se_convnet4, eca_convnet4, cbam_convnet4, vit (objects=2)" in error
    assert "--data.init_args.num_objects 2" in error and "ram:" not in error


def columns_with_content(path: Path, columns: int) -> list[bool]:
    """For each of ``columns`` equal vertical strips of the PNG: whether it holds any coloured (non-grey) pixel,
    i.e. a heat map or a coloured glimpse path rather than only the grey-scale canvas and white background."""
    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).short()          # (H, W, 3)
    chroma = (rgb.amax(-1) - rgb.amin(-1)) > 60                   # saturated: not grey, not white
    strips = chroma.tensor_split(columns, dim=1)
    return [bool(strip.float().mean() > 0.01) for strip in strips]


@pytest.mark.slow
def test_figures_from_checkpoints(trained, tmp_path, capsys):
    out = tmp_path / "figures"
    assert make_figures.main(["--out", str(out), "--rows", "3"]) == 0
    written = {path.name for path in out.iterdir()}
    assert written == {"attention_families.png", "vit_heads.png", "ram_glimpses.png", "sanity_check.png",
                       "class_conditional.png"}
    for path in out.iterdir():
        assert 5_000 < path.stat().st_size <= make_figures.MAX_BYTES, path.name
    main = Image.open(out / "attention_families.png")
    assert main.width > 1.8 * main.height                        # 7 columns, 3 rows of square panels
    # The first column is the canvas alone (grey-scale Fashion-MNIST, a lime box); every other column is coloured.
    content = columns_with_content(out / "attention_families.png", 7)
    assert all(content[1:]), content
    # Three methods × two canvases, each the canvas then the map for each of its three garments' classes.
    per_class = Image.open(out / "class_conditional.png")
    assert per_class.height > 1.2 * per_class.width
    assert all(columns_with_content(out / "class_conditional.png", 4)[1:])
    heads = Image.open(out / "vit_heads.png")                    # 2 layers × (2 heads + mean)
    assert heads.width > heads.height
    # Left out: a model without checkpoint, with --allow-missing; the main figure loses one column.
    del trained["cbam_convnet4"], trained["vit"]
    assert make_figures.main(["--out", str(out), "--rows", "3", "--allow-missing"]) == 0
    printed = capsys.readouterr().out
    assert "left out (not trained): cbam_convnet4; train it with: python train.py" in printed
    narrower = Image.open(out / "attention_families.png")
    assert narrower.width < main.width - 100 and narrower.height == main.height
    assert "left out of class_conditional.png (not trained): cbam_convnet4" in printed
    assert Image.open(out / "class_conditional.png").height < per_class.height - 100     # one method fewer


def test_spearman_title_is_randomisation_tests_last_step(trained):
    """The sanity figure's randomised model is randomisation_test's last step (same layers, order and seed)."""
    from cvattn.saliency import randomisation_test, saliency, spearman

    module, data = make_figures.load(trained["convnet4"])
    images, target, _ = make_figures.test_canvases(data, 4)
    table = randomisation_test(module, images, "gradcam", target=target)
    maps = saliency(module, images, "gradcam", target=target)
    ours = saliency(randomised_copy(module).eval(), images, "gradcam", target=target)
    assert spearman(maps, ours).nanmean().item() == pytest.approx(table[-1]["spearman"], abs=1e-6)
    assert table[-1]["layer"] != "none" and len(table) > 2          # the last row: every layer re-initialised
