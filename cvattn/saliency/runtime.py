"""What every saliency method and metric shares: the network inside a LightningModule, the model's state while it
is inspected, target classes, per-map normalisation, and the first samples of a loader.

The bottom of ``cvattn.saliency``: it imports nothing else of the package, so the methods, the metrics and the API
can all import it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import lightning as L
import torch
import torch.nn as nn

TargetType = int | Sequence[int] | torch.Tensor | None


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside an ``ImageClassifier``/``RAMModule`` (its ``.model``); a bare network as it is."""
    if isinstance(model, L.LightningModule):
        inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            raise ValueError(f"{type(model).__name__} has no `.model` network to explain; pass the network itself.")
        return inner
    return model


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


def resolve_targets(target: TargetType, logits: torch.Tensor) -> torch.Tensor:
    """(B,) int64 class indices from ``target`` (None: the argmax of ``logits`` (B, num_classes))."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"Saliency needs a classifier returning (B, num_classes) logits; the model returned "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}.")
    if target is None:
        return logits.argmax(1)
    return check_targets(target, *logits.shape, device=logits.device)


def check_targets(target: TargetType, batch: int, num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) int64 class indices from a given ``target`` (an int for every image, or one per image), checked against
    the model's ``num_classes`` without running it."""
    targets = torch.as_tensor(target, device=device)
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


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a flat map becomes zeros."""
    low = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - low
    return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))


def first_samples(batches: Iterable, count: int) -> list[torch.Tensor]:
    """The first ``count`` samples of a loader's batches, column by column (images, labels[, boxes]; or the four of a
    multi-object batch, ``objects_of``), on the CPU."""
    parts, taken = [], 0
    for batch in batches:
        parts.append([tensor.cpu() for tensor in batch])
        taken += len(batch[0])
        if taken >= count:
            break
    return [torch.cat(column)[:count] for column in zip(*parts)]


def objects_of(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(images, classes (B, k), boxes (B, k, 4))`` of a batch: ``(images, labels, boxes (B, 4))`` (k = 1),
    multi-object ``(images, multi_hot, boxes (B, k, 4), classes (B, k))``, or ``(images, labels)`` (no boxes:
    ``(images, labels[:, None], None)``)."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        got = f"{len(batch)} tensor" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
        raise ValueError(f"expected batches of (images, labels[, boxes]) or multi-object (images, multi_hot, boxes, "
                         f"classes); got {got}.")
    if len(batch) == 2:
        return batch[0], batch[1][:, None], None
    if len(batch) == 3:
        return batch[0], batch[1][:, None], batch[2][:, None]
    images, _multi_hot, boxes, classes = batch[:4]
    if boxes.ndim != 3 or classes.shape != boxes.shape[:2]:
        raise ValueError(f"multi-object batches are (images, multi_hot, boxes (B, k, 4), classes (B, k)); got boxes "
                         f"{tuple(boxes.shape)} and classes {tuple(classes.shape)}.")
    return images, classes, boxes
