"""Albumentations training pipelines from YAML.

A pipeline is a list of ``{name: <albumentations class>, **kwargs}`` dicts::

    train_transforms:
      - {name: HorizontalFlip, p: 0.5}
      - {name: Affine, translate_percent: [-0.1, 0.1]}
      - {name: OneOf, transforms: [{name: GaussianBlur}, {name: GaussNoise}]}

Keyword values are albumentations' own: a range is a pair (``translate_percent: 0.1`` would shift every image
by exactly 10%).

The transforms see uint8 ``(H, W, C)`` numpy images. Normalisation and the conversion to a tensor are done by
cvattn with the datamodule's ``mean``/``std``, so ``Normalize``, ``ToFloat``, ``FromFloat`` and ``ToTensorV2``
are refused. The random state is set per sample by the dataset (see ``cvattn.data.dataset``), not by ``Compose``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any

import albumentations as A

from cvattn.checks import did_you_mean

_ABSTRACT = {"BaseCompose", "BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D"}
_DONE_BY_CVATTN = {"Normalize", "ToFloat", "FromFloat", "ToTensorV2"}
TRANSFORM_NAMES = sorted(
    name for name, obj in vars(A).items()
    if isinstance(obj, type) and issubclass(obj, (A.BasicTransform, A.BaseCompose))
    and name not in _ABSTRACT | _DONE_BY_CVATTN
)


def build_transforms(spec: list[dict[str, Any]] | None) -> A.Compose | None:
    """Build an ``albumentations.Compose`` from a YAML list; ``None`` or ``[]`` means no augmentation."""
    if not spec:
        return None
    return A.Compose(_build_list(spec, where="train_transforms"))


def _build_list(spec: Any, where: str) -> list[A.BasicTransform | A.BaseCompose]:
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"{where} must be a list of {{name: ..., **kwargs}} dicts, got {spec!r}.")
    return [_build_one(entry, f"{where}[{i}]") for i, entry in enumerate(spec)]


def _build_one(entry: Any, where: str) -> A.BasicTransform | A.BaseCompose:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"{where} must be a dict with a 'name' key (an albumentations transform), got {entry!r}.")
    kwargs = dict(entry)
    name = kwargs.pop("name")
    if name in _DONE_BY_CVATTN:
        raise ValueError(
            f"{where}: {name!r} is not allowed in train_transforms: cvattn converts to float and normalises with "
            "the datamodule's mean/std after the augmentations, which must keep uint8 (H, W, C) images."
        )
    if name not in TRANSFORM_NAMES:
        hint = did_you_mean(name, TRANSFORM_NAMES, quote=False)
        raise ValueError(f"{where}: unknown albumentations transform {name!r}.{hint} Accepted: {TRANSFORM_NAMES}.")
    cls = getattr(A, name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        close = {key: difflib.get_close_matches(key, accepted, n=1) for key in unknown}
        hints = "".join(f" {key!r} → did you mean {c[0]!r}?" for key, c in close.items() if c)
        raise ValueError(f"{where}: {name} has no argument(s) {unknown}.{hints} Accepted: {accepted}.")
    if "transforms" in kwargs:  # OneOf, SomeOf, Sequential, ...
        kwargs["transforms"] = _build_list(kwargs["transforms"], f"{where}.transforms")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # albumentations validates with pydantic (a ValueError)
        raise ValueError(f"{where}: bad arguments {kwargs} for {name}: {err}") from None
