"""Saliency methods by name: each says which models it applies to, so errors can list the ones that do.

Adding a method is one file in ``cvattn/saliency/methods/`` with a ``@register_method(name, applies, needs)``
function, plus its import line in ``methods/__init__.py`` (that order is the order ``available_methods`` lists).
``applies`` is one of the capability predicates below (or any ``model -> bool``).

A method is ``fn(model, images, targets, **options) -> (B, h, w)``: a non-negative map at any resolution, for a
bare model already in eval mode; ``cvattn.saliency.saliency`` does the rest (unwrapping, targets, upsampling,
normalising, restoring the model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from cvattn.contracts import AttentionReader, GlimpseModel
from cvattn.saliency.adapters import adapt, attention_kind

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
    """Names of the saliency methods that apply to ``model`` (a bare network: cvattn's, or a timm, torchvision or
    Hugging Face classifier, seen through ``cvattn.saliency.adapters.adapt``), in registration order."""
    model = adapt(model)
    return [name for name, method in METHODS.items() if method.applies(model)]


# What a model offers, read from the contracts in cvattn.contracts (attributes, not classes), so a new family
# gets the methods its capabilities allow without editing this file.

def gate_blocks(model: nn.Module, kind: str) -> dict[str, nn.Module]:
    """The model's attention blocks whose gate is of ``kind``, by path: cvattn's
    (``cvattn.contracts.AttentionBlock``) and other libraries' known ones (``adapters.FOREIGN_ATTENTION_BLOCKS``)."""
    return {path: block for path, block in model.named_modules() if attention_kind(block) == kind}


def has_spatial_gates(model: nn.Module) -> bool:
    return bool(gate_blocks(model, "spatial"))


def has_channel_gates(model: nn.Module) -> bool:
    return bool(gate_blocks(model, "channel"))


def reads_attention(model: nn.Module) -> bool:
    """A transformer that returns its attention weights (``cvattn.contracts.AttentionReader``)."""
    return isinstance(model, AttentionReader)


def takes_glimpses(model: nn.Module) -> bool:
    """A hard-attention model that returns where it looked (``cvattn.contracts.GlimpseModel``)."""
    return isinstance(model, GlimpseModel)


def has_activation_maps(model: nn.Module) -> bool:
    """A model with spatial activations to weight: a convolution somewhere, or tokens on a patch grid."""
    return reads_attention(model) or any(isinstance(m, nn.Conv2d) for m in model.modules())


def any_model(model: nn.Module) -> bool:
    return True
