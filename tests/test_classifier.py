"""ImageClassifier: argument checks and optimiser parameter groups."""
import pytest

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
    (dict(optimizer="adam"), r"Unknown optimizer 'adam': accepted 'sgd', 'adamw'"),
    (dict(scheduler="step"), r"Unknown scheduler 'step'"),
    (dict(lr=0.0), r"lr must be > 0, got 0.0"),
    (dict(label_smoothing=1.0), r"label_smoothing=1.0"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier("convnet2", num_classes=10, in_chans=1, **kwargs)
