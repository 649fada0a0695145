"""The CAM variants, gradient and perturbation attributions: each against its definition on a model where the
definition has a closed form, and against Captum's and pytorch-grad-cam's maps on the same model and weights."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import (GuidedBackprop, GuidedGradCam, IntegratedGradients, LayerAttribution, LayerGradCam,
                         NoiseTunnel, Occlusion, Saliency)
from pytorch_grad_cam import EigenCAM, GradCAM, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cvattn.models.vit import VisionTransformer
from cvattn.saliency import saliency
from cvattn.saliency.methods.gradcam import first_component
from cvattn.saliency.methods.gradients import guided_backprop, integrated_gradients_attribution
from cvattn.saliency.methods.occlusion import occlusion_attribution
from cvattn.saliency.runtime import normalise

torch.set_num_threads(1)
CAMS = ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam"]
ATTRIBUTIONS = ["gradient", "smoothgrad", "integrated_gradients", "guided_gradcam", "occlusion"]


class SmallCNN(nn.Module):
    """conv → act → strided conv (``features.2``, an 8×8 map at 16 px) → act → GAP → linear."""

    def __init__(self, act_layer: type[nn.Module] = nn.ReLU, inplace: bool = False):
        super().__init__()
        last_act = nn.ReLU(inplace=inplace) if act_layer is nn.ReLU else act_layer()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), act_layer(), nn.Conv2d(8, 8, 3, 2, 1), last_act)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class GapLinear(nn.Module):
    """A 1×1 convolution (linear in the image), global average pooling, a linear layer: CAM's setting."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.features = nn.Conv2d(3, channels, 1, bias=False)
        self.fc = nn.Linear(channels, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def small_cnn(act_layer: type[nn.Module] = nn.ReLU, inplace: bool = False) -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(act_layer, inplace).eval()


def gap_linear() -> GapLinear:
    torch.manual_seed(0)
    return GapLinear().eval()


def images(batch: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_difference(ours: torch.Tensor, theirs) -> float:
    return (ours - torch.as_tensor(np.asarray(theirs), dtype=torch.float32)).abs().max().item()


TARGETS = torch.tensor([0, 3, 1])


# --- the saliency() contract for every new method -----------------------------------------------------------------

def test_every_method_restores_the_model_and_leaves_no_trace():
    model = small_cnn().train()
    model.features[0].eval()
    modes = {name: m.training for name, m in model.named_modules()}

    def hook_count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                   for m in model.modules())

    hooks = hook_count()
    for method in CAMS + ATTRIBUTIONS:
        options = {"samples": 3} if method == "smoothgrad" else {"layer": "features.2"} if "cam" in method else {}
        maps = saliency(model, images(), method, target=TARGETS, **options)
        assert maps.shape == (3, 16, 16) and maps.min() >= 0 and maps.max() <= 1, method
        assert {name: m.training for name, m in model.named_modules()} == modes, method
        assert hook_count() == hooks, method
        assert all(p.grad is None for p in model.parameters()), method


@pytest.mark.parametrize("method, options, message", [
    ("integrated_gradients", {"steps": 0}, r"steps must be a positive integer, got 0"),
    ("integrated_gradients", {"integration": "simpson"}, r"Unknown integration 'simpson'.*'gausslegendre'"),
    ("integrated_gradients", {"integration": "riemann_trapezoid", "steps": 1}, r"steps must be at least 2"),
    ("integrated_gradients", {"baseline": "black"}, r"baseline must be a number"),
    ("smoothgrad", {"samples": 2.5}, r"samples must be a positive integer, got 2.5"),
    ("smoothgrad", {"noise": -0.1}, r"noise .* must be > 0, got -0.1"),
    ("occlusion", {"window": 40}, r"window \(40 px\) must fit in the image \(16×16\)"),
    ("occlusion", {"window": 2, "stride": 3}, r"stride \(3\) must be at most window \(2\)"),
    ("occlusion", {"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ("scorecam", {"batch_size": -1}, r"batch_size must be a positive integer, got -1"),
    ("layercam", {"steps": 3}, r"'layercam' has no option\(s\) \['steps'\]; it accepts \['layer'\]"),
])
def test_bad_options_name_the_value(method, options, message):
    with pytest.raises(ValueError, match=message):
        saliency(small_cnn(), images(), method, **options)


# --- the CAM variants against their definitions ------------------------------------------------------------------

def cam_terms(model: GapLinear, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, K, H, W) and the class's weights W_c (K,): on GAP-linear, G^k = W_ck / (H·W) at every position."""
    return model.features(x).detach(), model.fc.weight[target].detach()


def test_hirescam_and_xgradcam_equal_gradcam_when_the_gradient_is_spatially_constant():
    model, x = gap_linear(), images()
    for target in range(5):
        activation, weights = cam_terms(model, x, target)
        cam = normalise(torch.einsum("k,bkhw->bhw", weights, activation).relu())         # CAM = Grad-CAM here
        for method in ("gradcam", "hirescam", "xgradcam"):
            torch.testing.assert_close(saliency(model, x, method, target=target, layer="features"), cam)


def test_layercam_keeps_only_positive_gradients():
    """LayerCAM = ReLU(Σ_k ReLU(G^k) ⊙ A^k); on GAP-linear G^k = W_ck/(H·W), so the map is ReLU(Σ_k ReLU(W_ck) A^k)."""
    model, x = gap_linear(), images()
    for target in range(5):
        activation, weights = cam_terms(model, x, target)
        expected = normalise(torch.einsum("k,bkhw->bhw", weights.relu(), activation).relu())
        torch.testing.assert_close(saliency(model, x, "layercam", target=target, layer="features"), expected)


def test_hirescam_and_xgradcam_differ_from_gradcam_where_the_gradient_varies():
    """Under a spatially varying gradient: HiResCAM = ReLU(Σ_k G ⊙ A), XGrad-CAM w_k = Σ(G·A)/ΣA."""
    model, x = small_cnn(), images()
    kept = {}
    handle = model.features[2].register_forward_hook(lambda m, i, o: kept.update(a=o))
    logits = model(x)
    handle.remove()
    activation = kept["a"]
    gradient = torch.autograd.grad(logits.gather(1, TARGETS[:, None]).sum(), activation)[0]
    activation, gradient = activation.detach(), gradient.detach()
    hires = (gradient * activation).sum(1).relu()
    weights = (gradient * activation).sum((2, 3), keepdim=True) / activation.sum((2, 3), keepdim=True)
    xgrad = (weights * activation).sum(1).relu()
    grad_cam = (gradient.mean((2, 3), keepdim=True) * activation).sum(1).relu()
    for method, expected in (("hirescam", hires), ("xgradcam", xgrad)):
        ours = saliency(model, x, method, target=TARGETS, layer="features.2")
        expected = normalise(F.interpolate(expected[:, None], size=(16, 16), mode="bilinear")[:, 0])
        torch.testing.assert_close(ours, expected)
    assert (saliency(model, x, "hirescam", target=TARGETS, layer="features.2")
            - saliency(model, x, "gradcam", target=TARGETS, layer="features.2")).abs().max() > 0.05


def test_eigencam_is_the_projection_on_the_first_principal_component():
    model, x = gap_linear(), images()
    activation = model.features(x).detach()                                              # (B, K, H, W)
    rows = activation.flatten(2).transpose(1, 2).double()                                 # (B, H·W, K)
    rows = rows - rows.mean(1, keepdim=True)
    _, vectors = torch.linalg.eigh(rows.transpose(1, 2) @ rows)                            # ascending eigenvalues
    projection = (rows @ vectors[:, :, -1:])[..., 0]                                      # (B, H·W)
    flip = projection.amin(1).abs() > projection.amax(1).abs()                            # sign: largest is positive
    projection = torch.where(flip[:, None], -projection, projection).float().reshape(3, 16, 16)
    expected = normalise(projection.relu())
    for target in (0, 4):                                                                  # class-agnostic
        torch.testing.assert_close(saliency(model, x, "eigencam", target=target, layer="features"), expected)


def test_scorecam_on_a_gap_linear_model_weights_channels_by_the_cam_inside_their_mask():
    """With a 1×1 convolution, masking the input masks the activations: A(x ⊙ H) = A(x) ⊙ H. So channel k's score
    is y_c(x ⊙ H^k) = mean_ij(H^k ⊙ CAM_c) + b_c with CAM_c = Σ_m W_cm A^m: the class activation map's mean over the
    region channel k marks. The bias is the same for every k and cancels in the softmax."""
    model, x = gap_linear(), images()
    for target in range(5):
        activation, weights = cam_terms(model, x, target)
        cam = torch.einsum("k,bkhw->bhw", weights, activation)                           # (B, H, W)
        low, high = activation.amin((2, 3), keepdim=True), activation.amax((2, 3), keepdim=True)
        masks = (activation - low) / (high - low + 1e-8)                                  # H^k at input resolution
        scores = (masks * cam[:, None]).mean((2, 3))                                      # (B, K)
        expected = (scores.softmax(1)[:, :, None, None] * activation).sum(1).relu()
        ours = saliency(model, x, "scorecam", target=target, layer="features", batch_size=3)
        torch.testing.assert_close(ours, normalise(expected), atol=1e-5, rtol=1e-5)


# --- the CAM variants against pytorch-grad-cam -------------------------------------------------------------------

LIBRARY_CAMS = {"gradcam": GradCAM, "hirescam": HiResCAM, "xgradcam": XGradCAM, "layercam": LayerCAM,
                "scorecam": ScoreCAM}


@pytest.mark.parametrize("method", list(LIBRARY_CAMS))
def test_cams_equal_pytorch_grad_cam(method):
    model, x = small_cnn(), images()
    ours = saliency(model, x, method, target=TARGETS, layer="features.2")
    with warnings.catch_warnings(), LIBRARY_CAMS[method](model, [model.features[2]]) as cam:
        warnings.simplefilter("ignore")
        theirs = cam(x, [ClassifierOutputTarget(int(t)) for t in TARGETS])
    assert max_difference(ours, theirs) <= 1e-4


def test_eigencam_equals_pytorch_grad_cam_up_to_the_singular_vectors_sign():
    """Its EigenCAM keeps LAPACK's sign; ours flips a map whose largest magnitude is negative. Either the same map
    or the map of the other sign, image by image."""
    model, x = small_cnn(), images()
    with EigenCAM(model, [model.features[2]]) as cam:
        theirs = torch.as_tensor(cam(x, None))
    ours = saliency(model, x, "eigencam", layer="features.2")
    activation = model.features[:3](x).detach()
    flipped = normalise(F.interpolate(first_component(activation).neg().relu()[:, None], size=(16, 16),
                                      mode="bilinear")[:, 0])
    for b in range(3):
        assert min(max_difference(ours[b], theirs[b]), max_difference(flipped[b], theirs[b])) <= 1e-4


def test_an_in_place_op_after_the_layer_leaves_its_activation_as_it_was():
    """After ``ReLU(inplace=True)`` the layer's output tensor holds the ReLU's result; Grad-CAM must weight the
    layer's own output. pytorch-grad-cam 1.5.7 keeps a detached view of that tensor (on the CPU), so it reads the
    overwritten values; Captum and cvattn read the layer's output."""
    x = images()
    plain = saliency(small_cnn(), x, "gradcam", target=TARGETS, layer="features.2")
    model = small_cnn(inplace=True)
    torch.testing.assert_close(saliency(model, x, "gradcam", target=TARGETS, layer="features.2"), plain)
    layer_maps = LayerGradCam(model, model.features[2]).attribute(x, target=TARGETS, relu_attributions=True)
    theirs = LayerAttribution.interpolate(layer_maps, (16, 16), interpolate_mode="bilinear")[:, 0]
    assert max_difference(plain, normalise(theirs.detach())) <= 1e-4
    with GradCAM(model, [model.features[2]]) as cam:
        assert max_difference(plain, cam(x, [ClassifierOutputTarget(int(t)) for t in TARGETS])) > 0.1


def vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=16, depth=2,
                              num_heads=2)
    for block in model.blocks:
        nn.init.normal_(block.attn.qkv.weight, std=0.5)
    return model.eval()


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam"])
def test_cams_on_vit_tokens_equal_pytorch_grad_cam_with_its_reshape_transform(method):
    model, x = vit(), images()

    def patch_grid(tokens):                                                              # its ViT tutorial's
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    ours = saliency(model, x, method, target=TARGETS)                                     # blocks.1.norm1
    with LIBRARY_CAMS[method](model, [model.blocks[-1].norm1], reshape_transform=patch_grid) as cam:
        theirs = cam(x, [ClassifierOutputTarget(int(t)) for t in TARGETS])
    assert max_difference(ours, theirs) <= 1e-4


# --- gradient attributions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_are_complete(method):
    """Σ attributions = y_c(x) − y_c(baseline) (Sundararajan et al., Proposition 1), within 1% at 64 steps. With
    GELUs: through ReLUs the integrand jumps where a unit switches, which costs a quadrature more points."""
    model, x = small_cnn(nn.GELU), images()
    attributions = integrated_gradients_attribution(model, x, TARGETS, steps=64, integration=method)
    with torch.no_grad():
        difference = (model(x) - model(torch.zeros_like(x))).gather(1, TARGETS[:, None])[:, 0]
    total = attributions.sum((1, 2, 3))
    assert ((total - difference).abs() <= 0.01 * difference.abs()).all(), (total, difference)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_right"])
def test_integrated_gradients_equal_captum(method):
    model, x = small_cnn(), images()
    theirs = IntegratedGradients(model).attribute(x, baselines=0.5, target=TARGETS, n_steps=20, method=method)
    ours = integrated_gradients_attribution(model, x, TARGETS, steps=20, integration=method, baseline=0.5)
    if method == "riemann_trapezoid":      # Captum's trapezoid weights sum to 1 - 1/steps; ours to 1
        ours = ours * (1 - 1 / 20)
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-4)
    maps = saliency(model, x, "integrated_gradients", target=TARGETS, steps=20, integration=method, baseline=0.5)
    assert max_difference(maps, normalise(theirs.detach().sum(1).abs())) <= 1e-4


def test_gradient_equals_captum_saliency():
    model, x = small_cnn(), images()
    theirs = Saliency(model).attribute(x, target=TARGETS, abs=True).amax(1)
    assert max_difference(saliency(model, x, "gradient", target=TARGETS), normalise(theirs)) <= 1e-4


def test_smoothgrad_equals_captum_noise_tunnel_with_the_same_noise():
    """Same seed, same draws: Captum draws the noise from the global generator, ours from a seeded one."""
    model, x = small_cnn(), images(batch=1)
    span = (x.max() - x.min()).item()
    torch.manual_seed(7)
    theirs = NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=6, stdevs=0.2 * span,
                                                    target=2, abs=False)
    ours = saliency(model, x, "smoothgrad", target=2, samples=6, noise=0.2, seed=7)
    assert max_difference(ours, normalise(theirs.abs().amax(1))) <= 1e-4
    assert max_difference(ours, saliency(model, x, "gradient", target=2)) > 0.05       # the noise did something


def test_guided_gradcam_equals_captum():
    model, x = small_cnn(), images()
    torch.testing.assert_close(guided_backprop(model, x, TARGETS),
                               GuidedBackprop(model).attribute(x, target=TARGETS).detach())
    theirs = GuidedGradCam(model, model.features[2]).attribute(x, target=TARGETS, interpolate_mode="bilinear")
    ours = saliency(model, x, "guided_gradcam", target=TARGETS, layer="features.2")
    assert max_difference(ours, normalise(theirs.detach().abs().amax(1))) <= 1e-4


def test_gradcam_equals_captum_layer_gradcam():
    model, x = small_cnn(), images()
    layer_maps = LayerGradCam(model, model.features[2]).attribute(x, target=TARGETS, relu_attributions=True)
    theirs = LayerAttribution.interpolate(layer_maps, (16, 16), interpolate_mode="bilinear")[:, 0]
    ours = saliency(model, x, "gradcam", target=TARGETS, layer="features.2")
    assert max_difference(ours, normalise(theirs.detach())) <= 1e-4


# --- occlusion ---------------------------------------------------------------------------------------------------

class ReadsOneRegion(nn.Module):
    """Class 1's logit is the sum of rows 4-7, columns 10-13 over channels; class 0's is 0."""

    def forward(self, x):
        region = x[:, :, 4:8, 10:14].sum((1, 2, 3))
        return torch.stack([torch.zeros_like(region), region], 1)


def test_occlusion_finds_the_region_the_model_reads():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5         # positive pixels
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[4:8, 10:14] = True
    # One pixel at a time: the drop is exactly the pixel's channel sum inside the region, 0 outside.
    exact = occlusion_attribution(ReadsOneRegion(), x, torch.tensor([1, 1]), window=1, stride=1)
    torch.testing.assert_close(exact, x.sum(1) * region)
    maps = saliency(ReadsOneRegion(), x, "occlusion", target=1, window=4, stride=2)
    reach = F.max_pool2d(region[None, None].float(), 7, 1, 3)[0, 0].bool()               # windows touching it
    assert (maps[:, ~reach] == 0).all() and (maps[:, region].amin(1) > 0.2).all()


def test_occlusion_equals_captum():
    model, x = small_cnn(), images()
    theirs = Occlusion(model).attribute(x, sliding_window_shapes=(3, 5, 5), strides=(3, 3, 3), baselines=0.25,
                                        target=TARGETS)
    ours = occlusion_attribution(model, x, TARGETS, window=5, stride=3, baseline=0.25, batch_size=7)
    torch.testing.assert_close(ours, theirs[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(theirs[:, 0], theirs[:, 2])                               # a window spans channels
