"""Saliency methods by name: each says which models it applies to, so errors can list the ones that do.

A method is ``fn(model, images, targets, **options) -> (B, h, w)``: a non-negative map at any resolution, for a
bare model already in eval mode; ``cvattn.saliency.saliency`` does the rest (unwrapping, targets, upsampling,
normalising, restoring the model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

MethodFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Method:
    fn: MethodFn
    applies: Callable[[nn.Module], bool]
    needs: str  # what a model must have, for the error when it does not apply


METHODS: dict[str, Method] = {}


def register_method(name: str, applies: Callable[[nn.Module], bool], needs: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn`` as saliency method ``name``: ``fn(model, images, targets, **options) -> (B, h, w)``
    (module docstring); ``applies(model)`` says whether it works on a model, ``needs`` what a model must have,
    which the error for one it does not apply to quotes."""
    def register(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"saliency method {name!r} is already registered")
        METHODS[name] = Method(fn, applies, needs)
        return fn
    return register


def available_methods(model: nn.Module) -> list[str]:
    """Names of the saliency methods that apply to ``model`` (a bare network), in registration order."""
    return [name for name, method in METHODS.items() if method.applies(model)]


def is_vit(model: nn.Module) -> bool:
    """A transformer that returns its attention (``cvattn.models.vit.VisionTransformer`` or the same interface)."""
    return callable(getattr(model, "forward_attention", None)) and hasattr(model, "grid_size_for")


def is_ram(model: nn.Module) -> bool:
    from cvattn.models.ram import RecurrentAttention

    return isinstance(model, RecurrentAttention)


def has_activation_maps(model: nn.Module) -> bool:
    """CNNs and ViTs (tokens on the patch grid); not the RAM, whose only spatial output is where it looked."""
    return not is_ram(model)
