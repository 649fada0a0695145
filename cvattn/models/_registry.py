"""Model registry: ``create_model(name, **kwargs)`` and ``list_models(pattern)``, in timm's spirit.

A model constructor is registered with ``@register_model``; its function name becomes the model name.
"""
from __future__ import annotations

import fnmatch
import inspect
import re
from typing import Callable

import torch.nn as nn

from cvattn.checks import did_you_mean

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; a second registration of the same name is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching the shell-style ``pattern`` (``'resnet*'``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; keyword arguments go to its constructor.

    >>> model = create_model("resnet20", num_classes=10, in_chans=1, attn_layer="cbam")
    """
    if name not in _MODELS:
        raise ValueError(
            f"Unknown model {name!r}.{did_you_mean(name, _MODELS)} Registered models: {', '.join(list_models())}."
        )
    try:
        return _MODELS[name](**kwargs)
    except TypeError as err:
        unexpected = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(err))
        if unexpected is None:
            raise
        raise ValueError(_explain_unexpected_argument(name, *unexpected.groups())) from None


def _explain_unexpected_argument(name: str, class_name: str, argument: str) -> str:
    model_class = getattr(inspect.getmodule(_MODELS[name]), class_name, None)
    accepted = [] if model_class is None else [
        p for p in inspect.signature(model_class).parameters if p not in ("args", "kwargs")]
    hint = did_you_mean(argument, accepted, n=2)
    listed = f" {class_name} takes: {', '.join(accepted)}." if accepted else ""
    return f"Model {name!r} does not take the argument {argument!r}.{hint}{listed}"
