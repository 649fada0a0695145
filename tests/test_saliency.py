"""Saliency maps, overlays, metrics, evaluation, the command line and the training callback.

Maps are checked against what each method means (Grad-CAM equals CAM on a GAP-linear model, rollout of one layer
is that layer's attention, ...), metrics against maps whose scores are known by construction.
"""
import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from lightning.pytorch.loggers import CSVLogger, Logger
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch.utils.data import DataLoader, TensorDataset

import cvattn
from cvattn.layers import ChannelAttn, SpatialAttn, capture_attention
from cvattn.lightning import ImageClassifier
from cvattn.lightning.callbacks import SaliencyCallback
from cvattn.lightning.ram import RAMModule
from cvattn.models.ram import GlimpseTrajectory, RecurrentAttention
from cvattn.models.vit import VisionTransformer
from cvattn.saliency import (available_methods, deletion_auc, draw_glimpses, energy_in_box, evaluate, insertion_auc,
                             overlay, pointing_game, saliency, saliency_grid)
from cvattn.saliency.cli import main as cli_main
from cvattn.saliency.methods.glimpses import glimpse_map
from cvattn.saliency.runtime import normalise
from cvattn.saliency.metrics import default_tolerance

torch.set_num_threads(1)
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def lively(model: nn.Module) -> nn.Module:
    """Unit BN scales (ResNets zero-init the last BN of each branch, which makes every gate see zeros)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return model.eval()


def cbam_convnet() -> nn.Module:
    torch.manual_seed(0)
    return lively(cvattn.create_model("convnet2", num_classes=5, in_chans=1, width=8, attn_layer="cbam"))


def tiny_vit(depth: int = 2, global_pool: str = "token") -> VisionTransformer:
    """Larger Q/K weights than timm's init, so attention is peaked rather than nearly uniform."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=5, embed_dim=16, depth=depth,
                              num_heads=2, global_pool=global_pool)
    for block in model.blocks:
        nn.init.normal_(block.attn.qkv.weight, std=0.5)
    return model.eval()


def tiny_ram() -> RecurrentAttention:
    torch.manual_seed(0)
    return RecurrentAttention(num_classes=5, in_chans=1, num_glimpses=3, glimpse_size=4, num_scales=2,
                              glimpse_hidden=8, loc_hidden=8, hidden_size=16).eval()


def images(batch: int = 3, size: int = 16, chans: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(seed))


MODELS = {"cbam_convnet": cbam_convnet, "vit": tiny_vit, "ram": tiny_ram}
CAMS = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam"]
GRADIENTS = ["gradient", "smoothgrad", "integrated_gradients"]


# --- the saliency() contract -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, expected", [
    ("cbam_convnet", ["spatial_gate", "channel_gate", *CAMS, *GRADIENTS, "guided_gradcam", "occlusion", "random",
                      "center", "brightness"]),
    ("vit", ["attention", "rollout", "grad_rollout", *CAMS, *GRADIENTS, "occlusion", "random", "center",
             "brightness"]),
    ("ram", ["glimpses", "occlusion", "random", "center", "brightness"]),
])
def test_every_method_gives_unit_maps_at_input_resolution(family, expected):
    model = MODELS[family]()
    assert available_methods(model) == expected
    x = images()
    for method in expected:
        maps = saliency(model, x, method)
        assert maps.shape == (3, 16, 16) and maps.dtype == torch.float32 and maps.device == x.device, method
        assert maps.min() >= 0 and maps.max() <= 1, method
        assert (maps.amax((1, 2)) == 1).all(), f"{method}: every map should reach 1 after min-max"


def test_lightning_modules_are_unwrapped():
    module = ImageClassifier(model="convnet2", model_kwargs={"width": 8, "attn_layer": "se"}, num_classes=5,
                             in_chans=1)
    lively(module.model)
    x = images()
    torch.testing.assert_close(saliency(module, x, "gradcam"), saliency(module.model, x, "gradcam"))
    ram = RAMModule(model="ram_28", model_kwargs={"glimpse_size": 4, "hidden_size": 16}, num_classes=5, in_chans=1)
    assert available_methods(ram.model) == ["glimpses", "occlusion", "random", "center", "brightness"]
    torch.testing.assert_close(saliency(ram, x, "glimpses"), saliency(ram.model, x, "glimpses"))


def test_state_is_restored_even_when_the_method_raises():
    model = cbam_convnet().train()
    model.blocks[0].bn1.eval()                       # mixed modes must come back as they were
    model.fc.weight.requires_grad_(False)            # so must frozen parameters
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}

    def hook_count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    hooks = hook_count()
    # 'fc' outputs (B, classes): the method raises after its hook has run inside the forward.
    with pytest.raises(ValueError, match=r"\(B, C, h, w\) map"):
        saliency(model, images(), "gradcam", layer="fc")
    for method in ("gradcam", "spatial_gate", "channel_gate"):
        saliency(model, images(), method)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert hook_count() == hooks
    assert all(p.grad is None for p in model.parameters())


def test_works_inside_no_grad_and_inference_mode():
    model, x = cbam_convnet(), images()
    expected = saliency(model, x, "gradcam")
    with torch.inference_mode():
        x_inference = x.clone()
        torch.testing.assert_close(saliency(model, x_inference, "gradcam"), expected)
    with torch.no_grad():
        torch.testing.assert_close(saliency(model, x, "gradcam"), expected)


def test_targets_default_broadcast_and_per_image():
    model, x = cbam_convnet(), images()
    predicted = model(x).argmax(1)
    torch.testing.assert_close(saliency(model, x, "gradcam"), saliency(model, x, "gradcam", target=predicted))
    torch.testing.assert_close(saliency(model, x, "gradcam", target=2), saliency(model, x, "gradcam", target=[2] * 3))
    per_class = [saliency(model, x, "gradcam", target=c) for c in range(5)]
    assert any(not torch.allclose(per_class[0], other) for other in per_class[1:]), "the target must matter"


@pytest.mark.parametrize("target, message", [
    (5, r"target class \[5\] out of range.*\[0, 4\]"),
    ([0, 1, -1], r"target class \[-1\] out of range"),
    ([0, 1], r"one class per image, shape \(3,\)"),
    (1.5, "integer class indices"),
])
def test_bad_targets(target, message):
    with pytest.raises(ValueError, match=message):
        saliency(cbam_convnet(), images(), "gradcam", target=target)


def test_unknown_method_lists_the_methods_for_this_model():
    with pytest.raises(ValueError, match=r"Unknown saliency method 'gradcm'\. Did you mean 'gradcam'.*Methods for "
                                         r"ConvNet: 'spatial_gate', 'channel_gate', 'gradcam'") as err:
        saliency(cbam_convnet(), images(), "gradcm")
    assert "rollout" not in str(err.value)


@pytest.mark.parametrize("family, method, needs", [
    ("cbam_convnet", "rollout", "Vision Transformer"),
    ("vit", "spatial_gate", "spatial attention gates"),
    ("ram", "gradcam", "spatial activations"),
    ("vit", "glimpses", "recurrent attention model"),
])
def test_methods_that_do_not_apply(family, method, needs):
    model = MODELS[family]()
    with pytest.raises(ValueError, match=rf"'{method}' does not apply.*{needs}.*Methods that apply to this model: "
                                         rf"'{available_methods(model)[0]}'"):
        saliency(model, images(), method)


def test_spatial_gate_needs_spatial_gates():
    se = lively(cvattn.create_model("convnet2", num_classes=5, in_chans=1, width=8, attn_layer="se"))
    with pytest.raises(ValueError, match="'spatial_gate' does not apply to ConvNet.*'channel_gate'"):
        saliency(se, images(), "spatial_gate")


def test_bad_images_and_options():
    model = cbam_convnet()
    with pytest.raises(ValueError, match="takes 1-channel images; got 3 channels"):
        saliency(model, images(chans=3), "gradcam")
    with pytest.raises(ValueError, match=r"float tensor \(B, C, H, W\)"):
        saliency(model, images()[0], "gradcam")
    with pytest.raises(ValueError, match=r"not divisible by patch_size 4"):
        saliency(tiny_vit(), images(size=18), "attention")
    with pytest.raises(ValueError, match=r"no option\(s\) \['seed'\]; it accepts \['layer'\]"):
        saliency(model, images(), "gradcam", seed=1)
    with pytest.raises(ValueError, match=r"no module 'blocks\.7'\. Did you mean"):
        saliency(model, images(), "gradcam", layer="blocks.7")
    with pytest.raises(ValueError, match=r"blocks='stages' selects none.*\['blocks\.0\.attn\.spatial'"):
        saliency(model, images(), "spatial_gate", blocks="stages")


# --- what each map means ---------------------------------------------------------------------------------------

def upsampled(maps: torch.Tensor, size: int = 16) -> torch.Tensor:
    return normalise(F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0])


def test_spatial_gate_is_the_last_stage_gate_upsampled():
    model = lively(cvattn.create_model("cbam_resnet20", num_classes=5, in_chans=1))
    x = images(size=32)
    with capture_attention(model) as gates:
        model(x)
    last_stage = [gates[f"stages.2.{i}.attn.spatial"][:, 0] for i in range(3)]
    expected = normalise(torch.stack([F.interpolate(g[:, None], size=(32, 32), mode="bilinear")[:, 0]
                                      for g in last_stage]).mean(0))
    torch.testing.assert_close(saliency(model, x, "spatial_gate"), expected)
    only_first = saliency(model, x, "spatial_gate", blocks="stages.0.0")
    torch.testing.assert_close(only_first, normalise(gates["stages.0.0.attn.spatial"][:, 0]))


def test_channel_gate_weights_the_gated_feature_map():
    model = cbam_convnet()
    x = images()
    inputs = {}
    gate = model.blocks[1].attn.channel
    handle = gate.register_forward_hook(lambda m, i, o: inputs.update(x=i[0]))
    with capture_attention(model) as gates:
        model(x)
    handle.remove()
    weighted = (gates["blocks.1.attn.channel"] * inputs["x"]).sum(1).relu()     # Σ_c g_c·A_c
    torch.testing.assert_close(saliency(model, x, "channel_gate"), upsampled(weighted))
    assert isinstance(gate, ChannelAttn) and isinstance(model.blocks[1].attn.spatial, SpatialAttn)


class GapLinear(nn.Module):
    """features = the image (as 3 channels), then global average pooling and a linear layer: CAM's setting."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 3, 1, bias=False)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_gradcam_equals_cam_on_a_gap_linear_model():
    """Selvaraju et al. §3.1: for GAP → linear, Grad-CAM is the class activation map of Zhou et al. (2016)."""
    torch.manual_seed(0)
    model, x = GapLinear(), images()
    activation = model.features(x)                                               # (B, 3, H, W)
    for target in range(4):
        cam = torch.einsum("k,bkhw->bhw", model.fc.weight[target], activation).relu()
        torch.testing.assert_close(saliency(model, x, "gradcam", target=target, layer="features"),
                                   normalise(cam.detach()))


def test_gradcam_names_a_default_layer_that_did_not_run():
    model = GapLinear()
    model.unused = nn.Conv2d(3, 3, 1)
    model.feature_info = [{"num_chs": 3, "reduction": 1, "module": "unused"}]     # the layer Grad-CAM picks
    with pytest.raises(ValueError, match="Layer 'unused' did not run in GapLinear's forward"):
        saliency(model, images(), "gradcam", target=0)


def test_gradcam_of_the_papers_conv_baseline_reads_its_convolution():
    """conv_fc_baseline has one feature map (its 10×10 convolution, stride 5): Grad-CAM's default layer."""
    torch.manual_seed(0)
    model = cvattn.create_model("conv_fc_baseline", num_classes=10, in_chans=1).eval()
    assert "gradcam" in available_methods(model)
    x = images(size=60)
    maps = saliency(model, x, "gradcam", target=3)
    torch.testing.assert_close(maps, saliency(model, x, "gradcam", target=3, layer="conv"))
    assert maps.shape == (3, 60, 60) and maps.std() > 0.05


def test_gradcam_plus_plus_on_one_positive_channel_is_the_activation():
    model = GapLinear()
    with torch.no_grad():
        model.features.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1))
        model.fc.weight.copy_(torch.tensor([[2.0, 0, 0]] * 4))
    x = images()
    torch.testing.assert_close(saliency(model, x, "gradcam++", target=0, layer="features"), normalise(x[:, 0].relu()))


def test_gradcam_on_vit_tokens_uses_the_patch_grid():
    """Default layer: the tokens entering the last attention (the last block's output reaches the logits only
    through its class token, so its patch tokens have zero gradient)."""
    model, x = tiny_vit(), images()
    kept = {}
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: kept.update(tokens=o))
    logits = model(x.requires_grad_(True))
    handle.remove()
    target = logits.argmax(1)
    grad = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), kept["tokens"])[0]
    patches, grads = kept["tokens"][:, 1:], grad[:, 1:]                          # (B, 16, C)
    cam = (grads.mean(1, keepdim=True) * patches).sum(-1).relu().reshape(3, 4, 4)
    torch.testing.assert_close(saliency(model, x.detach(), "gradcam"), upsampled(cam.detach()))


def test_one_layer_rollout_is_the_attention():
    """With one layer the identity only adds to the class token's own entry, which is dropped."""
    model, x = tiny_vit(depth=1), images()
    torch.testing.assert_close(saliency(model, x, "rollout"), saliency(model, x, "attention"))


def test_rollout_multiplies_layers_in_order():
    model, x = tiny_vit(depth=3), images()
    _, attn = model.forward_attention(x)
    eye = torch.eye(attn.shape[-1])
    layers = [(a + eye) / (a + eye).sum(-1, keepdim=True) for a in attn.detach().mean(2).unbind(1)]
    rollout = layers[2] @ layers[1] @ layers[0]
    torch.testing.assert_close(saliency(model, x, "rollout"), upsampled(rollout[:, 0, 1:].reshape(3, 4, 4)))
    assert not torch.allclose(saliency(model, x, "rollout"), saliency(model, x, "attention"))


def test_avg_pooled_vit_maps_read_the_mean_patch_row():
    """With global_pool='avg' the head reads the mean of the patch tokens, not the class token: each map is the
    mean of the patch rows."""
    model, x = tiny_vit(depth=3, global_pool="avg"), images()
    _, attn = model.forward_attention(x)
    eye = torch.eye(attn.shape[-1])
    layers = [(a + eye) / (a + eye).sum(-1, keepdim=True) for a in attn.detach().mean(2).unbind(1)]
    rollout = layers[2] @ layers[1] @ layers[0]
    patch_rows = rollout[:, 1:, 1:].mean(1).reshape(3, 4, 4)
    torch.testing.assert_close(saliency(model, x, "rollout"), upsampled(patch_rows))
    assert not torch.allclose(saliency(model, x, "rollout"), upsampled(rollout[:, 0, 1:].reshape(3, 4, 4)))
    last = attn.detach()[:, -1].mean(1)
    torch.testing.assert_close(saliency(model, x, "attention"), upsampled(last[:, 1:, 1:].mean(1).reshape(3, 4, 4)))


def test_one_layer_gradient_rollout_is_the_weighted_attention():
    """Chefer et al. 2021: R = I + Ā, Ā = mean_h ReLU(∇A ⊙ A); its class row, less the class token, is Ā's."""
    model, x = tiny_vit(depth=1), images()
    logits, (attn,) = model.forward_attention(x, stack=False)
    target = torch.tensor([0, 1, 2])
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attn)
    weighted = (grad * attn).relu().mean(1)[:, 0, 1:].reshape(3, 4, 4)
    torch.testing.assert_close(saliency(model, x, "grad_rollout", target=target), upsampled(weighted.detach()))


def test_glimpse_map_weights_later_steps_more():
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 6.0, 6.0]]])           # (B=1, T=2, 4)
    expected = torch.zeros(1, 8, 8)
    expected[0, :2, :2] = 0.5
    expected[0, 4:6, 4:6] = 1.0
    torch.testing.assert_close(glimpse_map(boxes, (8, 8)), expected)


def test_glimpses_map_peaks_at_the_last_glimpse():
    model, x = tiny_ram(), images()
    _, trajectory = model(x, return_trajectory=True)
    last = ((trajectory.locations[:, -1] + 1) * 8).floor().long().clamp(0, 15)  # pixel of the last centre
    maps = saliency(model, x, "glimpses")
    assert (maps[torch.arange(3), last[:, 1], last[:, 0]] == 1).all()
    with pytest.raises(ValueError, match="scale=2 is not a patch.*0 \\(finest\\) to 1"):
        saliency(model, x, "glimpses", scale=2)


def test_baselines():
    x = images()
    model = cbam_convnet()
    torch.testing.assert_close(saliency(model, x, "random", seed=3), saliency(model, x, "random", seed=3))
    assert not torch.allclose(saliency(model, x, "random", seed=3), saliency(model, x, "random", seed=4))
    centre = saliency(model, images(size=15), "center")
    assert (centre[:, 7, 7] == 1).all() and (centre < 1).sum() == 3 * (15 * 15 - 1)


# --- metrics -----------------------------------------------------------------------------------------------------

def peaked(batch: int, size: int, rows: list[int], cols: list[int]) -> torch.Tensor:
    maps = torch.rand(batch, size, size, generator=torch.Generator().manual_seed(0)) * 0.5
    maps[torch.arange(batch), torch.tensor(rows), torch.tensor(cols)] = 1.0
    return maps


def test_pointing_game_inside_outside_and_tolerance():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0]] * 4)                          # pixels 10..19
    inside = peaked(4, 60, [10, 19, 15, 12], [10, 19, 12, 15])
    assert pointing_game(inside, boxes).float().mean() == 1.0
    outside = peaked(4, 60, [40, 50, 0, 30], [40, 5, 59, 30])
    assert pointing_game(outside, boxes).float().mean() == 0.0
    # 3 px right of the box (column 22, the box ends at 19): a hit within tolerance 3, a miss within 2.
    near = peaked(1, 60, [15], [22])
    assert pointing_game(near, boxes[:1], tolerance=3).item() and not pointing_game(near, boxes[:1], tolerance=2).item()
    assert default_tolerance((224, 224)) == 15 and default_tolerance((60, 60)) == pytest.approx(15 * 60 / 224)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(inside, boxes, tolerance=-1)
    with pytest.raises(ValueError, match=r"boxes must be \(B, 4\)"):
        pointing_game(inside, boxes[:2])


def test_pointing_game_breaks_ties_by_seed():
    """Two equal maxima, one in the box: the seed picks one, reproducibly, and both get picked across seeds."""
    maps = torch.zeros(1, 30, 30)
    maps[0, 2, 2] = maps[0, 25, 25] = 1.0
    box = torch.tensor([[0.0, 0.0, 5.0, 5.0]])
    hits = [pointing_game(maps, box, tolerance=0, seed=s).item() for s in range(20)]
    assert hits == [pointing_game(maps, box, tolerance=0, seed=s).item() for s in range(20)]
    assert 0 < sum(hits) < 20


def test_energy_in_box():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 10.0], [2.0, 2.0, 4.0, 4.0]])
    uniform = torch.ones(2, 10, 10)
    torch.testing.assert_close(energy_in_box(uniform, boxes), torch.tensor([0.5, 0.04]))
    torch.testing.assert_close(energy_in_box(torch.zeros(2, 10, 10), boxes), torch.tensor([0.5, 0.04]))
    inside = torch.zeros(2, 10, 10)
    inside[0, 3, 1] = inside[1, 3, 3] = 0.7
    torch.testing.assert_close(energy_in_box(inside, boxes), torch.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_box(-uniform, boxes)


def checkerboard(size: int = 12) -> torch.Tensor:
    return (torch.arange(size)[:, None] + torch.arange(size)).remainder(2) * 2.0 - 1    # ±1, blurs to about 0


class RegionClassifier(nn.Module):
    """Class 0's logit is a matched filter for a checkerboard inside a fixed region; other pixels are ignored.

    On the checkerboard image: +10 (p ≈ 1); with the region zeroed (deleted) or blurred: about -10 (p ≈ 0).
    """

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", region * checkerboard(region.shape[0]))

    def forward(self, x):
        evidence = 20 * (x[:, 0] * self.weights).sum((1, 2)) / self.weights.abs().sum() - 10
        return torch.stack([evidence, -evidence], dim=1)


def test_deletion_and_insertion_prefer_the_right_ranking():
    region = torch.zeros(12, 12)
    region[2:6, 3:9] = 1.0
    model = RegionClassifier(region)
    x = checkerboard().expand(2, 1, -1, -1)
    perfect = (region + 0.01 * torch.rand(12, 12, generator=torch.Generator().manual_seed(0))).expand(2, -1, -1)
    reversed_ = 1 - perfect
    best, worst = deletion_auc(model, x, perfect), deletion_auc(model, x, reversed_)
    assert best.shape == (2,) and (best < worst - 0.3).all()
    blur_best, blur_worst = insertion_auc(model, x, perfect), insertion_auc(model, x, reversed_)
    assert (blur_best > blur_worst + 0.3).all()
    with pytest.raises(ValueError, match=r"pixels_per_step must be in \[1, 144\]"):
        deletion_auc(model, x, perfect, pixels_per_step=0)
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\)"):
        deletion_auc(model, x, perfect[:, :10])


def test_deletion_curve_is_the_trapezoid_from_the_image_to_the_blank():
    """One row per step over 12 rows, the first 6 of them the evidence: 13 points from p(x) to p(0)."""
    region = torch.zeros(12, 12)
    region[:6] = 1.0
    model = RegionClassifier(region)
    x = checkerboard()[None, None]
    rows = torch.arange(12, 0, -1.0)[:, None].expand(12, 12)[None]           # row 0 most salient
    probs = [torch.sigmoid(torch.tensor(2 * (20 * max(0, 6 - k) / 6 - 10))).item() for k in range(13)]
    expected = np.trapezoid(probs, np.linspace(0, 1, 13))
    assert deletion_auc(model, x, rows).item() == pytest.approx(expected, abs=1e-5)


# --- overlays ----------------------------------------------------------------------------------------------------

def test_overlay_blends_and_denormalises():
    raw = torch.rand(1, 6, 5, generator=torch.Generator().manual_seed(0))
    normalised = (raw - 0.3) / 0.2
    heat = torch.linspace(0, 1, 30).reshape(6, 5)
    plain = overlay(normalised, heat, alpha=0.0, mean=(0.3,), std=(0.2,))
    assert plain.dtype == np.uint8 and plain.shape == (6, 5, 3)
    np.testing.assert_array_equal(plain[..., 0], np.round(255 * raw[0].numpy()).astype(np.uint8))
    full = overlay(normalised, heat, alpha=1.0, cmap="jet", mean=(0.3,), std=(0.2,))
    assert tuple(full[0, 0]) == (0, 0, 128) and tuple(full[-1, -1]) == (128, 0, 0)   # jet's ends
    with pytest.raises(ValueError, match=r"saliency must be \(H, W\) = \(6, 5\)"):
        overlay(normalised, heat.T)
    with pytest.raises(ValueError, match="alpha"):
        overlay(normalised, heat, alpha=1.5)


def test_saliency_grid_layout_and_titles():
    x = images(batch=2)
    maps = {"gradcam": torch.rand(2, 16, 16), "random": torch.rand(2, 16, 16)}
    figure = saliency_grid(x, maps, labels=[1, 0], probs=[0.9, 0.25], class_names=["cat", "bird"],
                           boxes=torch.tensor([[1.0, 1, 8, 8], [2, 2, 9, 9]]))
    assert isinstance(figure, Figure) and len(figure.axes) == 2 * 5
    assert figure.axes[0].get_title() == "bird 90%" and figure.axes[5].get_title() == "cat 25%"
    assert figure.axes[1].get_title() == "gradcam\nmap" and figure.axes[4].get_title() == "random\noverlay"
    with pytest.raises(ValueError, match="empty"):
        saliency_grid(x, {})
    with pytest.raises(ValueError, match="maps of 'gradcam'"):
        saliency_grid(x, {"gradcam": torch.rand(2, 8, 8)})


def test_draw_glimpses_numbers_every_step():
    locations = torch.tensor([[[-0.5, -0.5], [0.0, 0.0], [0.5, 0.25]]])
    trajectory = GlimpseTrajectory(locations, locations, torch.tensor([4, 8]), torch.zeros(1, 3), torch.zeros(1, 3))
    ax = Figure().subplots()
    draw_glimpses(ax, trajectory, 16)
    rectangles = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]
    assert [r.get_xy() for r in rectangles] == [(1.5, 1.5), (5.5, 5.5), (9.5, 7.5)]
    assert all(r.get_width() == 4 for r in rectangles)


# --- evaluate ----------------------------------------------------------------------------------------------------

def boxed_batches(count: int = 2, batch: int = 4) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    result = []
    for _ in range(count):
        corner = torch.randint(0, 8, (batch, 2), generator=gen).float()
        result.append((torch.randn(batch, 1, 16, 16, generator=gen), torch.randint(0, 5, (batch,), generator=gen),
                       torch.cat([corner, corner + 8], 1)))
    return result


def test_evaluate_reports_methods_beside_the_baselines():
    results = evaluate(cbam_convnet(), boxed_batches(), ["gradcam"], pixels_per_step=64)
    assert list(results) == ["gradcam", "random", "center", "brightness"]
    for scores in results.values():
        assert scores["num_images"] == 8
        assert set(scores) == {"pointing_game", "energy_in_box", "deletion_auc", "insertion_auc", "num_images"}
        assert all(0 <= scores[k] <= 1 for k in ("pointing_game", "energy_in_box", "deletion_auc", "insertion_auc"))
    limited = evaluate(cbam_convnet(), boxed_batches(), ["spatial_gate"], max_batches=1, auc=False)
    assert limited["spatial_gate"]["num_images"] == 4 and "deletion_auc" not in limited["center"]
    with pytest.raises(ValueError, match=r"batches of \(images, labels, boxes\)"):
        evaluate(cbam_convnet(), [batch[:2] for batch in boxed_batches()], ["gradcam"])


def test_evaluate_on_a_cluttered_datamodule():
    from cvattn.data import FashionMNISTDataModule

    data = FashionMNISTDataModule(data_dir=str(FASHION_MNIST), batch_size=4, num_workers=0, canvas_size=60,
                                  num_distractors=4)
    model = lively(cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=4, attn_layer="cbam"))
    results = evaluate(model, data, ["spatial_gate"], max_batches=2, auc=False)
    assert results["spatial_gate"]["num_images"] == 8
    # 28-px objects on a 60-px canvas always lie within 4 px of the centre: the centre baseline is perfect here.
    assert results["center"]["pointing_game"] == 1.0


# --- command line ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A config and checkpoint of a tiny CBAM convnet on cluttered Fashion-MNIST (untrained weights suffice)."""
    root = tmp_path_factory.mktemp("run")
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "plugins": ["not parsable, as in a run's saved config"]},
        "model": {"class_path": "cvattn.lightning.ImageClassifier",
                  "init_args": {"model": "convnet2", "model_kwargs": {"attn_layer": "cbam", "width": 4}}},
        "data": {"class_path": "cvattn.data.FashionMNISTDataModule",
                 "init_args": {"data_dir": str(FASHION_MNIST), "batch_size": 4, "num_workers": 0,
                               "canvas_size": 60, "num_distractors": 4}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    module = ImageClassifier(model="convnet2", model_kwargs={"attn_layer": "cbam", "width": 4}, num_classes=10,
                             in_chans=1)
    torch.save({"state_dict": module.state_dict(), "epoch": 0}, root / "model.ckpt")
    other = ImageClassifier(model="resnet20", num_classes=10, in_chans=1)
    torch.save({"state_dict": other.state_dict()}, root / "other.ckpt")
    return root


def test_cli_writes_overlays_and_metrics(trained_run, tmp_path):
    out = tmp_path / "new" / "saliency"
    code = cli_main(["--checkpoint", str(trained_run / "model.ckpt"), "--config", str(trained_run / "config.yaml"),
                     "--out", str(out), "--methods", "spatial_gate", "gradcam", "--num-images", "2",
                     "--max-batches", "1", "--pixels-per-step", "600"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["image_000.png", "image_001.png", "index.html", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())["methods"]
    assert list(metrics) == ["spatial_gate", "gradcam", "random", "center", "brightness"]
    assert metrics["gradcam"]["num_images"] == 4 and 0 <= metrics["gradcam"]["deletion_auc"] <= 1
    page = (out / "index.html").read_text()
    assert page.count('<img src="image_00') == 2 and "<caption>Metrics over 1 test batches" in page
    assert f"<td>gradcam</td><td>{metrics['gradcam']['pointing_game']:.4f}</td>" in page


def test_cli_streams_figures_batch_by_batch_and_a_failure_leaves_nothing(trained_run, tmp_path, monkeypatch):
    """Figures go to disk as they are drawn (one alive at a time, batch k after batch k-1's files), and an error
    midway removes them all."""
    import cvattn.saliency.cli as cli
    from cvattn.saliency.gallery import Gallery

    staged, alive, peak = [], [0], [0]
    real_saliency, real_grid, real_add = cli.saliency, cli.saliency_grid, Gallery.add_figure

    def saliency(model, images, method):
        staged.append(len(list(tmp_path.glob(".*.partial*/*.png"))))
        if fail and len(staged) == 2:
            raise RuntimeError("CUDA out of memory")
        return real_saliency(model, images, method)

    def grid(*args, **kwargs):
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        return real_grid(*args, **kwargs)

    def add_figure(self, *args, **kwargs):
        real_add(self, *args, **kwargs)
        alive[0] -= 1

    monkeypatch.setattr(cli, "saliency", saliency)
    monkeypatch.setattr(cli, "saliency_grid", grid)
    monkeypatch.setattr(Gallery, "add_figure", add_figure)
    args = ["--checkpoint", str(trained_run / "model.ckpt"), "--config", str(trained_run / "config.yaml"), "--out",
            str(tmp_path / "out"), "--methods", "gradcam", "--num-images", "6", "--max-batches", "1", "--no-auc"]
    fail = False
    assert cli_main(args) == 0
    assert staged == [0, 4] and peak[0] == 1                          # the loader's batches are 4 images
    assert len(list((tmp_path / "out").glob("image_*.png"))) == 6
    fail, staged[:] = True, []
    args[args.index("--out") + 1] = str(tmp_path / "again")
    with pytest.raises(RuntimeError, match="out of memory"):
        cli_main(args)
    assert staged == [0, 4] and not (tmp_path / "again").exists() and not list(tmp_path.glob(".again.partial*"))


@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", "does not exist"),
    ("other architecture", r"does not fit the config's model \(ConvNet\): missing keys: \d+ \(e\.g\. model\.blocks"),
    ("out under a file", "cannot be created"),
    ("method for another family", r"--methods \['rollout'\] do not apply to ConvNet"),
    ("not a device", r"--device 'gpu0' is not a device; use cpu, cuda or cuda:N"),
    ("absent GPU", r"--device 'cuda:99': (CUDA is not available here|there are \d+ GPUs here)"),
    ("mps", r"--device 'mps': this command runs on cpu or cuda \(cuda:N\), not on 'mps' devices"),
    ("meta", r"--device 'meta': this command runs on cpu or cuda"),
    ("bad value in the config", r"^error: Bad value for data\.init_args\.batch_size: expected a int, got 'ten'\.\n$"),
    ("more images than the test set", r"--num-images 20000 is more than the 10000 test images"),
    ("option of the other mode", r"--model, --random-weights are not for --checkpoint/--config"),
])
def test_cli_errors_leave_no_output(trained_run, tmp_path, capsys, case, message):
    checkpoint = {"missing checkpoint": "absent.ckpt", "other architecture": "other.ckpt"}.get(case, "model.ckpt")
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out" if case == "out under a file" else tmp_path / "out"
    methods = ["rollout"] if case == "method for another family" else ["gradcam"]
    config = trained_run / "config.yaml"
    if case == "bad value in the config":
        config = tmp_path / "bad.yaml"
        config.write_text((trained_run / "config.yaml").read_text().replace("batch_size: ", "batch_size: ten #"))
    device = {"not a device": ["--device", "gpu0"], "absent GPU": ["--device", "cuda:99"], "mps": ["--device", "mps"],
              "meta": ["--device", "meta"],
              "more images than the test set": ["--num-images", "20000"],
              "option of the other mode": ["--model", "resnet18", "--random-weights"]}.get(case, [])
    code = cli_main(["--checkpoint", str(trained_run / checkpoint), "--config", str(config),
                     "--out", str(out), "--methods", *methods, "--no-auc", *device])
    assert code == 2
    assert re.search(message, capsys.readouterr().err, re.MULTILINE)
    assert not out.exists()


# --- callback ----------------------------------------------------------------------------------------------------

class ImageLogger(Logger):
    """A logger that takes images through ``log_image``, like Weights & Biases'."""

    def __init__(self):
        super().__init__()
        self.images = []

    name = "images"
    version = 0

    def log_image(self, key, images, step=None):
        self.images.append((key, images, step))

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def fit_one_epoch(tmp_path, logger, callback) -> None:
    module = ImageClassifier(model="convnet2", model_kwargs={"attn_layer": "cbam", "width": 4}, num_classes=5,
                             in_chans=1, lr=0.01)
    batch = boxed_batches(count=1, batch=6)[0]
    loader = DataLoader(TensorDataset(*batch), batch_size=3)
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)


def test_callback_writes_png_without_an_image_logger(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    callback = SaliencyCallback(num_images=4, methods=["spatial_gate", "gradcam"])
    fit_one_epoch(tmp_path, logger, callback)
    png = Path(logger.log_dir) / "saliency" / "epoch=0.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert callback._batch[0].shape == (4, 1, 16, 16)


def test_callback_sends_images_to_a_logger_that_takes_them(tmp_path):
    logger = ImageLogger()
    fit_one_epoch(tmp_path, logger, SaliencyCallback(num_images=2))
    ((key, (array,), step),) = logger.images
    assert key == "saliency" and step == 2 and array.dtype == np.uint8 and array.shape[2] == 3
    assert not list(tmp_path.rglob("*.png"))


def test_callback_every_n_epochs_and_bad_methods(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    fit_one_epoch(tmp_path, logger, SaliencyCallback(every_n_epochs=2))
    assert not list(tmp_path.rglob("*.png"))
    with pytest.raises(ValueError, match=r"methods \['rollout'\] do not apply to ConvNet"):
        fit_one_epoch(tmp_path, logger, SaliencyCallback(methods=["rollout"]))
    with pytest.raises(ValueError, match="every_n_epochs"):
        SaliencyCallback(every_n_epochs=0)
