"""``saliency(model, images, method=..., target=None, **options)``: one call for every model family.

Returns (B, H, W) float maps in [0, 1] (per-image min-max; a flat map is all zeros) at the input's resolution
(bilinear upsampling) on the input's device. The model runs in eval mode with gradients enabled, even inside
``torch.no_grad``/``inference_mode`` (a Lightning validation hook); afterwards every submodule's train/eval mode
is what it was, even when the method raises. Gradients are taken with ``torch.autograd.grad`` with respect to
activations and attention maps, never accumulated into ``.grad``, and no ``requires_grad`` flag is touched.
Methods add their hooks inside ``with``/``try`` blocks, so none outlives the call.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import did_you_mean
from cvattn.contracts import AttentionReader
from cvattn.saliency import methods  # noqa: F401  (registers every method)
from cvattn.saliency.adapters import adapt, expected_channels
from cvattn.saliency.registry import METHODS, available_methods
from cvattn.saliency.runtime import TargetType, inspection_mode, normalise, resolve_targets, unwrap

BASELINES = ("random", "center", "brightness")


def default_methods(model: nn.Module) -> list[str]:
    """Every method that applies to ``model`` except the baselines (which ``evaluate`` always adds)."""
    return [name for name in available_methods(unwrap(model)) if name not in BASELINES]


def saliency(model: nn.Module, images: torch.Tensor, method: str = "gradcam", target: TargetType = None,
             **options) -> torch.Tensor:
    """Saliency maps (B, H, W) in [0, 1] of ``images`` (B, C, H, W), as the model's own normalised input.

    Args:
        model: a network from ``cvattn.models`` (or any classifier for ``'gradcam'``), an ``ImageClassifier`` or a
            ``RAMModule``; or a timm, torchvision or Hugging Face classifier (``cvattn.saliency.adapters``), left
            exactly as it was.
        method: see ``available_methods(model)``: native ``'spatial_gate'``, ``'channel_gate'``, ``'attention'``,
            ``'rollout'``, ``'grad_rollout'``, ``'glimpses'``; ``'gradcam'``, ``'gradcam++'``; baselines
            ``'random'``, ``'center'``.
        target: the class to explain: None (the predicted class), an int for every image, or one per image.
        options: method options: ``blocks`` (gates), ``layer`` (Grad-CAM), ``scale`` (glimpses), ``seed``
            (random), ``sigma`` (center).
    """
    model = adapt(unwrap(model))
    fn = _resolve_method(model, method)
    _check_options(method, fn, options)
    _check_images(model, images)
    with inspection_mode(model):
        images = images.detach().clone()   # a normal tensor even when made under inference_mode
        with torch.no_grad():
            logits = model(images)
        targets = resolve_targets(target, logits)
        raw = fn(model, images, targets, **options).detach().float()                # (B, h, w)
    if raw.shape[-2:] != images.shape[-2:]:
        raw = F.interpolate(raw[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return normalise(raw).to(images.device)


def _resolve_method(model: nn.Module, method: str):
    applicable = available_methods(model)
    if method not in METHODS:
        raise ValueError(f"Unknown saliency method {method!r}.{did_you_mean(method, METHODS)} Methods for "
                         f"{type(model).__name__}: {', '.join(map(repr, applicable))}.")
    if method not in applicable:
        raise ValueError(f"Saliency method {method!r} does not apply to {type(model).__name__}: it needs "
                         f"{METHODS[method].needs}. Methods that apply to this model: "
                         f"{', '.join(map(repr, applicable))}.")
    return METHODS[method].fn


def _check_options(method: str, fn, options: dict) -> None:
    accepted = list(inspect.signature(fn).parameters)[3:]   # after (model, images, targets)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"Saliency method {method!r} has no option(s) {unknown}; it accepts "
                         f"{accepted if accepted else 'no options'}.")


def _check_images(model: nn.Module, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        described = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (B, C, H, W), normalised as the model was trained; got "
                         f"{described}{' of ' + str(images.dtype) if isinstance(images, torch.Tensor) else ''}.")
    in_chans = expected_channels(model)
    if in_chans is not None and images.shape[1] != in_chans:
        raise ValueError(f"{type(model).__name__} takes {in_chans}-channel images; got {images.shape[1]} channels "
                         f"(images of shape {tuple(images.shape)}).")
    if isinstance(model, AttentionReader):
        model.grid_size_for(images.shape[-2:])      # a ValueError naming the sizes the model takes
