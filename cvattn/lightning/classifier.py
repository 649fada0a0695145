"""``ImageClassifier``: the LightningModule that trains any registered classification model with cross-entropy
(the shared parts, from the model to the optimiser's schedule, are in ``cvattn.lightning.base``)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.lightning.base import AttentionModule


class ImageClassifier(AttentionModule):
    """Trains ``create_model(model, num_classes=..., in_chans=..., **model_kwargs)`` with cross-entropy.

    Batches are ``(images, labels)`` or ``(images, labels, boxes)``. Logs ``train/loss``, ``train/acc``,
    ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` (accuracy from torchmetrics, reduced across devices).

    Args:
        model: a registered model name (``cvattn.list_models()``).
        model_kwargs: extra constructor arguments, e.g. ``{attn_layer: cbam}``.
        num_classes, in_chans: linked from the datamodule by ``train.py``.
        optimizer: ``'sgd'`` (Nesterov momentum) or ``'adamw'``.
        lr, weight_decay, momentum: optimiser settings; weight decay skips biases, norms and the parameters
            named by the model's ``no_weight_decay()`` (ViT: position embeddings, class token).
        scheduler: ``'cosine'`` (per step, after ``warmup_epochs`` of linear warm-up, whole or fractional epochs
            of the training loader, at most the whole run), ``'onecycle'`` (torch's ``OneCycleLR`` with its
            defaults: it also cycles the momentum, or AdamW's β1, between 0.85 and 0.95, in place of ``momentum``)
            or ``'none'``.
        label_smoothing: cross-entropy label smoothing.
        channels_last: train with the ``channels_last`` memory format (faster convolutions on GPUs).
        compile: compile the model's forward with ``torch.compile`` (in place: checkpoint keys do not change).
        lr_scales: learning-rate multipliers by parameter-name prefix of the model, e.g. ``{transformer: 0.1}``
            trains an ``st_convnet2``'s localisation net at a tenth of ``lr`` (every schedule keeps the ratio);
            the longest matching prefix wins, other parameters keep ``lr``.
    """

    OPTIMIZERS = ("sgd", "adamw")
    SCHEDULERS = ("cosine", "onecycle", "none")

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
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        lr_scales: dict[str, float] | None = None,
    ):
        super().__init__(optimizer, scheduler, lr)
        if weight_decay < 0 or warmup_epochs < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(f"weight_decay and warmup_epochs must be ≥ 0 and label_smoothing in [0, 1); got "
                             f"weight_decay={weight_decay}, warmup_epochs={warmup_epochs}, "
                             f"label_smoothing={label_smoothing}.")
        if warmup_epochs and scheduler != "cosine":
            raise ValueError(f"warmup_epochs={warmup_epochs} applies to scheduler 'cosine' only, got scheduler "
                             f"{scheduler!r}; set warmup_epochs: 0 or scheduler: cosine.")
        self.save_hyperparameters()
        self._create_model()
        self._check_lr_scales()

    def _check_lr_scales(self) -> None:
        scales = self.hparams.lr_scales
        if scales is None:
            return
        if not isinstance(scales, dict):
            raise ValueError(f"lr_scales must be a dict of parameter-name prefix -> lr multiplier, e.g. "
                             f"{{'transformer': 0.1}}, got {scales!r}.")
        bad = {prefix: scale for prefix, scale in scales.items()
               if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0}
        if bad:
            raise ValueError(f"lr_scales values must be numbers > 0 (multipliers of lr), got {bad}.")
        names = [name for name, _ in self.model.named_parameters()]
        unmatched = [prefix for prefix in scales if not any(self._under(name, prefix) for name in names)]
        if unmatched:
            tops = sorted({name.split(".")[0] for name in names})
            raise ValueError(f"lr_scales prefixes {unmatched} match no parameter of {self.hparams.model!r}; its "
                             f"parameters start with {tops} (a prefix is a dotted path, e.g. 'transformer' or "
                             f"'transformer.regressor').")

    @staticmethod
    def _under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    def _lr_scale(self, name: str) -> float:
        matches = [prefix for prefix in self.hparams.lr_scales or {} if self._under(name, prefix)]
        return float(self.hparams.lr_scales[max(matches, key=len)]) if matches else 1.0

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        if self.hparams.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            # In place (nn.Module.compile), so state_dict keys stay those of the plain model (no `_orig_mod.`).
            model.compile()
        return model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _common_step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step,
                 batch_size=labels.shape[0])
        self._log_accuracy(stage, logits, labels)
        return {"loss": loss}

    def _create_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        # Biases, norms and the parameters a model names in no_weight_decay() (ViT: position embeddings and
        # class token, as in timm and DeiT) are not decayed.
        skip = set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()
        # (lr scale, decayed) -> parameters; the two groups at lr keep their places in every run (resumable state)
        grouped: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                key = (self._lr_scale(name), not (param.ndim <= 1 or name in skip))
                grouped.setdefault(key, []).append(param)
        groups = [{"params": params, "lr": hp.lr * scale, "weight_decay": hp.weight_decay if decayed else 0.0}
                  for (scale, decayed), params in grouped.items()]
        if hp.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
        return torch.optim.AdamW(groups, lr=hp.lr)

    def _create_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        hp = self.hparams
        total_steps = self.trainer.estimated_stepping_batches
        if hp.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps)
        warmup_steps = 0
        if hp.warmup_epochs:
            # In epochs of the loader, not a share of total_steps: max_steps or max_epochs=-1 may end the run.
            batches = self.trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError(f"warmup_epochs={hp.warmup_epochs} needs a training loader with a length; "
                                 f"this one has none, so set warmup_epochs: 0.")
            steps_per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
            warmup_steps = min(total_steps, int(hp.warmup_epochs * steps_per_epoch))

        def cosine_with_warmup(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)
