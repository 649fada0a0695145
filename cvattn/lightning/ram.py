"""``RAMModule``: trains the recurrent attention model with the hybrid loss of Mnih et al. (NIPS 2014).

loss = cross-entropy(logits, y) + mean_t (b_t − R)² + λ · REINFORCE, with REINFORCE = −mean_batch Σ_t
log π(l_t | h_t) · (R − b_t), the reward R = 1 when the class after the last glimpse is right and 0 otherwise,
and the advantage R − b_t a constant (detached). Because the model detaches the locations and the state the
location and baseline networks read (``cvattn/models/ram.py``), each term trains one part: cross-entropy the
glimpse network, core and action network; the squared error the baseline; REINFORCE the location network only.

Deviations from the paper (``shared/reference.md``: SGD with momentum 0.9, batch 20, learning rate annealed
linearly to 0): Adam is the default optimiser, as in most reproductions (``optimizer: sgd`` gives the paper's);
the linear anneal is the default schedule. With Adam, λ barely matters: REINFORCE is the only term that reaches
the location network, and Adam's steps do not depend on a gradient's scale.

Evaluation looks at the policy mean by default (``mc_samples=1``); with ``mc_samples=M > 1`` it samples M
trajectories and averages their class probabilities. Monte-Carlo averaging can hide a poor policy, so the
results quote ``mc_samples=1``.
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from cvattn.checks import check_choice, check_positive
from cvattn.models import create_model
from cvattn.models.ram import RecurrentAttention

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("linear", "cosine", "none")


class RAMModule(L.LightningModule):
    """LightningModule for ``ram_*`` models; batches ``(images, labels)`` or ``(images, labels, boxes)``.

    Logs ``{train,val,test}/loss``, ``/acc``, ``/baseline_mse``, ``/reward``, ``/baseline``, ``/advantage``,
    and in training ``/ce``, ``/reinforce`` and ``/policy_std``. The evaluation loss is the cross-entropy of
    the (Monte-Carlo averaged) class probabilities.

    Args:
        model: a registered recurrent attention model (``ram_28``, ``ram_60``, ``ram_100``).
        model_kwargs: its constructor arguments, e.g. ``{num_glimpses: 6, std: 0.1, core: lstm}``. Without
            ``pad_value`` the sensor pads with the datamodule's normalised black, −mean/std, set in ``setup``
            and saved in checkpoints (a buffer).
        num_classes, in_chans: linked from the datamodule by ``train.py``.
        optimizer: ``'adam'`` or ``'sgd'`` (with ``momentum``).
        lr, momentum, weight_decay: optimiser settings.
        reinforce_weight: λ, the weight of the REINFORCE term.
        mc_samples: trajectories averaged per image at evaluation; 1 looks at the policy mean.
        train_samples: M, trajectories sampled per image in training (the paper's REINFORCE estimator averages
            over M episodes); each is one more forward and backward pass. On cluttered MNIST M = 4 learned faster
            per epoch but slower per pass than M = 1 (docs/results.md).
        scheduler: ``'linear'`` (to 0 over training, the paper's), ``'cosine'`` or ``'none'``; per step.
    """

    def __init__(
        self,
        model: str = "ram_60",
        model_kwargs: dict | None = None,
        num_classes: int = 10,
        in_chans: int = 1,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        reinforce_weight: float = 1.0,
        mc_samples: int = 1,
        train_samples: int = 1,
        scheduler: str = "linear",
    ):
        super().__init__()
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("scheduler", scheduler, SCHEDULERS)
        check_positive("lr", lr)
        if weight_decay < 0 or reinforce_weight < 0 or mc_samples < 1 or train_samples < 1:
            raise ValueError(f"weight_decay and reinforce_weight must be ≥ 0, mc_samples and train_samples ≥ 1; "
                             f"got weight_decay={weight_decay}, reinforce_weight={reinforce_weight}, "
                             f"mc_samples={mc_samples}, train_samples={train_samples}.")
        self.save_hyperparameters()
        self.model = create_model(model, num_classes=num_classes, in_chans=in_chans, **(model_kwargs or {}))
        if not isinstance(self.model, RecurrentAttention):
            raise ValueError(f"RAMModule trains recurrent attention models (ram_28, ram_60, ram_100); {model!r} is "
                             f"a {type(self.model).__name__}: train it with cvattn.lightning.ImageClassifier.")
        self.metrics = nn.ModuleDict({
            f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in ("train", "val", "test")
        })

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if "pad_value" in (self.hparams.model_kwargs or {}) or not hasattr(datamodule, "mean"):
            return
        black = [-m / s for m, s in zip(datamodule.mean, datamodule.std)]
        self.model.sensor.pad_value.copy_(torch.tensor(black).expand_as(self.model.sensor.pad_value))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor,
                   sample: bool | None = None) -> dict[str, torch.Tensor]:
        """Every loss term and logged statistic for one trajectory per image, sampled from the policy
        (``sample``; by default in training mode) or looking at its mean."""
        logits, trajectory = self.model(images, return_trajectory=True, sample=sample)
        reward = (logits.argmax(1) == labels).float()                          # (B,)
        baselines = trajectory.baselines                                         # (B, T)
        advantage = (reward[:, None] - baselines).detach()                       # (B, T)
        return {
            "logits": logits,
            "ce": F.cross_entropy(logits, labels),
            "baseline_mse": F.mse_loss(baselines, reward[:, None].expand_as(baselines)),
            "reinforce": -(trajectory.log_probs * advantage).sum(1).mean(),
            "reward": reward.mean(),
            "baseline": baselines.mean().detach(),
            "advantage": advantage.mean(),
        }

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        if self.hparams.train_samples > 1:
            images = images.repeat_interleave(self.hparams.train_samples, 0)
            labels = labels.repeat_interleave(self.hparams.train_samples, 0)
        terms = self.loss_terms(images, labels)
        loss = terms["ce"] + terms["baseline_mse"] + self.hparams.reinforce_weight * terms["reinforce"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite RAM training loss {loss.item()} (cross-entropy {terms['ce'].item()}, baseline "
                f"{terms['baseline_mse'].item()}, REINFORCE {terms['reinforce'].item()}) at global step "
                f"{self.global_step}, batch {batch_idx}; stopping. The last good checkpoint is kept.")
        accuracy = self.metrics["train_acc"]
        accuracy(terms["logits"], labels)
        size = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        for name in ("ce", "baseline_mse", "reinforce", "reward", "baseline", "advantage"):
            self.log(f"train/{name}", terms[name], batch_size=size)
        self.log("train/policy_std", self.model.std, batch_size=size)
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        images, labels = batch[0], batch[1]
        mc_samples = self.hparams.mc_samples
        runs = [self.loss_terms(images, labels, sample=mc_samples > 1) for _ in range(mc_samples)]
        probs = torch.stack([run["logits"].softmax(1) for run in runs]).mean(0)    # (B, num_classes)
        terms = {name: torch.stack([run[name] for run in runs]).mean()
                 for name in ("baseline_mse", "reward", "baseline", "advantage")}
        terms["loss"] = F.nll_loss(probs.clamp_min(1e-12).log(), labels)
        accuracy = self.metrics[f"{stage}_acc"]
        accuracy(probs, labels)
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True)
        for name in ("loss", "baseline_mse", "reward", "baseline", "advantage"):
            self.log(f"{stage}/{name}", terms[name], on_epoch=True, sync_dist=True, batch_size=labels.shape[0],
                     prog_bar=name == "loss")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.model.parameters(), lr=hp.lr, momentum=hp.momentum,
                                        weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.Adam(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        total_steps = max(1, self.trainer.estimated_stepping_batches)
        if hp.scheduler == "linear":
            def factor(step: int) -> float:
                return max(0.0, 1 - step / total_steps)
        else:
            def factor(step: int) -> float:
                return 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
