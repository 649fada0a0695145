"""``AttentionModule``: what every cvattn LightningModule shares, so a model family adds only its loss.

One registered model (``self.model``, from ``cvattn.create_model``), accuracy per stage (``self.metrics``, keys
``train_acc``, ``val_acc``, ``test_acc``), the training, validation and test steps funnelled through one
``_common_step``, a stop on a non-finite training loss, and an optimiser with an optional per-step schedule, both
chosen by name. ``ImageClassifier`` (cross-entropy) and ``RAMModule`` (the hybrid REINFORCE loss) subclass it; a new
family (a spatial transformer's regulariser, a multi-label loss) is one more small subclass::

    class MyModule(AttentionModule):
        OPTIMIZERS, SCHEDULERS = ("adamw",), ("none",)

        def __init__(self, model="convnet2", model_kwargs=None, num_classes=10, in_chans=3, optimizer="adamw",
                     lr=1e-3, scheduler="none"):
            super().__init__(optimizer, scheduler, lr)       # checks the names and lr
            self.save_hyperparameters()
            self._create_model()                              # self.model, self.metrics

        def _common_step(self, batch, stage):
            images, labels = batch[0], batch[1]
            logits = self(images)
            loss = F.cross_entropy(logits, labels) + my_regulariser(self.model)
            self.log(f"{stage}/loss", loss, batch_size=labels.shape[0])
            self._log_accuracy(stage, logits, labels)
            return {"loss": loss}

        def _create_optimizer(self):
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from cvattn.checks import check_choice, check_positive
from cvattn.models import create_model

STAGES = ("train", "val", "test")


class AttentionModule(L.LightningModule):
    """Base LightningModule (see the module docstring). Subclasses set ``OPTIMIZERS`` and ``SCHEDULERS`` (the
    accepted names; ``'none'`` among the schedulers means a constant learning rate), take at least the
    hyper-parameters ``model``, ``model_kwargs``, ``num_classes``, ``in_chans``, ``optimizer``, ``lr`` and
    ``scheduler``, and implement ``_common_step`` and ``_create_optimizer`` (and ``_create_scheduler`` when they
    schedule)."""

    OPTIMIZERS: tuple[str, ...] = ()
    SCHEDULERS: tuple[str, ...] = ("none",)

    def __init__(self, optimizer: str, scheduler: str, lr: float):
        super().__init__()
        check_choice("optimizer", optimizer, self.OPTIMIZERS)
        check_choice("scheduler", scheduler, self.SCHEDULERS)
        check_positive("lr", lr)

    # --- the model -----------------------------------------------------------------------------------------------

    def _create_model(self) -> None:
        """``self.model`` from the saved hyper-parameters (through ``_prepare_model``), then ``self.metrics``."""
        hp = self.hparams
        model = create_model(hp.model, num_classes=hp.num_classes, in_chans=hp.in_chans, **(hp.model_kwargs or {}))
        self.model = self._prepare_model(model)
        self.metrics = nn.ModuleDict({f"{stage}_acc": self._create_metric(hp.num_classes) for stage in STAGES})

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        """Check or convert the freshly created model (memory format, compilation); by default as it is."""
        return model

    def _create_metric(self, num_classes: int) -> Metric:
        """The metric logged as ``<stage>/acc``: micro-averaged accuracy, reduced across devices."""
        return MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    # --- the steps -----------------------------------------------------------------------------------------------

    def _common_step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        """Compute and log one batch of ``stage`` ('train', 'val' or 'test'); returns at least ``{"loss": ...}``
        (and whatever ``_describe_loss`` reads)."""
        raise NotImplementedError

    def _log_accuracy(self, stage: str, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Update ``<stage>_acc`` with ``predictions`` (logits or probabilities) and log it per epoch."""
        accuracy = self.metrics[f"{stage}_acc"]
        accuracy(predictions, labels)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def _describe_loss(self, outputs: dict[str, torch.Tensor]) -> str:
        """The non-finite loss, as the error names it."""
        return f"training loss {outputs['loss'].item()}"

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        outputs = self._common_step(batch, "train")
        if not torch.isfinite(outputs["loss"]):
            raise FloatingPointError(f"non-finite {self._describe_loss(outputs)} at global step {self.global_step}, "
                                     f"batch {batch_idx}; stopping. The last good checkpoint is kept.")
        return outputs["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._common_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._common_step(batch, "test")

    # --- optimisation --------------------------------------------------------------------------------------------

    def _create_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser named by ``hparams.optimizer``."""
        raise NotImplementedError

    def _create_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The schedule named by ``hparams.scheduler`` (not 'none'), stepped after every optimiser step."""
        raise NotImplementedError

    def configure_optimizers(self):
        optimizer = self._create_optimizer()
        if self.hparams.scheduler == "none":
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._create_scheduler(optimizer),
                                                         "interval": "step"}}
