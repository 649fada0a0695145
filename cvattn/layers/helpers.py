"""Small shared pieces of the attention blocks: channel rounding and the layer-by-name lookup."""
from __future__ import annotations

from typing import Callable, Union

import torch.nn as nn

from cvattn.checks import check_choice, did_you_mean

LayerType = Union[str, Callable[..., nn.Module], None]

_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "hard_swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}

CONVENTIONS = ("paper", "timm")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (never below ``min_value``), as timm does.

    With ``round_limit=0`` the result may fall below ``value``; SE uses that, so C=64 at 1/16 gives 8 when
    ``divisor=8`` and the paper's 4 when ``divisor=1``.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def get_act_layer(layer: LayerType) -> Callable[..., nn.Module]:
    """Resolve an activation given by name (``'relu'``), by class, or ``None`` (identity)."""
    if layer is None:
        return nn.Identity
    if isinstance(layer, str):
        key = layer.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {layer!r}.{did_you_mean(key, _ACTIVATIONS, n=2)} Known: "
                             f"{', '.join(sorted(_ACTIVATIONS))}.")
        return _ACTIVATIONS[key]
    return layer


def check_convention(convention: str) -> str:
    """``convention`` if it is ``'paper'`` or ``'timm'``, else a ``ValueError`` (``cvattn.checks.check_choice``)."""
    return check_choice("convention", convention, CONVENTIONS)
