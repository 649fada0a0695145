"""ImageClassifier: argument checks, optimiser parameter groups and the learning-rate schedule."""
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvattn.lightning import ImageClassifier


def test_weight_decay_skips_norms_biases_and_the_models_no_weight_decay():
    module = ImageClassifier("vit_tiny_patch4_28", num_classes=10, in_chans=1, optimizer="adamw", lr=1e-3,
                             weight_decay=0.05, scheduler="none")
    decayed, not_decayed = module.configure_optimizers().param_groups
    assert decayed["weight_decay"] == 0.05 and not_decayed["weight_decay"] == 0.0
    ids = {id(p) for p in not_decayed["params"]}
    vit = module.model
    assert id(vit.pos_embed) in ids and id(vit.cls_token) in ids and id(vit.norm.weight) in ids
    assert {id(p) for p in decayed["params"]} == {id(p) for p in vit.parameters() if p.ndim > 1} - ids
    assert id(vit.patch_embed.proj.weight) not in ids


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adam"), r"Unknown optimizer 'adam'\. Did you mean 'adamw'\? Accepted: 'sgd', 'adamw'"),
    (dict(scheduler="step"), r"Unknown scheduler 'step'"),
    (dict(lr=0.0), r"lr must be > 0, got 0.0"),
    (dict(label_smoothing=1.0), r"label_smoothing=1.0"),
    (dict(scheduler="onecycle", warmup_epochs=2), r"warmup_epochs=2 applies to scheduler 'cosine' only"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier("convnet2", num_classes=10, in_chans=1, **kwargs)


class RecordLearningRate(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_lasts_warmup_epochs_of_the_loader_when_max_steps_ends_the_run():
    """4 batches an epoch, warm-up 1 epoch, the run cut by max_steps=7 of max_epochs=5: 4 warm-up steps, then the
    cosine over the 3 left (a share of max_steps, total_steps / max_epochs, would warm up for 1 step)."""
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16,))), batch_size=4)
    module = ImageClassifier("convnet2", {"width": 4}, num_classes=2, in_chans=1, lr=0.1, warmup_epochs=1)
    record = RecordLearningRate()
    trainer = L.Trainer(max_epochs=5, max_steps=7, logger=False, enable_checkpointing=False, callbacks=[record],
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, data)
    expected = [0.1 * (step + 1) / 4 for step in range(4)] + [0.05 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert record.lrs == pytest.approx(expected)


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_lr_scales_train_a_submodule_at_a_fraction_of_lr_under_every_schedule(scheduler):
    """st_convnet2's localisation net (``transformer``) at 0.1 × lr, its ``transformer.regressor`` (θ's layer) at
    0.01 × (the longest prefix wins), the classifier at lr, weight decay still skipping biases; each schedule keeps
    the ratios."""
    torch.manual_seed(0)
    module = ImageClassifier("st_convnet2", {"width": 4}, num_classes=2, in_chans=1, optimizer="adamw", lr=0.1,
                             scheduler=scheduler, lr_scales={"transformer": 0.1, "transformer.regressor": 0.01})
    lr_of = {}
    for group in module._create_optimizer().param_groups:
        for param in group["params"]:
            lr_of[id(param)] = (group["lr"], group["weight_decay"])
    for name, param in module.model.named_parameters():
        scale = (0.01 if name.startswith("transformer.regressor.") else 0.1 if name.startswith("transformer.")
                 else 1.0)
        assert lr_of[id(param)] == (pytest.approx(0.1 * scale), 0.0 if param.ndim <= 1 else 5e-4), name

    class RecordGroups(L.Callback):
        lrs = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    data = DataLoader(TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 2, (16,))), batch_size=4)
    record = RecordGroups()
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, callbacks=[record],
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, data)
    scales = [lr / record.lrs[0][0] for lr in record.lrs[0]]
    assert sorted({round(scale, 6) for scale in scales}) == [0.01, 0.1, 1.0]
    assert len({tuple(lrs) for lrs in record.lrs}) == 4                 # the schedule moved every step ...
    for lrs in record.lrs:                                              # ... and kept the ratios
        assert [lr / lrs[0] for lr in lrs] == pytest.approx(scales)


@pytest.mark.parametrize("lr_scales, message", [
    ({"transformr": 0.1}, r"lr_scales prefixes \['transformr'\] match no parameter of 'st_convnet2'; its "
                          r"parameters start with \[.*'transformer'"),
    ({"transformer": 0}, r"lr_scales values must be numbers > 0 \(multipliers of lr\), got \{'transformer': 0\}"),
    ({"transformer": "0.1"}, r"must be numbers > 0"),
    ([("transformer", 0.1)], r"lr_scales must be a dict of parameter-name prefix -> lr multiplier"),
])
def test_bad_lr_scales_name_the_value(lr_scales, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier("st_convnet2", {"width": 4}, num_classes=2, in_chans=1, lr_scales=lr_scales)
