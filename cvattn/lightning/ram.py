"""``RAMModule``: trains the recurrent attention model with the hybrid loss of Mnih et al. (NIPS 2014); the parts
every cvattn LightningModule shares are in ``cvattn.lightning.base``.

loss = cross-entropy(logits, y) + mean_t (b_t − R)² + λ · REINFORCE, with REINFORCE = −mean_batch Σ_t
log π(l_t | h_t) · (R − b_t), the reward R = 1 when the class after the last glimpse is right and 0 otherwise,
and the advantage R − b_t a constant (detached). Because the model detaches the locations and the state the
location and baseline networks read (``cvattn/models/ram.py``), each term trains one part: cross-entropy the
glimpse network, core and action network; the squared error the baseline; REINFORCE the location network only.

Deviations from the paper (Mnih et al., "Recurrent Models of Visual Attention", NIPS 2014, in
``docs/references.md``, "Recurrent attention model"; it trains with SGD, momentum 0.9, batch 20, the learning
rate annealed linearly to 0): Adam is the default optimiser, as in most reproductions (``optimizer: sgd`` gives the
paper's); the linear anneal is the default schedule. With Adam, λ barely matters: REINFORCE is the only term that
reaches the location network, and Adam's steps do not depend on a gradient's scale.

Evaluation looks at the policy mean by default (``mc_samples=1``); with ``mc_samples=M > 1`` it samples M
trajectories and averages their class probabilities. Monte-Carlo averaging can hide a poor policy, so the
results quote ``mc_samples=1``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.lightning.base import AttentionModule
from cvattn.models.ram import RecurrentAttention


class RAMModule(AttentionModule):
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

    OPTIMIZERS = ("adam", "sgd")
    SCHEDULERS = ("linear", "cosine", "none")

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
        super().__init__(optimizer, scheduler, lr)
        if weight_decay < 0 or reinforce_weight < 0 or mc_samples < 1 or train_samples < 1:
            raise ValueError(f"weight_decay and reinforce_weight must be ≥ 0, mc_samples and train_samples ≥ 1; "
                             f"got weight_decay={weight_decay}, reinforce_weight={reinforce_weight}, "
                             f"mc_samples={mc_samples}, train_samples={train_samples}.")
        self.save_hyperparameters()
        self._create_model()

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, RecurrentAttention):
            raise ValueError(f"RAMModule trains recurrent attention models (ram_28, ram_60, ram_100); "
                             f"{self.hparams.model!r} is a {type(model).__name__}: train it with "
                             f"cvattn.lightning.ImageClassifier.")
        return model

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if "pad_value" in (self.hparams.model_kwargs or {}) or not hasattr(datamodule, "mean"):
            return
        black = [-m / s for m, s in zip(datamodule.mean, datamodule.std)]
        self.model.sensor.pad_value.copy_(torch.tensor(black).expand_as(self.model.sensor.pad_value))

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

    def _common_step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, labels = batch[0], batch[1]
        if stage == "train":
            return self._train(images, labels)
        return self._evaluate(images, labels, stage)

    def _train(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.hparams.train_samples > 1:
            images = images.repeat_interleave(self.hparams.train_samples, 0)
            labels = labels.repeat_interleave(self.hparams.train_samples, 0)
        terms = self.loss_terms(images, labels)
        loss = terms["ce"] + terms["baseline_mse"] + self.hparams.reinforce_weight * terms["reinforce"]
        size = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self._log_accuracy("train", terms["logits"], labels)
        for name in ("ce", "baseline_mse", "reinforce", "reward", "baseline", "advantage"):
            self.log(f"train/{name}", terms[name], batch_size=size)
        self.log("train/policy_std", self.model.std, batch_size=size)
        return {"loss": loss, **terms}

    def _describe_loss(self, outputs: dict[str, torch.Tensor]) -> str:
        return (f"RAM training loss {outputs['loss'].item()} (cross-entropy {outputs['ce'].item()}, baseline "
                f"{outputs['baseline_mse'].item()}, REINFORCE {outputs['reinforce'].item()})")

    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        mc_samples = self.hparams.mc_samples
        runs = [self.loss_terms(images, labels, sample=mc_samples > 1) for _ in range(mc_samples)]
        probs = torch.stack([run["logits"].softmax(1) for run in runs]).mean(0)    # (B, num_classes)
        terms = {name: torch.stack([run[name] for run in runs]).mean()
                 for name in ("baseline_mse", "reward", "baseline", "advantage")}
        terms["loss"] = F.nll_loss(probs.clamp_min(1e-12).log(), labels)
        self._log_accuracy(stage, probs, labels)
        for name in ("loss", "baseline_mse", "reward", "baseline", "advantage"):
            self.log(f"{stage}/{name}", terms[name], on_epoch=True, sync_dist=True, batch_size=labels.shape[0],
                     prog_bar=name == "loss")
        return terms

    def _create_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=hp.lr, momentum=hp.momentum,
                                   weight_decay=hp.weight_decay)
        return torch.optim.Adam(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)

    def _create_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        total_steps = max(1, self.trainer.estimated_stepping_batches)
        if self.hparams.scheduler == "linear":
            def factor(step: int) -> float:
                return max(0.0, 1 - step / total_steps)
        else:
            def factor(step: int) -> float:
                return 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
