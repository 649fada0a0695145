"""The saliency API across the methods, adapters, data and callers merged beside it: which methods run by default,
how many forwards a given class costs, multi-object batches in the CLI and the callback, Hugging Face models in
``evaluate``, non-finite input, and the public names."""
import json
import re
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
import yaml
from matplotlib.patches import Rectangle

import cvattn
import cvattn.lightning.callbacks as callbacks
import cvattn.saliency
from cvattn.data import FashionMNISTDataModule
from cvattn.lightning import ImageClassifier, MultiLabelClassifier, SaliencyCallback
from cvattn.saliency import (available_methods, default_methods, evaluate, register_method, road, saliency)
from cvattn.saliency.cli import check_methods
from cvattn.saliency.cli import main as cli_main
from cvattn.saliency.registry import METHODS, any_model
from cvattn.models.vit import VisionTransformer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
COSTLY = {"scorecam", "occlusion", "smoothgrad", "integrated_gradients"}


def cbam_convnet(num_classes: int = 10) -> nn.Module:
    return cvattn.create_model("convnet2", num_classes=num_classes, in_chans=1, attn_layer="cbam", width=4).eval()


def boxed_loader(channels: int = 1, size: int = 32, num_classes: int = 10):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, channels, size, size, generator=generator)
    boxes = torch.tensor([[2.0, 2.0, 14.0, 14.0], [10.0, 12.0, 30.0, 28.0]])
    return [(images, torch.tensor([1, num_classes - 1]), boxes)]


# --- default methods ---------------------------------------------------------------------------------------------

def test_default_methods_are_the_native_maps_and_gradcam_but_available_lists_everything():
    model = cbam_convnet()
    assert default_methods(model) == ["spatial_gate", "channel_gate", "gradcam", "gradcam++"]
    assert COSTLY <= set(available_methods(model)) and "hirescam" in available_methods(model)
    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=16, depth=2, num_heads=2)
    assert default_methods(vit) == ["attention", "rollout", "grad_rollout", "gradcam", "gradcam++"]
    assert default_methods(timm.create_model("resnet18", num_classes=5)) == ["gradcam", "gradcam++"]
    assert check_methods(model, None) == default_methods(model)        # the CLI without --methods
    assert "gradcam++" in cli_help() and "scorecam" in cli_help()     # its help says what the default is


def cli_help() -> str:
    from cvattn.saliency.cli import build_parser
    return " ".join(build_parser().format_help().split())


def test_a_method_registered_with_default_false_is_available_but_not_default():
    @register_method("test_costly", any_model, "nothing", default=False)
    def costly(model, images, targets):
        return images.mean(1)

    try:
        model = cbam_convnet()
        assert "test_costly" in available_methods(model) and "test_costly" not in default_methods(model)
        assert saliency(model, torch.rand(1, 1, 16, 16), "test_costly").shape == (1, 16, 16)
    finally:
        del METHODS["test_costly"]


def test_evaluate_without_methods_runs_the_defaults_and_the_baselines():
    scores = evaluate(cbam_convnet(), boxed_loader(), auc=False)
    assert list(scores) == ["spatial_gate", "channel_gate", "gradcam", "gradcam++", "random", "center", "brightness"]


def test_callback_without_methods_draws_the_defaults(tmp_path, monkeypatch):
    drawn = []
    real = callbacks.saliency
    monkeypatch.setattr(callbacks, "saliency", lambda model, images, method: drawn.append(method) or
                        real(model, images, method))
    module = ImageClassifier(model="convnet2", model_kwargs={"attn_layer": "cbam", "width": 4}, num_classes=10,
                             in_chans=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*boxed_loader()[0]), batch_size=2)
    trainer = L.Trainer(max_epochs=1, logger=False, callbacks=[SaliencyCallback(num_images=2)],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)
    assert drawn == ["spatial_gate", "channel_gate", "gradcam", "gradcam++"]


# --- a given class costs only the method's forwards --------------------------------------------------------------

def count_forwards(model: nn.Module, run) -> int:
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("build, size", [
    (lambda: cbam_convnet(), 16),
    (lambda: timm.create_model("resnet18", num_classes=7, in_chans=1).eval(), 32),
])
def test_a_given_target_skips_the_resolving_forward(build, size):
    model = build()
    images = torch.randn(2, 1, size, size)
    saliency(model, images, "gradcam")                   # timm: the default layer's probe forward, once per model
    for method, needs in (("gradcam", 1), ("gradient", 1), ("spatial_gate", 1)):
        if method not in available_methods(model):
            continue
        given = count_forwards(model, lambda: saliency(model, images, method, target=[1, 2]))
        predicted = count_forwards(model, lambda: saliency(model, images, method))
        assert (given, predicted) == (needs, needs + 1), method
    # The same maps as when the class comes out of the forward.
    predicted = model(images).argmax(1)
    torch.testing.assert_close(saliency(model, images, "gradcam", target=predicted), saliency(model, images))


def test_a_given_target_is_checked_without_a_forward():
    model = cbam_convnet(num_classes=10)
    images = torch.randn(2, 1, 16, 16)
    for target, message in ((12, r"target class \[12\] out of range: the model has 10 classes, so targets must be "
                                 r"in \[0, 9\]"),
                            ([1, 2, 3], r"target must be one class per image, shape \(2,\); got shape \(3,\)"),
                            (1.5, r"target must be None, an int or integer class indices")):
        with pytest.raises(ValueError, match=message):
            saliency(model, images, "gradcam", target=target)
        assert count_forwards(model, lambda: pytest.raises(ValueError, saliency, model, images, target=target)) == 0


def test_a_model_without_a_class_count_still_resolves_targets_with_a_forward():
    model = torchvision.models.resnet18(num_classes=6).eval()     # no num_classes attribute
    images = torch.randn(1, 3, 32, 32)
    saliency(model, images, "gradcam")
    assert count_forwards(model, lambda: saliency(model, images, "gradcam", target=5)) == 2
    with pytest.raises(ValueError, match=r"the model has 6 classes"):
        saliency(model, images, "gradcam", target=6)


def test_hugging_face_class_count_comes_from_its_config():
    transformers = pytest.importorskip("transformers", reason="the optional extra cvattn[hf]")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    model = transformers.ResNetForImageClassification(config).eval()
    images = torch.randn(1, 3, 64, 64)
    saliency(model, images, "gradcam")
    assert count_forwards(model, lambda: saliency(model, images, "gradcam", target=3)) == 1
    with pytest.raises(ValueError, match=r"the model has 4 classes"):
        saliency(model, images, "gradcam", target=4)


# --- non-finite input --------------------------------------------------------------------------------------------

def test_non_finite_images_are_refused():
    images = torch.randn(2, 1, 16, 16)
    images[0, 0, 3, 4], images[1, 0, 0, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"images hold 2 NaN or Inf value\(s\) \(of 512\).*torch.nan_to_num"):
        saliency(cbam_convnet(), images, "gradcam")


# --- Hugging Face models in evaluate and the metrics -------------------------------------------------------------

def tiny_hf_vit():
    transformers = pytest.importorskip("transformers", reason="the optional extra cvattn[hf]")
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                    image_size=32, patch_size=8, num_labels=10, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


def test_evaluate_and_road_take_a_hugging_face_model():
    model = tiny_hf_vit()
    loader = boxed_loader(channels=3)
    scores = evaluate(model, loader, methods=["rollout", "gradcam"], pixels_per_step=256)
    assert list(scores) == ["rollout", "gradcam", "random", "center", "brightness"]
    for name in ("pointing_game", "energy_in_box", "deletion_auc", "insertion_auc"):
        assert 0 <= scores["gradcam"][name] <= 1, name
    images = loader[0][0]
    maps = saliency(model, images, "rollout")
    curve = road(model, images, maps, percentages=(20, 60))
    assert curve.probability.shape == (2, 2) and ((0 <= curve.probability) & (curve.probability <= 1)).all()
    default = evaluate(model, loader, auc=False)                   # a ViT's defaults: its attention maps and CAMs
    assert list(default)[:5] == ["attention", "rollout", "grad_rollout", "gradcam", "gradcam++"]


# --- multi-object batches in the CLI and the callback ------------------------------------------------------------

def multi_object_data(batch_size: int = 4) -> dict:
    return {"data_dir": "no-such-dir", "download": False, "batch_size": batch_size, "num_workers": 0,
            "canvas_size": 60, "num_distractors": 4, "num_objects": 2}


def first_image_patches(figure) -> tuple[int, str]:
    ax = figure.axes[0]                                                   # the image, before the maps
    return sum(isinstance(p, Rectangle) for p in ax.patches), ax.get_title()


def test_cli_draws_every_box_of_multi_object_canvases(tmp_path, monkeypatch):
    import cvattn.saliency.cli as cli

    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1},
        "model": {"class_path": "cvattn.lightning.MultiLabelClassifier",
                  "init_args": {"model": "convnet2", "model_kwargs": {"width": 4}}},
        "data": {"class_path": "cvattn.data.FashionMNISTDataModule", "init_args": multi_object_data()},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    module = MultiLabelClassifier(model="convnet2", model_kwargs={"width": 4}, num_classes=10, in_chans=1)
    torch.save({"state_dict": module.state_dict()}, tmp_path / "model.ckpt")
    figures, real_grid = [], cli.saliency_grid
    monkeypatch.setattr(cli, "saliency_grid", lambda *a, **k: figures.append(real_grid(*a, **k)) or figures[-1])
    out = tmp_path / "out"
    assert cli_main(["--checkpoint", str(tmp_path / "model.ckpt"), "--config", str(tmp_path / "config.yaml"),
                     "--out", str(out), "--methods", "gradcam", "--num-images", "2", "--max-batches", "1",
                     "--no-auc"]) == 0
    datamodule = FashionMNISTDataModule(**multi_object_data())
    datamodule.setup("test")
    _, _, boxes, classes = next(iter(datamodule.test_dataloader()))
    names = datamodule.class_names
    for row, figure in enumerate(figures):
        count, title = first_image_patches(figure)
        assert count == 2 and title.endswith(", ".join(names[int(c)] for c in classes[row]))
        drawn = [(p.get_x() + 0.5, p.get_y() + 0.5) for p in figure.axes[0].patches]
        assert drawn == [tuple(box[:2].tolist()) for box in boxes[row]]
    page = (out / "index.html").read_text()
    assert f"true {names[int(classes[0, 0])]}, {names[int(classes[0, 1])]}" in page
    metrics = json.loads((out / "metrics.json").read_text())["methods"]
    assert metrics["gradcam"]["num_objects"] == 2 * metrics["gradcam"]["num_images"]


def test_callback_on_a_multi_object_datamodule(tmp_path, monkeypatch):
    figures, real_grid = [], callbacks.saliency_grid
    monkeypatch.setattr(callbacks, "saliency_grid", lambda *a, **k: figures.append(real_grid(*a, **k)) or figures[-1])
    datamodule = FashionMNISTDataModule(**multi_object_data(batch_size=3))
    module = MultiLabelClassifier(model="convnet2", model_kwargs={"width": 4}, num_classes=10, in_chans=1)
    callback = SaliencyCallback(num_images=4, methods=["gradcam"])
    trainer = L.Trainer(max_epochs=1, logger=False, callbacks=[callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_train_batches=1, limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    images, multi_hot, boxes, classes = callback._batch
    assert images.shape == (4, 1, 60, 60) and boxes.shape == (4, 2, 4) and classes.shape == (4, 2)
    (figure,) = figures
    for row in range(4):
        ax = figure.axes[row * 3]                                         # image | gradcam map | overlay
        assert sum(isinstance(p, Rectangle) for p in ax.patches) == 2
        assert ax.get_title().endswith(", ".join(datamodule.class_names[int(c)] for c in classes[row]))
    assert list(tmp_path.rglob("epoch=0.png"))


# --- the public names --------------------------------------------------------------------------------------------

def test_every_public_saliency_function_the_docs_name_is_exported():
    documented = set(re.findall(r"`(\w+)`", (ROOT / "docs" / "saliency.md").read_text()))
    modules = [cvattn.saliency.api, cvattn.saliency.metrics, cvattn.saliency.overlay, cvattn.saliency.sanity,
               cvattn.saliency.adapters, cvattn.saliency.registry, cvattn.saliency.evaluate]
    modules += [getattr(cvattn.saliency.methods, name) for name in ("gradcam", "gradients", "occlusion")]
    public = {name for module in modules for name, value in vars(module).items()
              if callable(value) and not name.startswith("_") and getattr(value, "__module__", "").startswith(
                  "cvattn.saliency") and name in documented and name not in METHODS}
    assert public and public <= set(cvattn.saliency.__all__), sorted(public - set(cvattn.saliency.__all__))
    for name in ("adapt", "overlay_row", "randomisation_test", "road", "integrated_gradients_attribution"):
        assert getattr(cvattn.saliency, name) is not None and name in cvattn.saliency.__all__
