"""``evaluate(model, data, methods)``: the saliency metrics of several methods over a datamodule or loader.

Maps are computed for the ground-truth class (the pointing game's definition, Zhang et al. 2016); deletion and
insertion track the clean image's top-1 class (RISE's). The pointing game is averaged per class, then over
classes (Zhang et al.); the other scores over images. The ``'random'``, ``'center'`` and ``'brightness'`` baselines
are always evaluated beside the requested methods (Zhang et al. report the centre baseline beside every pointing
game; docs/references.md): a method is only as good as its margin over them.

Multi-object canvases (batches ``(images, multi_hot, boxes, classes)``, ``num_objects`` > 1): the scores are
class-conditional. For each object j the map is computed with ``target=`` its class and judged against its box, so
a map that ignores the target (brightness, centre, random) points at the right object about 1/k of the time;
deletion and insertion track that class's probability. Scores are averaged over (image, object) pairs, the
pointing game per class first, as above. Any classifier can be asked about each class present: for a softmax
classifier trained on single objects the map for class c shows where its evidence *for c* lies on a canvas holding
k objects, though it was never trained to find c among others (and its probabilities compete between them).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import lightning as L
import torch
import torch.nn as nn

from cvattn.saliency.api import BASELINES, default_methods, saliency
from cvattn.saliency.runtime import inspection_mode, unwrap
from cvattn.saliency.metrics import deletion_auc, energy_in_box, insertion_auc, pointing_game


def _batches(data: L.LightningDataModule | Iterable) -> Iterable:
    if isinstance(data, L.LightningDataModule):
        data.setup("test")
        return data.test_dataloader()
    return data


def evaluate(
    model: nn.Module,
    data: L.LightningDataModule | Iterable,
    methods: Sequence[str] | None = None,
    max_batches: int | None = None,
    tolerance: float | None = None,
    pixels_per_step: int | None = None,
    auc: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Scores per method: ``{method: {pointing_game, energy_in_box, deletion_auc, insertion_auc, num_images}}``
    (plus ``num_objects``, the (image, object) pairs scored, on multi-object data).

    Args:
        model: a network, ``ImageClassifier`` or ``RAMModule``.
        data: a datamodule (its test split) or any iterable of ``(images, labels, boxes)`` batches, or of
            multi-object ``(images, multi_hot, boxes, classes)`` batches (module docstring).
        methods: saliency methods (default: every non-baseline method for this model); baselines are added.
        max_batches: stop after this many batches (default: all).
        tolerance, seed: for ``pointing_game`` (and the tie-breaks); pixels_per_step: for the AUCs.
        auc: also compute deletion and insertion AUC (the costly part: about H forwards per image, object and
            method).
    """
    model = unwrap(model)
    methods = list(default_methods(model) if methods is None else methods)
    methods += [baseline for baseline in BASELINES if baseline not in methods]
    device = next(model.parameters()).device
    scores: dict[str, dict[str, list[torch.Tensor]]] = {m: defaultdict(list) for m in methods}
    all_classes, num_images = [], 0
    for index, batch in enumerate(_batches(data)):
        if max_batches is not None and index >= max_batches:
            break
        images, classes, boxes = _unpack(model, batch, device)        # (B, C, H, W), (B, k), (B, k, 4)
        all_classes.append(classes.flatten().cpu())
        num_images += len(images)
        num_objects = classes.shape[1]
        for method in methods:
            maps = []
            for j in range(num_objects):
                options = {"seed": seed + index * num_objects + j} if method == "random" else {}
                maps.append(saliency(model, images, method, target=classes[:, j], **options))   # (B, H, W)
                if auc:   # RISE tracks the top-1 class; with several objects, object j's class
                    tracked = classes[:, j] if num_objects > 1 else None
                    for name, fn in (("deletion_auc", deletion_auc), ("insertion_auc", insertion_auc)):
                        scores[method][name].append(fn(model, images, maps[-1], pixels_per_step, seed,
                                                       target=tracked).cpu())
            maps = torch.stack(maps, 1)                                   # (B, k, H, W)
            scores[method]["pointing_game"].append(pointing_game(maps, boxes, tolerance, seed).flatten().float().cpu())
            scores[method]["energy_in_box"].append(energy_in_box(maps, boxes).flatten().cpu())
    if not all_classes:
        raise ValueError("evaluate got no batches: the loader is empty or max_batches is 0.")
    classes = torch.cat(all_classes)
    results = {}
    for method, per_metric in scores.items():
        values = {name: torch.cat(parts) for name, parts in per_metric.items()}
        hits = values.pop("pointing_game")
        results[method] = {
            "pointing_game": torch.stack([hits[classes == c].mean() for c in classes.unique()]).mean().item(),
            **{name: value.mean().item() for name, value in values.items()},
            "num_images": num_images,
        }
        if len(classes) != num_images:
            results[method]["num_objects"] = len(classes)
    return results


def _unpack(model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, classes (B, k), boxes (B, k, 4))`` from a single-object (k = 1) or a multi-object batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 3:
        raise ValueError("evaluate needs batches of (images, labels, boxes): use a datamodule with a canvas "
                         "(canvas_size=100, num_distractors=8) or a loader that yields object boxes.")
    if len(batch) == 3:
        images, labels, boxes = (tensor.to(device) for tensor in batch)
        return images, labels[:, None], boxes[:, None]
    images, multi_hot, boxes, classes = (tensor.to(device) for tensor in batch[:4])
    if boxes.ndim != 3 or classes.shape != boxes.shape[:2]:
        raise ValueError(f"multi-object batches are (images, multi_hot, boxes (B, k, 4), classes (B, k)); got boxes "
                         f"{tuple(boxes.shape)} and classes {tuple(classes.shape)}.")
    with inspection_mode(model), torch.no_grad():
        model_classes = model(images[:1]).shape[-1]
    if multi_hot.shape[-1] > model_classes:
        raise ValueError(f"The data has {multi_hot.shape[-1]} classes but {type(model).__name__} outputs "
                         f"{model_classes}: class-conditional maps need a logit for every class on the canvases; "
                         f"evaluate a model trained with num_classes={multi_hot.shape[-1]}.")
    return images, classes, boxes
