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
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import did_you_mean
# Imported for their registrations; the order is the order methods are listed in.
from cvattn.saliency import gates, transformer, glimpses, gradcam, baselines  # noqa: F401
from cvattn.saliency._registry import METHODS, available_methods

BASELINES = ("random", "center")
TargetType = int | Sequence[int] | torch.Tensor | None


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside an ``ImageClassifier``/``RAMModule`` (its ``.model``); a bare network as it is."""
    if isinstance(model, L.LightningModule):
        inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            raise ValueError(f"{type(model).__name__} has no `.model` network to explain; pass the network itself.")
        return inner
    return model


def default_methods(model: nn.Module) -> list[str]:
    """Every method that applies to ``model`` except the baselines (which ``evaluate`` always adds)."""
    return [name for name in available_methods(unwrap(model)) if name not in BASELINES]


def first_samples(batches: Iterable, count: int) -> list[torch.Tensor]:
    """The first ``count`` samples of a loader's batches, column by column (images, labels[, boxes]), on the CPU."""
    parts, taken = [], 0
    for batch in batches:
        parts.append([tensor.cpu() for tensor in batch])
        taken += len(batch[0])
        if taken >= count:
            break
    return [torch.cat(column)[:count] for column in zip(*parts)]


@contextmanager
def inspection_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on; each submodule's train/eval mode is restored on exit, error or not."""
    modes = {module: module.training for module in model.modules()}
    try:
        with torch.inference_mode(False), torch.enable_grad():
            model.eval()
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def saliency(model: nn.Module, images: torch.Tensor, method: str = "gradcam", target: TargetType = None,
             **options) -> torch.Tensor:
    """Saliency maps (B, H, W) in [0, 1] of ``images`` (B, C, H, W), as the model's own normalised input.

    Args:
        model: a network from ``cvattn.models`` (or any classifier for ``'gradcam'``), an ``ImageClassifier`` or a
            ``RAMModule``.
        method: see ``available_methods(model)``: native ``'spatial_gate'``, ``'channel_gate'``, ``'attention'``,
            ``'rollout'``, ``'grad_rollout'``, ``'glimpses'``; ``'gradcam'``, ``'gradcam++'``; baselines
            ``'random'``, ``'center'``.
        target: the class to explain: None (the predicted class), an int for every image, or one per image.
        options: method options: ``blocks`` (gates), ``layer`` (Grad-CAM), ``scale`` (glimpses), ``seed``
            (random), ``sigma`` (center).
    """
    model = unwrap(model)
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


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a flat map becomes zeros."""
    low = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - low
    return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))


def resolve_targets(target: TargetType, logits: torch.Tensor) -> torch.Tensor:
    """(B,) int64 class indices from ``target`` (None: the argmax of ``logits`` (B, num_classes))."""
    if logits.ndim != 2:
        raise ValueError(f"Saliency needs a classifier returning (B, num_classes) logits; the model returned "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}.")
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(1)
    targets = torch.as_tensor(target, device=logits.device)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"target must be None, an int or integer class indices; got {target!r}.")
    targets = targets.long().expand(batch) if targets.ndim == 0 else targets.long()
    if targets.shape != (batch,):
        raise ValueError(f"target must be one class per image, shape ({batch},); got shape {tuple(targets.shape)}.")
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise ValueError(f"target class {bad.unique().tolist()} out of range: the model has {num_classes} classes, "
                         f"so targets must be in [0, {num_classes - 1}].")
    return targets


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
    in_chans = getattr(model, "in_chans", None)
    if in_chans is not None and images.shape[1] != in_chans:
        raise ValueError(f"{type(model).__name__} takes {in_chans}-channel images; got {images.shape[1]} channels "
                         f"(images of shape {tuple(images.shape)}).")
