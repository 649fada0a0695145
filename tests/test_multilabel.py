"""MultiLabelClassifier: BCE over independent sigmoids, exact top-k accuracy, mAP, thresholded predictions."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvattn.lightning import ExactTopKAccuracy, MultiLabelClassifier


def test_exact_top_k_accuracy_counts_images_whose_top_k_are_their_k_classes():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0],    # k=2, top-2 {0, 1}: right
                           [0.9, 0.1, 0.8, 0.0],    # k=2, top-2 {0, 2} but classes {0, 1}: wrong
                           [0.1, 0.2, 0.3, 0.9],    # k=1, top-1 {3}: right
                           [0.5, 0.6, 0.7, 0.8]])   # k=3, top-3 {1, 2, 3} but classes {0, 1, 2}: wrong
    targets = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 0]])
    metric = ExactTopKAccuracy()
    metric.update(scores, targets)
    assert metric.compute().item() == pytest.approx(0.5)
    metric.update(scores[:1], targets[:1].float())   # accumulates: 3 of 5
    assert metric.compute().item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"at least one positive class per image; 1 image\(s\)"):
        metric.update(scores[:2], torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]]))


def _two_of_four_quadrants(count: int, seed: int = 0) -> TensorDataset:
    """8×8 images with 2 of 4 bright quadrants; the classes are the bright quadrants."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.zeros(count, 4)
    for row in targets:
        row[torch.randperm(4, generator=generator)[:2]] = 1
    images = 0.1 * torch.randn(count, 1, 8, 8, generator=generator)
    for quadrant, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        images[:, :, r:r + 4, c:c + 4] += targets[:, quadrant, None, None, None]
    return TensorDataset(images, targets)


def test_learns_a_multi_label_task_and_logs_its_metrics():
    torch.manual_seed(0)
    train = DataLoader(_two_of_four_quadrants(128), batch_size=16, shuffle=True)
    val = DataLoader(_two_of_four_quadrants(64, seed=1), batch_size=32)
    module = MultiLabelClassifier("convnet2", {"width": 8}, num_classes=4, in_chans=1, optimizer="adamw", lr=1e-2,
                                  weight_decay=0.0, scheduler="none")
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train, val)
    metrics = trainer.callback_metrics
    # Chance for exact top-2 of 4 is 1/6; the task is easy, so a working loss and metric reach near 1.
    assert metrics["val/acc"] > 0.9 and metrics["val/map"] > 0.9 and metrics["val/f1"] > 0.8


def test_logged_map_and_f1_are_those_of_the_whole_epoch():
    """The epoch's mAP is not the mean of per-batch mAPs: the logged value must be computed over every prediction."""
    from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

    torch.manual_seed(0)
    data = _two_of_four_quadrants(96, seed=2)
    module = MultiLabelClassifier("convnet2", {"width": 4}, num_classes=4, in_chans=1)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    logged = trainer.validate(module, DataLoader(data, batch_size=32), verbose=False)[0]
    with torch.no_grad():
        probs = module.eval()(data.tensors[0]).sigmoid()
    targets = data.tensors[1].long()
    per_batch = torch.stack([multilabel_average_precision(probs[i:i + 32], targets[i:i + 32], 4)
                             for i in range(0, 96, 32)]).mean()
    epoch_map = multilabel_average_precision(probs, targets, 4)
    assert abs(per_batch - epoch_map) > 1e-4                     # the test can tell the two apart
    assert logged["val/map"] == pytest.approx(epoch_map.item(), abs=1e-5)
    assert logged["val/f1"] == pytest.approx(multilabel_f1_score(probs, targets, 4, average="micro").item(), abs=1e-5)


def test_lr_scales_reach_the_multi_label_optimiser():
    module = MultiLabelClassifier("st_convnet2", {"width": 4}, num_classes=3, in_chans=1, optimizer="adamw", lr=0.1,
                                  lr_scales={"transformer": 0.1})
    lr_of = {id(p): group["lr"] for group in module._create_optimizer().param_groups for p in group["params"]}
    for name, param in module.model.named_parameters():
        assert lr_of[id(param)] == pytest.approx(0.01 if name.startswith("transformer.") else 0.1), name


def test_predict_step_thresholds_the_sigmoid():
    module = MultiLabelClassifier("convnet2", {"width": 4}, num_classes=3, in_chans=1, threshold=0.3)
    module.eval()
    with torch.no_grad():
        images = torch.randn(5, 1, 8, 8)
        out = module.predict_step((images,))
    assert torch.allclose(out["probs"], module(images).sigmoid())
    assert torch.equal(out["labels"], out["probs"] > 0.3)


@pytest.mark.parametrize("targets, message", [
    (torch.tensor([0, 2]), r"multi-hot targets \(B, num_classes\) = \(2, 3\).*shape \(2,\).*ImageClassifier"),
    (torch.zeros(2, 5), r"= \(2, 3\).*shape \(2, 5\)"),
])
def test_single_label_or_wrong_width_targets_are_refused(targets, message):
    module = MultiLabelClassifier("convnet2", {"width": 4}, num_classes=3, in_chans=1)
    with pytest.raises(ValueError, match=message):
        module._common_step((torch.randn(2, 1, 8, 8), targets), "val")


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.5])
def test_threshold_must_be_a_probability(threshold):
    with pytest.raises(ValueError, match=f"threshold .* must be in \\(0, 1\\), got {threshold}"):
        MultiLabelClassifier("convnet2", num_classes=3, in_chans=1, threshold=threshold)
