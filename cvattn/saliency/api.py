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
from cvattn.saliency.adapters import adapt, expected_channels, known_num_classes
from cvattn.saliency.registry import METHODS, available_methods, default_methods  # noqa: F401  (re-exported)
from cvattn.saliency.runtime import TargetType, check_targets, inspection_mode, normalise, resolve_targets, unwrap

BASELINES = ("random", "center", "brightness")


def saliency(model: nn.Module, images: torch.Tensor, method: str = "gradcam", target: TargetType = None,
             **options) -> torch.Tensor:
    """Saliency maps (B, H, W) in [0, 1] of ``images`` (B, C, H, W), as the model's own normalised input.

    Args:
        model: a network from ``cvattn.models`` (or any classifier for ``'gradcam'``), an ``ImageClassifier`` or a
            ``RAMModule``; or a timm, torchvision or Hugging Face classifier (``cvattn.saliency.adapters``), left
            exactly as it was.
        method: one of ``available_methods(model)`` (the model's native maps, the CAM family, gradient
            attributions, occlusion, baselines); docs/saliency.md describes each and its options.
        target: the class to explain: None (the predicted class), an int for every image, or one per image. Given,
            and the class count known without a forward (``model.num_classes``, a Hugging Face config), the model
            runs only the forwards the method needs.
        options: the method's options (its keyword arguments, e.g. ``layer`` for the CAMs, ``blocks`` for the
            gates); an unknown one is an error listing those it accepts.
    """
    model = adapt(unwrap(model))
    fn = _resolve_method(model, method)
    _check_options(method, fn, options)
    _check_images(model, images)
    with inspection_mode(model):
        images = images.detach().clone()   # a normal tensor even when made under inference_mode
        num_classes = known_num_classes(model) if target is not None else None
        if num_classes is None:
            with torch.no_grad():
                targets = resolve_targets(target, model(images))
        else:   # one forward fewer: Grad-CAM for a given class costs one forward and backward, as Captum's
            targets = check_targets(target, len(images), num_classes, images.device)
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
    non_finite = int((~torch.isfinite(images)).sum())
    if non_finite:
        raise ValueError(f"images hold {non_finite} NaN or Inf value(s) (of {images.numel()}), which would make every "
                         f"map NaN: check how they were loaded and normalised (a std of 0 divides by zero), or "
                         f"replace them first, e.g. torch.nan_to_num(images).")
    if isinstance(model, AttentionReader):
        model.grid_size_for(images.shape[-2:])      # a ValueError naming the sizes the model takes
