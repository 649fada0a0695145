"""Gradient attributions: how the target logit y_c changes with each input pixel.

- ``'gradient'`` (Simonyan, Vedaldi & Zisserman, ICLR-W 2014, §3.1): map = max_channels |∂y_c/∂x|.
- ``'smoothgrad'`` (Smilkov et al., arXiv:1706.03825, Eq. 4): the gradient averaged over ``samples`` copies of the
  input with Gaussian noise of std ``noise`` × (x_max − x_min) of each image (the paper's noise level σ/(x_max −
  x_min); 10-20% recommended, 50 samples), drawn from a generator seeded by ``seed``; then the same
  max_channels |·| as ``'gradient'``. The signed gradients are averaged (the paper's M̂_c), as Captum's
  ``NoiseTunnel(Saliency)`` with ``abs=False``; Captum's default (``abs=True``) averages |∂y_c/∂x| instead.
- ``'integrated_gradients'`` (Sundararajan, Taly & Yan, ICML 2017, Eq. 1): (x − x') ⊙ ∫_0^1 ∂y_c/∂x(x' + α(x − x'))
  dα with the baseline x' = ``baseline`` everywhere (0: the mean image, for inputs normalised by the dataset's mean
  and std). The integral is a quadrature over ``steps`` points, by the rule ``integration``: ``'gausslegendre'``
  (Gauss-Legendre, Captum's default, the default here), ``'riemann_trapezoid'`` or ``'riemann_right'`` (the
  paper's Eq. 3), at Captum's points. Deviation from Captum: its trapezoid weights are 1/steps (ends halved), which
  sum to 1 − 1/steps and shrink every attribution by that factor (1.6% at 64 steps); here they are 1/(steps − 1),
  which sum to 1. ``integrated_gradients_attribution`` returns the signed (B, C, H, W) attributions, which sum
  to y_c(x) − y_c(x') up to the quadrature's error (completeness); the map is |Σ_channels attribution|, the
  per-pixel attribution's magnitude.
- ``'guided_gradcam'`` (Selvaraju et al., ICCV 2017, §3.2): guided backpropagation (Springenberg et al., ICLR-W
  2015: through every ``nn.ReLU`` module only positive gradients pass back, where the ReLU's input was positive)
  times Grad-CAM upsampled bilinearly to the input; map = max_channels |·|. As Captum's ``GuidedGradCam``, only
  ``nn.ReLU`` modules are guided (a functional ``torch.relu`` is not); the method applies to models that have one.

Gradients are taken with ``torch.autograd.grad`` with respect to a copy of the input, never into ``.grad``; the
guided ReLUs are forward hooks removed before the call returns.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_choice, check_count, check_positive
from cvattn.saliency.methods.gradcam import CAM_NEEDS, activation_and_gradient, gradcam
from cvattn.saliency.registry import has_activation_maps, register_method, takes_glimpses

DIFFERENTIABLE = "a classifier differentiable in its input (not a glimpse model, whose crops are hard choices)"
INTEGRATION_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_right")


def differentiable(model: nn.Module) -> bool:
    return not takes_glimpses(model)


def input_gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """∂(target logit)/∂images, (B, C, H, W); each image's gradient is that of its own logit."""
    images = images.detach().requires_grad_(True)
    logits = model(images)
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), images)
    return gradient


def _channel_max_abs(attribution: torch.Tensor) -> torch.Tensor:
    return attribution.abs().amax(1)                                                   # (B, H, W)


@register_method("gradient", differentiable, DIFFERENTIABLE)
def gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _channel_max_abs(input_gradient(model, images, targets))


@register_method("smoothgrad", differentiable, DIFFERENTIABLE)
def smoothgrad(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, samples: int = 50,
               noise: float = 0.15, seed: int = 0) -> torch.Tensor:
    check_count("samples", samples)
    check_positive("noise (the noise std as a fraction of each image's value range)", noise)
    generator = torch.Generator(images.device).manual_seed(seed)
    span = images.amax((1, 2, 3), keepdim=True) - images.amin((1, 2, 3), keepdim=True)   # (B, 1, 1, 1)
    total = torch.zeros_like(images)
    for _ in range(samples):
        jitter = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        total += input_gradient(model, images + jitter * noise * span, targets)
    return _channel_max_abs(total / samples)


def quadrature(steps: int, integration: str) -> tuple[list[float], list[float]]:
    """Points α in [0, 1] and their weights for ∫_0^1 g(α) dα ≈ Σ weight·g(α) (Captum's, rule by rule)."""
    if integration == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)                        # on [-1, 1]
        return (0.5 * (nodes + 1)).tolist(), (0.5 * weights).tolist()
    if steps < 2:
        raise ValueError(f"steps must be at least 2 for {integration!r} integration, got {steps}.")
    if integration == "riemann_trapezoid":
        # steps points, steps - 1 intervals. Captum weighs them 1/steps, which integrates to 1 - 1/steps.
        weights = [1 / (steps - 1)] * steps
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return torch.linspace(0, 1, steps).tolist(), weights
    return torch.linspace(1 / steps, 1, steps).tolist(), [1 / steps] * steps           # riemann_right


def integrated_gradients_attribution(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                                     steps: int = 50, integration: str = "gausslegendre",
                                     baseline: float = 0.0) -> torch.Tensor:
    """The signed Integrated Gradients (B, C, H, W) of each image's target logit; they sum over pixels and channels
    to y_c(images) − y_c(baseline) up to the quadrature's error."""
    check_count("steps", steps)
    check_choice("integration", integration, INTEGRATION_RULES)
    if not isinstance(baseline, (int, float)) or isinstance(baseline, bool):
        raise ValueError(f"baseline must be a number (the input value every pixel starts from), got {baseline!r}.")
    delta = images - baseline
    integral = torch.zeros_like(images)
    for alpha, weight in zip(*quadrature(steps, integration)):
        integral += weight * input_gradient(model, baseline + alpha * delta, targets)
    return delta * integral


@register_method("integrated_gradients", differentiable, DIFFERENTIABLE)
def integrated_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int = 50,
                         integration: str = "gausslegendre", baseline: float = 0.0) -> torch.Tensor:
    return integrated_gradients_attribution(model, images, targets, steps, integration, baseline).sum(1).abs()


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through (the guided part of a guided ReLU)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def guided_backprop(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) gradients of the target logits with every ``nn.ReLU`` guided: the ReLU's own backward keeps
    the positions whose input was positive, the hook after it keeps the positive gradients."""
    handles = [module.register_forward_hook(lambda _m, _i, out: _PositiveGradient.apply(out))
               for module in model.modules() if isinstance(module, nn.ReLU)]
    try:
        return input_gradient(model, images, targets)
    finally:
        for handle in handles:
            handle.remove()


def has_relu_modules(model: nn.Module) -> bool:
    return has_activation_maps(model) and any(isinstance(module, nn.ReLU) for module in model.modules())


@register_method("guided_gradcam", has_relu_modules, f"{CAM_NEEDS} and nn.ReLU modules to guide")
def guided_gradcam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   layer: str | None = None) -> torch.Tensor:
    cam = gradcam(*activation_and_gradient(model, images, targets, layer))             # (B, h, w)
    cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
    return _channel_max_abs(guided_backprop(model, images, targets) * cam)             # (B, H, W)
