"""Grad-CAM and Grad-CAM++: class-discriminative maps from a layer's activations and their gradients.

- Grad-CAM (Selvaraju et al., ICCV 2017): w_k = mean_ij ∂y_c/∂A^k_ij; map = ReLU(Σ_k w_k A^k).
- Grad-CAM++ (Chattopadhay et al., WACV 2018, Eq. 19 with the exponential score): with g = ∂y_c/∂A,
  α^k_ij = g² / (2g² + Σ_ab A^k_ab g³) (0 where the denominator is 0), w_k = Σ_ij α^k_ij ReLU(g^k_ij);
  map = ReLU(Σ_k w_k A^k).

The layer is any module, by path (``layer='stages.1'``); by default the one whose output ``forward_features``
returns (the last entry of ``feature_info``) for CNNs. For ViTs, token layers (B, T, C) are read as
(B, C, H/p, W/p) maps on the patch grid (the class token dropped), and the default is the last block's first
LayerNorm, ``blocks.{L-1}.norm1``, the tokens entering the last attention, as in pytorch-grad-cam's ViT tutorial:
with class-token pooling the logits read only the class token of the last block's output, so the gradient on
that output's patch tokens is exactly zero and Grad-CAM of the last block would be blank.
Written here rather than taken from pytorch-grad-cam: see docs/saliency.md.
"""
from __future__ import annotations

import weakref
from contextlib import ExitStack

import torch
import torch.nn as nn

from cvattn.checks import did_you_mean
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


def activation_and_gradient(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output A and ∂(target logits)/∂A, both as (B, C, h, w) maps."""
    layer = layer or default_layer(model)
    module = find_module(model, layer)
    outputs = []
    # Blocks that return (tokens, extras) tuples, like the ViT's, hand their tokens on first.
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    try:
        # A leaf that needs gradients, so A is in the graph even when every parameter is frozen.
        logits = model(images.detach().requires_grad_(True))
    finally:
        handle.remove()
    if not outputs:
        raise ValueError(f"Layer {layer!r} did not run in {type(model).__name__}'s forward; pick a layer that does.")
    activation = outputs[-1]
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activation)
    return _as_map(model, activation, images), _as_map(model, gradient, images)


def _as_map(model: nn.Module, x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3 and reads_attention(model):
        grid = model.grid_size_for(images.shape[-2:])
        patches = x[:, model.num_prefix_tokens:]                                  # (B, N, C)
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *grid)           # (B, C, H/p, W/p)
    if x.ndim != 4:
        raise ValueError(f"Grad-CAM needs a layer whose output is a (B, C, h, w) map (or ViT tokens); this layer "
                         f"gives shape {tuple(x.shape)}. Pick a convolutional layer or block with layer=.")
    return x


@register_method("gradcam", has_activation_maps, "a layer with spatial activations (CNNs, ViTs)")
def gradcam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    activation, gradient = activation_and_gradient(model, images, targets, layer)   # (B, C, h, w)
    weights = gradient.mean((2, 3), keepdim=True)                                    # (B, C, 1, 1)
    return (weights * activation).sum(1).relu()                                      # (B, h, w)


@register_method("gradcam++", has_activation_maps, "a layer with spatial activations (CNNs, ViTs)")
def gradcam_plus_plus(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None = None
) -> torch.Tensor:
    activation, gradient = activation_and_gradient(model, images, targets, layer)   # (B, C, h, w)
    grad2, grad3 = gradient.pow(2), gradient.pow(3)
    denominator = 2 * grad2 + activation.sum((2, 3), keepdim=True) * grad3
    alpha = grad2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alpha * gradient.relu()).sum((2, 3), keepdim=True)                   # (B, C, 1, 1)
    return (weights * activation).sum(1).relu()                                      # (B, h, w)
