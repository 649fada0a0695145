"""The CAM family: class activation maps from one layer's activations A (B, C, h, w) and, for most, the gradient
G = ∂y_c/∂A of the target logit y_c. One mechanism (a hook on the layer, one ``torch.autograd.grad``), each method a
few lines of arithmetic on (A, G), as in pytorch-grad-cam's ``BaseCAM``.

- Grad-CAM (Selvaraju et al., ICCV 2017): w_k = mean_ij G^k_ij; map = ReLU(Σ_k w_k A^k).
- Grad-CAM++ (Chattopadhay et al., WACV 2018, Eq. 19 with the exponential score):
  α^k_ij = G² / (2G² + Σ_ab A^k_ab G³) (0 where the denominator is 0), w_k = Σ_ij α^k_ij ReLU(G^k_ij);
  map = ReLU(Σ_k w_k A^k).
- HiResCAM (Draelos & Carin, arXiv:2011.08891): map = ReLU(Σ_k G^k ⊙ A^k), the element-wise product before the
  channel sum; equal to Grad-CAM when G is constant over positions (a GAP-linear head).
- XGrad-CAM (Fu et al., BMVC 2020, Eq. 9): w_k = Σ_ij G^k_ij A^k_ij / Σ_ij A^k_ij (0 where Σ A^k is 0; pytorch-grad-cam
  adds 1e-7 to the denominator instead); map = ReLU(Σ_k w_k A^k).
- LayerCAM (Jiang et al., IEEE TIP 2021, Eqs. 4-5): map = ReLU(Σ_k ReLU(G^k) ⊙ A^k).
- Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the projection of A, as (h·w, C) rows centred per channel (as
  pytorch-grad-cam centres them), on its first right singular vector; class-agnostic (no gradient). A singular
  vector's sign is arbitrary: the map is flipped when its most negative value is larger in magnitude than its
  largest (pytorch-grad-cam's ``get_2d_projection_with_sign_correction``, Seg-Eigen-CAM Eq. 13; its ``EigenCAM``
  keeps whatever sign LAPACK returns), then ReLU.
- Score-CAM (Wang et al., CVPR-W 2020, Algorithm 1): each channel A^k, upsampled to the input and min-max
  normalised to H^k ∈ [0, 1], masks the input; its score s_k is the target logit of X ⊙ H^k; w = softmax_k(s);
  map = ReLU(Σ_k w_k A^k). The paper's baseline term −f(X_b) is the same for every k and cancels in the softmax.
  As pytorch-grad-cam: the logit (not the probability), bilinear upsampling with ``align_corners=True``, a 1e-8
  in the normalisation's denominator. One forward per channel and image (``batch_size`` masked images at a time).

The layer is any module, by path (``layer='stages.1'``); by default the one whose output ``forward_features``
returns (the last entry of ``feature_info``) for CNNs. For ViTs, token layers (B, T, C) are read as
(B, C, H/p, W/p) maps on the patch grid (the class token dropped), and the default is the last block's first
LayerNorm, ``blocks.{L-1}.norm1``, the tokens entering the last attention, as in pytorch-grad-cam's ViT tutorial:
with class-token pooling the logits read only the class token of the last block's output, so the gradient on
that output's patch tokens is exactly zero and Grad-CAM of the last block would be blank.

Speed: the forward runs without autograd up to the layer and records the graph only from the layer's output on
(the layer's output becomes a leaf), so nothing before the layer is kept for a backward that never reaches it,
and the gradient is taken for A alone, never for parameters.
Written here rather than taken from pytorch-grad-cam: see docs/saliency.md.
"""
from __future__ import annotations

import weakref
from contextlib import ExitStack

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_count, did_you_mean
from cvattn.saliency.adapters import expected_channels, is_foreign
from cvattn.saliency.runtime import inspection_mode
from cvattn.saliency.registry import has_activation_maps, reads_attention, register_method


def find_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)`` with a ``ValueError`` that suggests real paths."""
    modules = dict(model.named_modules())
    if path not in modules or not path:
        top = [name for name in modules if name and "." not in name]
        raise ValueError(f"{type(model).__name__} has no module {path!r}.{did_you_mean(path, modules)} Give layer= as "
                         f"a module path from model.named_modules(), e.g. one of the top-level modules {top}.")
    return modules[path]


def default_layer(model: nn.Module) -> str:
    """Grad-CAM's layer when none is given. A ViT: the input of its last block's attention (its
    ``default_cam_layer``, else ``blocks.{L-1}.norm1``). A cvattn CNN: its last feature map, the last entry of
    ``feature_info``. Any other CNN (timm's, torchvision's): the last module to finish, in a probe forward of one
    blank image at the model's own input size, whose output is a (1, C, h, w) map with h, w > 1 (torchvision's
    ``layer4`` or ``features``, timm's ``layer4`` or ``bn2`` after EfficientNet's head convolution; timm's
    ``feature_info`` stops before that convolution), probed once per model."""
    if getattr(model, "default_cam_layer", None):
        return model.default_cam_layer
    if reads_attention(model):
        return f"blocks.{len(model.blocks) - 1}.norm1"
    if hasattr(model, "num_prefix_tokens"):
        raise ValueError(f"{type(model).__name__} is a transformer whose attention cvattn does not read (it reads "
                         f"timm ViTs built on timm.layers.Attention with global_pool 'token' or 'avg', torchvision's "
                         f"and Hugging Face's ViTs), so Grad-CAM has no token grid to put its tokens on: pass "
                         f"layer='<module path>' of a module whose output is (B, C, h, w).")
    if getattr(model, "output_fmt", "NCHW") != "NCHW":
        raise ValueError(f"{type(model).__name__} keeps its feature maps channels-last ({model.output_fmt}), which "
                         f"Grad-CAM does not read: pass layer='<module path>' of a module whose output is "
                         f"(B, C, h, w).")
    if getattr(model, "feature_info", None) and not is_foreign(model):
        return model.feature_info[-1]["module"]
    original = getattr(model, "adapted_model", model)          # views are made per call; the model stays
    if original not in _PROBED:
        _PROBED[original] = _last_feature_map(model)
    return _PROBED[original]


_PROBED: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def _last_feature_map(model: nn.Module) -> str:
    in_chans = expected_channels(model)
    if in_chans is None:
        raise ValueError(f"{type(model).__name__} has no feature_info or in_chans to find its last feature map: "
                         f"pass layer='<module path>' (a convolutional layer or block whose output is (B, C, H, W)).")
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (in_chans, 224, 224))[-2:]
    parameter = next(model.parameters())
    finished: list[str] = []

    def record(path: str):
        def hook(_module, inputs, output):
            passed_on = bool(inputs) and output is inputs[0]          # an nn.Identity names nothing new
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1 and not passed_on:
                finished.append(path)
        return hook

    with ExitStack() as stack, inspection_mode(model), torch.no_grad():
        for path, module in model.named_modules():
            if path:
                stack.callback(module.register_forward_hook(record(path)).remove)
        model(torch.zeros(1, in_chans, *size, device=parameter.device, dtype=parameter.dtype))
    if not finished:
        raise ValueError(f"{type(model).__name__} produced no (B, C, h, w) feature map with h, w > 1 on a "
                         f"{size[0]}×{size[1]} image: pass layer='<module path>' of the layer to explain.")
    return finished[-1]


def layer_output(
    model: nn.Module, images: torch.Tensor, layer: str | None, track_gradient: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the layer's output A (as the layer returned it: (B, C, h, w) or (B, T, C) tokens).

    With ``track_gradient`` the forward runs without autograd until the layer and with it after: A is a leaf that
    requires grad, and the logits are differentiable with respect to A only. Otherwise nothing is recorded."""
    layer = layer or default_layer(model)
    module = find_module(model, layer)
    outputs = []

    def hook(_module, _inputs, output):
        # Blocks that return (tokens, extras) tuples, like the ViT's, hand their tokens on first.
        tokens = output[0] if isinstance(output, tuple) else output
        if track_gradient:
            torch.set_grad_enabled(True)
            tokens = tokens.detach().requires_grad_(True)
        outputs.append(tokens)
        # A copy goes on, so an in-place op after the layer (ReLU(inplace=True)) leaves the leaf A as it was.
        passed = tokens.clone() if track_gradient else tokens
        return (passed, *output[1:]) if isinstance(output, tuple) else passed

    grad_enabled = torch.is_grad_enabled()
    handle = module.register_forward_hook(hook)
    try:
        torch.set_grad_enabled(False)
        logits = model(images.detach())
    finally:
        handle.remove()
        torch.set_grad_enabled(grad_enabled)
    if not outputs:
        raise ValueError(f"Layer {layer!r} did not run in {type(model).__name__}'s forward; pick a layer that does.")
    return logits, outputs[-1]


def activation_and_gradient(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output A and ∂(target logits)/∂A, both as (B, C, h, w) maps."""
    logits, activation = layer_output(model, images, layer, track_gradient=True)
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activation)
    return _as_map(model, activation, images), _as_map(model, gradient, images)


def activation_map(model: nn.Module, images: torch.Tensor, layer: str | None) -> torch.Tensor:
    """The layer's output A as a (B, C, h, w) map, from a forward without autograd."""
    return _as_map(model, layer_output(model, images, layer, track_gradient=False)[1], images)


def _as_map(model: nn.Module, x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3 and reads_attention(model):
        grid = model.grid_size_for(images.shape[-2:])
        patches = x[:, model.num_prefix_tokens:]                                  # (B, N, C)
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *grid)           # (B, C, H/p, W/p)
    if x.ndim != 4:
        raise ValueError(f"Grad-CAM needs a layer whose output is a (B, C, h, w) map (or ViT tokens); this layer "
                         f"gives shape {tuple(x.shape)}. Pick a convolutional layer or block with layer=.")
    return x


CAM_NEEDS = "a layer with spatial activations (CNNs, ViTs)"


def gradient_cam(name: str):
    """Registers ``combine(A, G) -> (B, h, w)`` as CAM method ``name`` with the one option ``layer``; returns
    ``combine`` itself, a function of the (B, C, h, w) activation and gradient maps."""
    def register(combine):
        @register_method(name, has_activation_maps, CAM_NEEDS)
        def method(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None = None):
            return combine(*activation_and_gradient(model, images, targets, layer))
        return combine
    return register


@gradient_cam("gradcam")
def gradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    weights = gradient.mean((2, 3), keepdim=True)                                    # (B, C, 1, 1)
    return (weights * activation).sum(1).relu()                                      # (B, h, w)


@gradient_cam("gradcam++")
def gradcam_plus_plus(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    grad2, grad3 = gradient.pow(2), gradient.pow(3)
    denominator = 2 * grad2 + activation.sum((2, 3), keepdim=True) * grad3
    alpha = grad2 / _nonzero(denominator)
    weights = (alpha * gradient.relu()).sum((2, 3), keepdim=True)                   # (B, C, 1, 1)
    return (weights * activation).sum(1).relu()                                      # (B, h, w)


@gradient_cam("hirescam")
def hirescam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return (gradient * activation).sum(1).relu()                                     # (B, h, w)


@gradient_cam("xgradcam")
def xgradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    weights = (gradient * activation).sum((2, 3), keepdim=True) / _nonzero(activation.sum((2, 3), keepdim=True))
    return (weights * activation).sum(1).relu()                                      # (B, h, w)


@gradient_cam("layercam")
def layercam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return (gradient.relu() * activation).sum(1).relu()                              # (B, h, w)


def _nonzero(denominator: torch.Tensor) -> torch.Tensor:
    """``denominator`` with zeros replaced by ones, for a ratio whose numerator is then 0 as well."""
    return torch.where(denominator != 0, denominator, torch.ones_like(denominator))


def first_component(activation: torch.Tensor) -> torch.Tensor:
    """(B, h, w): the (B, C, h, w) activation's positions projected on their first principal direction (rows
    centred per channel), signed so that the largest magnitude is positive."""
    batch, channels, height, width = activation.shape
    rows = activation.flatten(2).transpose(1, 2).double()                           # (B, h·w, C)
    rows = rows - rows.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)                          # vh: (B, k, C)
    projection = (rows @ vh[:, 0, :, None])[..., 0]                                  # (B, h·w)
    flip = projection.amin(1).abs() > projection.amax(1).abs()
    projection = torch.where(flip[:, None], -projection, projection)
    return projection.float().reshape(batch, height, width)


@register_method("eigencam", has_activation_maps, CAM_NEEDS)
def eigencam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    return first_component(activation_map(model, images, layer)).relu()             # (B, h, w), class-agnostic


@register_method("scorecam", has_activation_maps, CAM_NEEDS)
def scorecam(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None = None, batch_size: int = 32
) -> torch.Tensor:
    check_count("batch_size", batch_size)
    with torch.no_grad():
        activation = activation_map(model, images, layer)                          # (B, K, h, w)
        masks = F.interpolate(activation, size=images.shape[-2:], mode="bilinear", align_corners=True)
        low, high = masks.amin((2, 3), keepdim=True), masks.amax((2, 3), keepdim=True)
        masks = (masks - low) / (high - low + 1e-8)                                 # (B, K, H, W) in [0, 1]
        scores = torch.empty(activation.shape[:2], device=activation.device)        # (B, K)
        for b in range(images.shape[0]):
            for start in range(0, masks.shape[1], batch_size):
                masked = images[b] * masks[b, start:start + batch_size, None]      # (k, C, H, W)
                scores[b, start:start + batch_size] = model(masked)[:, targets[b]]
        weights = scores.softmax(1)[:, :, None, None]                               # (B, K, 1, 1)
        return (weights * activation).sum(1).relu()                                 # (B, h, w)
