"""``evaluate(model, data, methods)``: the saliency metrics of several methods over a datamodule or loader.

Maps are computed for the ground-truth class (the pointing game's definition, Zhang et al. 2016); deletion and
insertion track the clean image's top-1 class (RISE's). The pointing game is averaged per class, then over
classes (Zhang et al.); the other scores over images. The ``'random'`` and ``'center'`` baselines are always
evaluated beside the requested methods (Zhang et al. report the centre baseline beside every pointing game; docs/references.md).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import lightning as L
import torch
import torch.nn as nn

from cvattn.saliency.api import BASELINES, default_methods, saliency
from cvattn.saliency.runtime import unwrap
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
    """Scores per method: ``{method: {pointing_game, energy_in_box, deletion_auc, insertion_auc, num_images}}``.

    Args:
        model: a network, ``ImageClassifier`` or ``RAMModule``.
        data: a datamodule (its test split) or any iterable of ``(images, labels, boxes)`` batches.
        methods: saliency methods (default: every non-baseline method for this model); baselines are added.
        max_batches: stop after this many batches (default: all).
        tolerance, seed: for ``pointing_game`` (and the tie-breaks); pixels_per_step: for the AUCs.
        auc: also compute deletion and insertion AUC (the costly part: about H forwards per image and method).
    """
    model = unwrap(model)
    methods = list(default_methods(model) if methods is None else methods)
    methods += [baseline for baseline in BASELINES if baseline not in methods]
    device = next(model.parameters()).device
    scores: dict[str, dict[str, list[torch.Tensor]]] = {m: defaultdict(list) for m in methods}
    all_labels = []
    for index, batch in enumerate(_batches(data)):
        if max_batches is not None and index >= max_batches:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ValueError("evaluate needs batches of (images, labels, boxes): use a datamodule with a canvas "
                             "(canvas_size=60, num_distractors=4) or a loader that yields object boxes.")
        images, labels, boxes = (tensor.to(device) for tensor in batch[:3])
        all_labels.append(labels.cpu())
        for method in methods:
            options = {"seed": seed + index} if method == "random" else {}
            maps = saliency(model, images, method, target=labels, **options)           # (B, H, W)
            scores[method]["pointing_game"].append(pointing_game(maps, boxes, tolerance, seed).float().cpu())
            scores[method]["energy_in_box"].append(energy_in_box(maps, boxes).cpu())
            if auc:
                scores[method]["deletion_auc"].append(deletion_auc(model, images, maps, pixels_per_step, seed).cpu())
                scores[method]["insertion_auc"].append(insertion_auc(model, images, maps, pixels_per_step, seed).cpu())
    if not all_labels:
        raise ValueError("evaluate got no batches: the loader is empty or max_batches is 0.")
    labels = torch.cat(all_labels)
    results = {}
    for method, per_metric in scores.items():
        values = {name: torch.cat(parts) for name, parts in per_metric.items()}
        hits = values.pop("pointing_game")
        results[method] = {
            "pointing_game": torch.stack([hits[labels == c].mean() for c in labels.unique()]).mean().item(),
            **{name: value.mean().item() for name, value in values.items()},
            "num_images": len(labels),
        }
    return results
