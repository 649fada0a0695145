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

``output_size`` runs a pipeline once on a blank image of the dataset's size, each transform forced on, so that a
crop larger than the image, a transform that changes the channel count, or images that come out in several sizes
are refused when the datamodule is built, not in the middle of a run.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import random
from typing import Any

import albumentations as A
import numpy as np

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


def output_size(pipeline: A.Compose, size: tuple[int, int], channels: int) -> tuple[int, int]:
    """(H, W) of what ``pipeline`` makes of uint8 ``(*size, channels)`` images; ``ValueError`` naming the transform
    that cannot take the images it receives (a crop larger than the image), that changes the channel count, or
    when images would come out in several sizes (a batch needs one).

    Each transform is run alone, forced on (p=1), on a random image of every size it can receive, three times
    (random sizes show up); a transform with p < 1 may also leave its input as it is. The children of ``OneOf``,
    ``SomeOf`` and the like are each tried on the composition's input (not chained); ``Sequential`` chains them.
    """
    sizes = _sizes_after_list(pipeline.transforms, {tuple(size)}, channels, "train_transforms", tuple(size))
    if len(sizes) > 1:
        raise ValueError(
            f"train_transforms turn the {size[0]}x{size[1]} images into images of several sizes "
            f"({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}), but a batch needs one size. A size-changing "
            "transform with p < 1, a random scale, or OneOf branches ending at different sizes do this: set p: 1 on "
            "it, give every branch the same output size, or end the pipeline with a Resize."
        )
    return sizes.pop()


def _sizes_after_list(transforms, sizes: set, channels: int, where: str, origin: tuple[int, int]) -> set:
    for i, transform in enumerate(transforms):
        sizes = _sizes_after(transform, sizes, channels, f"{where}[{i}]", origin)
    return sizes


def _sizes_after(transform, sizes: set, channels: int, where: str, origin: tuple[int, int]) -> set:
    if isinstance(transform, A.Sequential):
        out = _sizes_after_list(transform.transforms, sizes, channels, f"{where}.transforms", origin)
    elif isinstance(transform, A.BaseCompose):
        out = set().union(*(_sizes_after(child, sizes, channels, f"{where}.transforms[{j}]", origin)
                            for j, child in enumerate(transform.transforms)))
    else:
        out = {_probe(transform, size, channels, where, origin, seed) for size in sorted(sizes) for seed in range(3)}
    return out | sizes if transform.p < 1 else out


def _probe(transform, size: tuple[int, int], channels: int, where: str, origin: tuple[int, int],
           seed: int) -> tuple[int, int]:
    """The (H, W) ``transform`` (forced on) makes of one random ``(*size, channels)`` uint8 image."""
    forced = copy.deepcopy(transform)
    forced.p = 1.0
    pipeline = A.Compose([forced])
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    image = np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)
    name, (h, w) = type(transform).__name__, size
    received = f"the {h}x{w} images it receives" + (
        f" (the dataset's {origin[0]}x{origin[1]} images, resized or cropped by the transforms before it)"
        if size != origin else "")
    try:
        out = pipeline(image=image)["image"]
    except Exception as err:  # albumentations raises many types (CropSizeError, ValueError, cv2.error, ...)
        if hasattr(transform, "height") and hasattr(transform, "width"):
            crop = f"{transform.height}x{transform.width}"
        elif isinstance(getattr(transform, "size", None), (tuple, list)):
            crop = "x".join(map(str, transform.size))
        else:
            raise ValueError(f"{where}: {name} fails on {received}, with {channels} channel(s): "
                             f"{type(err).__name__}: {err}.") from None
        raise ValueError(
            f"{where}: {name} of size {crop} does not fit {received}: {err}. Use a size of at most {h}x{w}, or pad "
            "(PadIfNeeded) or resize (Resize) before it."
        ) from None
    if out.ndim != 3 or out.shape[2] != channels or out.dtype != np.uint8:
        raise ValueError(
            f"{where}: {name} turns {received}, uint8 with {channels} channel(s), into an array of shape "
            f"{out.shape} and dtype {out.dtype}; the model and the normalisation expect {channels} channel(s) of "
            "uint8. Remove it, or use a transform that keeps the channels."
        )
    return tuple(out.shape[:2])
