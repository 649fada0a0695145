"""``MultiLabelClassifier``: several classes per image (multi-object canvases, VOC/COCO-style tags).

The network is any registered model, as for ``ImageClassifier`` (the same optimiser, schedule, ``channels_last``
and ``compile`` options); only the loss and the metrics differ:

- loss: binary cross-entropy with logits, one independent sigmoid per class (``F.binary_cross_entropy_with_logits``,
  as timm's ``--multi-label`` task and torchvision's multi-label references use);
- ``<stage>/acc``: **exact top-k accuracy**: with k the number of classes present in an image, the share of images
  whose k highest logits are exactly those classes. It needs no threshold, and on canvases of k items of k classes
  it is the natural "got every item" score; it is the metric checkpoints monitor (``val/acc``), as for
  single-label runs;
- ``<stage>/map``: mean average precision over classes (torchmetrics ``MultilabelAveragePrecision``, macro: the
  mean of the per-class areas under the precision-recall curve), threshold-free;
- ``<stage>/f1``: micro F1 of the thresholded predictions (sigmoid > ``threshold``), which is what
  ``predict_step`` returns beside the probabilities.

Batches are ``(images, targets, ...)`` with ``targets`` a multi-hot (B, num_classes) tensor (float, int or bool:
1 where the class is present); anything else after them (boxes, item classes) is ignored here.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from cvattn.lightning.base import STAGES
from cvattn.lightning.classifier import ImageClassifier


class ExactTopKAccuracy(Metric):
    """Share of images whose k highest scores are exactly their k positive classes (k per image, ≥ 1).

    ``update(scores (B, C), targets (B, C) multi-hot)``. An image without a positive class has no top-k to
    compare, so it is refused (every image of a multi-object canvas holds at least one item).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        positives = targets.bool()
        counts = positives.sum(1)                                               # (B,) k per image
        if (counts == 0).any():
            raise ValueError("exact top-k accuracy needs at least one positive class per image; "
                             f"{int((counts == 0).sum())} image(s) of the batch have none.")
        ranks = scores.argsort(1, descending=True).argsort(1)                  # (B, C) rank of each class
        predicted = ranks < counts[:, None]                                     # the top k of each image
        self.correct += (predicted == positives).all(1).sum()
        self.total += targets.shape[0]

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp_min(1)


class MultiLabelClassifier(ImageClassifier):
    """Trains ``create_model(model, ...)`` for several classes per image (module docstring).

    Args are ``ImageClassifier``'s, less ``label_smoothing`` (not defined for independent sigmoids here), plus:
        threshold: the sigmoid probability above which a class is predicted (``predict_step``, ``<stage>/f1``).
    """

    def __init__(
        self,
        model: str = "resnet20",
        model_kwargs: dict | None = None,
        num_classes: int = 10,
        in_chans: int = 3,
        optimizer: str = "sgd",
        lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        threshold: float = 0.5,
        channels_last: bool = False,
        compile: bool = False,
        lr_scales: dict[str, float] | None = None,
    ):
        if not 0 < threshold < 1:
            raise ValueError(f"threshold is a sigmoid probability and must be in (0, 1), got {threshold}.")
        super().__init__(model, model_kwargs, num_classes, in_chans, optimizer, lr, weight_decay, momentum,
                         scheduler, warmup_epochs, 0.0, channels_last, compile, lr_scales)

    def _create_model(self) -> None:
        super()._create_model()
        num_classes, threshold = self.hparams.num_classes, self.hparams.threshold
        for stage in STAGES:
            self.metrics[f"{stage}_map"] = MultilabelAveragePrecision(num_classes, average="macro")
            self.metrics[f"{stage}_f1"] = MultilabelF1Score(num_classes, threshold=threshold, average="micro")

    def _create_metric(self, num_classes: int) -> Metric:
        return ExactTopKAccuracy()

    def _targets(self, targets: torch.Tensor) -> torch.Tensor:
        expected = (targets.shape[0], self.hparams.num_classes) if targets.ndim else None
        if targets.shape != expected or targets.is_complex():
            raise ValueError(f"MultiLabelClassifier needs multi-hot targets (B, num_classes) = {expected}, 1 where "
                             f"a class is present; got a {targets.dtype} tensor of shape {tuple(targets.shape)}. "
                             f"Single-label data (one class index per image) trains with ImageClassifier; "
                             f"multi-object canvases give multi-hot targets (num_objects > 1).")
        return targets

    def _common_step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, targets = batch[0], self._targets(batch[1])
        logits = self(images)
        loss = F.binary_cross_entropy_with_logits(logits, targets.float())
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step,
                 batch_size=targets.shape[0])
        self._log_accuracy(stage, logits, targets)
        targets = targets.long()
        for name in ("map", "f1"):
            metric = self.metrics[f"{stage}_{name}"]
            # update, not forward: forward also computes the batch's value, and MultilabelAveragePrecision's
            # forward grows with the predictions the epoch has kept; only the epoch's value is logged.
            metric.update(logits.sigmoid(), targets)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)
        return {"loss": loss}

    def predict_step(self, batch, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """``{"probs": (B, C) sigmoid probabilities, "labels": (B, C) bool, probs > threshold}``."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self(images).sigmoid()
        return {"probs": probs, "labels": probs > self.hparams.threshold}
