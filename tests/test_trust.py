"""Saliency you can trust: multi-object canvases and class-conditional scores, the model-free brightness baseline,
the model-parameter randomisation test (Spearman and SSIM checked against scipy and scikit-image) and ROAD.

Each score is checked on a case whose answer is known by construction, and the baselines on real Fashion-MNIST
canvases, where a map that ignores the model points at the single object but at the right one of two only half
the time.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

import cvattn
from cvattn.data import FashionMNISTDataModule
from cvattn.data.multi_object import MultiObjectCanvasDataset
from cvattn.saliency import (energy_in_box, evaluate, noisy_linear_imputation, pointing_game, randomisation_test,
                             randomised_copy, road, saliency, spearman, ssim)
from cvattn.saliency.boxes import box_masks
from cvattn.saliency.methods.baselines import brightness_window
from cvattn.saliency.metrics import ROAD_WEIGHTS
from cvattn.saliency.runtime import first_samples
from cvattn.saliency.sanity import parametrised_modules

torch.set_num_threads(1)


def fashion_canvases(num_objects: int, canvas_size: int = 100, batch_size: int = 100) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(data_dir="no-such-dir", download=False, batch_size=batch_size, num_workers=0,
                                  canvas_size=canvas_size, num_distractors=8, num_objects=num_objects)


def class_valued_images(num_classes: int = 5, per_class: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """28×28 images, each of one constant value (10·(i + 1) for image i), ``per_class`` of each class."""
    count = num_classes * per_class
    values = torch.arange(1, count + 1, dtype=torch.uint8) * 10
    images = values.view(-1, 1, 1, 1).expand(-1, 28, 28, 1).contiguous()
    return images, torch.arange(count) % num_classes


def multi_object_dataset(num_objects: int = 3, canvas_size: int = 100, **kwargs) -> MultiObjectCanvasDataset:
    images, labels = class_valued_images()
    return MultiObjectCanvasDataset(images, labels, (0.0,), (1.0,), canvas_size, num_objects, 5, **kwargs)


def disjoint(boxes: torch.Tensor) -> bool:
    masks = box_masks(boxes, (200, 200))                                          # (k, H, W)
    return bool(masks.sum(0).max() <= 1)


# --- multi-object canvases ---------------------------------------------------------------------------------------

def test_multi_object_canvas_holds_k_whole_objects_of_k_classes():
    images, labels = class_valued_images()
    dataset = multi_object_dataset(num_objects=3)
    for index in range(len(dataset)):
        image, multi_hot, boxes, classes = dataset[index]
        assert image.shape == (1, 100, 100) and multi_hot.shape == (5,) and multi_hot.dtype == torch.float32
        assert boxes.shape == (3, 4) and classes.shape == (3,) and classes.dtype == torch.int64
        assert classes[0] == labels[index] and len(set(classes.tolist())) == 3
        assert torch.equal(multi_hot.nonzero()[:, 0], classes.sort().values)
        assert disjoint(boxes) and boxes.min() >= 0 and boxes.max() <= 100
        assert torch.all(boxes[:, 2:] - boxes[:, :2] == 28)
        canvas = (image[0] * 255).round()
        for (x0, y0, x1, y1), cls in zip(boxes.long().tolist(), classes.tolist()):
            value = canvas[y0:y1, x0:x1].unique()
            assert len(value) == 1 and labels[int(value) // 10 - 1] == cls   # the whole object, of its class
        canvas[box_masks(boxes, (100, 100)).any(0)] = 0
        assert canvas.abs().sum() == 0                                        # nothing else without distractors


def test_multi_object_canvas_is_a_function_of_seed_epoch_and_index():
    evaluation = multi_object_dataset(num_distractors=4, seed=3)
    first, again = evaluation[2], evaluation[(7, 2)]                          # epochs are ignored outside training
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({tuple(evaluation[i][2].flatten().tolist()) for i in range(6)}) == 6
    train = multi_object_dataset(num_distractors=4, seed=3, train=True)
    assert all(torch.equal(a, b) for a, b in zip(train[(1, 2)], train[(1, 2)]))
    assert not torch.equal(train[(1, 2)][0], train[(2, 2)][0])
    other_seed = multi_object_dataset(num_distractors=4, seed=4)
    assert not torch.equal(other_seed[2][0], first[0])


def test_a_full_canvas_falls_back_to_the_grid():
    images, labels = class_valued_images(num_classes=10, per_class=1)
    dataset = MultiObjectCanvasDataset(images, labels, (0.0,), (1.0,), 84, 9, 10)   # 3 × 3 slots of exactly 28
    for index in range(4):
        _, _, boxes, classes = dataset[index]
        assert disjoint(boxes) and boxes.max() <= 84 and len(set(classes.tolist())) == 9
        assert set(boxes[:, :2].flatten().tolist()) <= {0.0, 28.0, 56.0}


@pytest.mark.parametrize("kwargs, message", [
    ({"canvas_size": 60, "num_objects": 5}, r"at most 4 fit; use num_objects <= 4 or canvas_size >= 84"),
    ({"canvas_size": 100, "num_objects": 10}, r"at most 9 fit"),
    ({"canvas_size": 200, "num_objects": 11}, r"there are 10; use num_objects <= 10"),
    ({"num_objects": 2}, r"num_objects=2 needs a canvas"),
    ({"canvas_size": 100, "num_objects": 0}, r"num_objects must be a positive integer"),
])
def test_multi_object_options_that_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(data_dir="no-such-dir", download=False, **kwargs)


def test_a_split_with_too_few_classes_is_refused():
    images, labels = class_valued_images(num_classes=5)
    with pytest.raises(ValueError, match=r"hold only 2 classes; use num_objects <= 2"):
        MultiObjectCanvasDataset(images[labels < 2], labels[labels < 2], (0.0,), (1.0,), 100, 3, 5)


def test_datamodule_batches_single_and_multi_object():
    single = fashion_canvases(1, batch_size=4)
    single.setup("test")
    x, y, boxes = next(iter(single.test_dataloader()))                         # unchanged: a 3-tuple
    assert y.shape == (4,) and boxes.shape == (4, 4)
    multi = fashion_canvases(2, batch_size=4)
    multi.setup("test")
    x, multi_hot, boxes, classes = next(iter(multi.test_dataloader()))
    assert x.shape == (4, 1, 100, 100) and multi_hot.shape == (4, 10) and multi_hot.dtype == torch.float32
    assert boxes.shape == (4, 2, 4) and classes.shape == (4, 2) and classes.dtype == torch.int64
    assert torch.equal(multi_hot.sum(1), torch.full((4,), 2.0))
    assert torch.equal(multi_hot.gather(1, classes), torch.ones(4, 2))


# --- class-conditional metrics -----------------------------------------------------------------------------------

def test_class_conditional_pointing_and_energy_judge_each_map_against_its_own_object():
    boxes = torch.tensor([[[2, 2, 10, 10], [20, 20, 30, 30]], [[20, 0, 30, 8], [0, 20, 8, 30]]], dtype=torch.float)
    own = box_masks(boxes, (32, 32)).float()                                      # (B, k, H, W): map j on object j
    swapped = own.flip(1)                                                         # map j on the other object
    assert pointing_game(own, boxes, tolerance=0).all() and not pointing_game(swapped, boxes, tolerance=0).any()
    torch.testing.assert_close(energy_in_box(own, boxes), torch.ones(2, 2))
    torch.testing.assert_close(energy_in_box(swapped, boxes), torch.zeros(2, 2))
    # Per map, the same as the single-object scores.
    assert torch.equal(pointing_game(swapped, boxes).flatten(), pointing_game(swapped.flatten(0, 1), boxes.view(-1, 4)))
    with pytest.raises(ValueError, match=r"boxes must be \(B, k, 4\) = \(2, 2, 4\)"):
        pointing_game(own, boxes[:, 0])


def test_brightness_finds_the_single_object_but_only_half_of_two():
    model = cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=8).eval()
    single = evaluate(model, fashion_canvases(1), methods=[], max_batches=2, auc=False)
    assert list(single) == ["random", "center", "brightness"]
    assert single["brightness"]["pointing_game"] >= 0.85                       # the object is the brightest thing
    assert single["center"]["pointing_game"] <= 0.4 and single["random"]["pointing_game"] <= 0.3
    double = evaluate(model, fashion_canvases(2), methods=[], max_batches=2, auc=False)
    assert double["brightness"]["num_images"] == 200 and double["brightness"]["num_objects"] == 400
    assert 0.35 <= double["brightness"]["pointing_game"] <= 0.65                 # class-conditional: ~1/k
    assert double["center"]["pointing_game"] <= 0.4


def multi_object_loader(num_classes: int = 10):
    boxes = torch.tensor([[[0, 0, 28, 28], [40, 40, 68, 68]]] * 2, dtype=torch.float)
    classes = torch.tensor([[1, 3], [0, 2]])
    multi_hot = torch.zeros(2, num_classes).scatter_(1, classes, 1.0)
    return [(torch.rand(2, 1, 70, 70, generator=torch.Generator().manual_seed(0)), multi_hot, boxes, classes)]


def test_class_conditional_evaluate_explains_each_class_and_refuses_too_few_classes():
    model = cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=8).eval()
    scores = evaluate(model, multi_object_loader(), methods=["gradcam"], pixels_per_step=700)
    assert scores["gradcam"]["num_objects"] == 4 and 0 <= scores["gradcam"]["deletion_auc"] <= 1
    small = cvattn.create_model("convnet2", num_classes=3, in_chans=1, width=8).eval()
    with pytest.raises(ValueError, match=r"The data has 10 classes but \w+ outputs 3.*num_classes=10"):
        evaluate(small, multi_object_loader(), methods=["gradcam"], auc=False)


# --- the brightness baseline -------------------------------------------------------------------------------------

def test_brightness_is_a_box_blur_of_the_input_scaled_to_the_image():
    assert [brightness_window((s, s)) for s in (100, 60, 28, 224)] == [21, 13, 5, 47]
    image = torch.zeros(1, 3, 40, 40)
    image[0, :, 20, 10] = 1.0
    maps = saliency(nn.Sequential(nn.Flatten(), nn.Linear(3 * 40 * 40, 2)), image, "brightness", window=7)
    expected = torch.zeros(40, 40)
    expected[17:24, 7:14] = 1.0                                                   # a 7 × 7 square around the pixel
    torch.testing.assert_close(maps[0], expected)
    with pytest.raises(ValueError, match="positive odd integer, got 4"):
        saliency(nn.Sequential(nn.Flatten(), nn.Linear(3 * 40 * 40, 2)), image, "brightness", window=4)


# --- Spearman, SSIM and the randomisation test --------------------------------------------------------------------

def test_spearman_and_ssim_match_scipy_and_scikit_image():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(4, 20, 24, generator=generator, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(4, 20, 24, generator=generator, dtype=torch.float64)).clamp(0, 1)
    a[0, :10], b[0, 5:] = 0.0, 0.5                                                 # many ties
    b[3] = (a[3] * 4).round() / 4                                                 # a quantised copy
    for ours, x, y in zip(spearman(a, b), a.numpy(), b.numpy()):
        assert abs(ours.item() - spearmanr(x.ravel(), y.ravel()).statistic) <= 1e-10
    for ours, x, y in zip(ssim(a, b), a.numpy(), b.numpy()):
        reference = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=1)
        assert abs(ours.item() - reference) <= 1e-4
    torch.testing.assert_close(ssim(a, a), torch.ones(4, dtype=torch.float64))
    assert torch.isnan(spearman(torch.zeros(8, 8), torch.rand(8, 8)))             # undefined for a constant map
    with pytest.raises(ValueError, match="11x11 window"):
        ssim(torch.rand(2, 8, 8), torch.rand(2, 8, 8))


def test_randomisation_leaves_brightness_alone_and_decorrelates_gradcam():
    torch.manual_seed(0)
    model = cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.zeros(6, 1, 40, 40)                                            # a textured object on black
    images[:, :, 5:20, 5:20] = torch.rand(6, 1, 15, 15, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[5, 5, 20, 20]] * 6, dtype=torch.float)
    table = randomisation_test(model, images, "gradcam", target=3, boxes=boxes)
    layers = [path for path, _ in parametrised_modules(model)]
    assert [row["layer"] for row in table] == ["none"] + layers[::-1]             # top layer first
    assert table[0]["spearman"] == pytest.approx(1.0) and set(table[0]) == {"layer", "spearman", "ssim",
                                                                              "pointing_game"}
    assert all(row["spearman"] < 0.6 and row["ssim"] < 0.6 for row in table[1:])
    assert table == randomisation_test(model, images, "gradcam", target=3, boxes=boxes)   # seeded
    assert table != randomisation_test(model, images, "gradcam", target=3, boxes=boxes, seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())         # the model is untouched
    flat = randomisation_test(model, images, "brightness")
    assert len(flat) == len(table) and "pointing_game" not in flat[0]
    assert all(row["spearman"] == pytest.approx(1.0) and row["ssim"] == pytest.approx(1.0) for row in flat)


def test_randomised_copy_redraws_every_layer_seeded_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(4, 1, 32, 32)
    randomised = randomised_copy(model, seed=3).eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = [k for k, v in randomised.state_dict().items() if not torch.equal(v, before[k])]
    weights = [k for k in before if k.endswith("weight") and "bn" not in k]
    assert set(weights) <= set(changed)                                             # every conv/linear redrawn
    for a, b in zip(randomised.parameters(), randomised_copy(model, seed=3).parameters()):
        torch.testing.assert_close(a, b)                                            # seeded
    assert not torch.equal(saliency(randomised, images, "gradcam", target=1), saliency(model, images, "gradcam",
                                                                                     target=1))
    with pytest.raises(ValueError, match="no parameters to randomise"):
        randomised_copy(nn.ReLU())


# --- ROAD --------------------------------------------------------------------------------------------------------

def road_system(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's equations written out as a scipy sparse system: for each removed pixel, d·x = Σ w·x_neighbour."""
    height, width = removed.shape
    unknown = {pixel: i for i, pixel in enumerate(zip(*np.nonzero(removed)))}
    matrix, rhs = lil_matrix((len(unknown), len(unknown))), np.zeros(len(unknown))
    for (r, c), i in unknown.items():
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                weight, (rr, cc) = ROAD_WEIGHTS[dr + 1][dc + 1], (r + dr, c + dc)
                if weight == 0 or not (0 <= rr < height and 0 <= cc < width):
                    continue
                matrix[i, i] += weight
                if (rr, cc) in unknown:
                    matrix[i, unknown[(rr, cc)]] -= weight
                else:
                    rhs[i] += weight * image[rr, cc]
    filled = image.copy()
    filled[removed] = spsolve(matrix.tocsc(), rhs)
    return filled


def test_noisy_linear_imputation_solves_roads_system():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 2, 12, 14, generator=generator, dtype=torch.float64)
    removed = torch.rand(1, 12, 14, generator=generator) < 0.7
    ours = noisy_linear_imputation(image, removed, noise=0.0)
    for channel in range(2):
        expected = road_system(image[0, channel].numpy(), removed[0].numpy())
        np.testing.assert_allclose(ours[0, channel].numpy(), expected, atol=1e-6)
    constant = torch.full((2, 3, 16, 16), 0.4)
    holes = torch.rand(2, 16, 16, generator=generator) < 0.9
    torch.testing.assert_close(noisy_linear_imputation(constant, holes, noise=0.0), constant)
    noisy = noisy_linear_imputation(constant, holes, noise=0.01)
    assert torch.equal(noisy[~holes[:, None].expand_as(noisy)], constant[~holes[:, None].expand_as(noisy)])
    assert 0.008 < (noisy - constant)[holes[:, None].expand_as(noisy)].std() < 0.012
    with pytest.raises(ValueError, match="at least one kept pixel"):
        noisy_linear_imputation(constant, torch.ones(2, 16, 16, dtype=torch.bool))


class RegionReader(nn.Module):
    """Class 0's logit reads only the mean of the top-left 8 × 8 region: bright there → class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        region = x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([20 * region - 10, torch.zeros_like(region)], 1)


def test_road_removing_the_region_the_model_reads_first_drops_faster():
    images = torch.zeros(3, 1, 24, 24)
    images[:, :, :8, :8] = 1.0
    maps = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0)) * 0.1
    maps[:, :8, :8] += 1.0                                                        # the region is the most salient
    morf = road(RegionReader(), images, maps, "morf", percentages=(10, 30, 50))
    lerf = road(RegionReader(), images, maps, "lerf", percentages=(10, 30, 50))
    assert morf.percentages.tolist() == [10.0, 30.0, 50.0] and morf.probability.shape == (3, 3)
    assert (morf.probability[:, 1:] < 0.05).all() and not morf.correct[:, 1:].any()   # region gone: class 0 gone
    assert (lerf.probability > 0.95).all() and lerf.correct.all()                     # region kept
    assert (morf.probability < lerf.probability).all()
    with pytest.raises(ValueError, match=r"percentages must be pixel shares in \[0, 100\)"):
        road(RegionReader(), images, maps, percentages=(50, 100))
    with pytest.raises(ValueError, match="Unknown ROAD order 'most'"):
        road(RegionReader(), images, maps, "most")


def test_road_and_randomisation_run_on_real_canvases():
    datamodule = fashion_canvases(1, canvas_size=60, batch_size=4)
    datamodule.setup("test")
    images, labels, boxes = first_samples(datamodule.test_dataloader(), 4)
    model = cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=8).eval()
    maps = saliency(model, images, "gradcam", target=labels)
    curve = road(model, images, maps, target=labels, percentages=(20, 80))
    assert curve.probability.shape == (4, 2) and ((0 <= curve.probability) & (curve.probability <= 1)).all()
    table = randomisation_test(model, images, "brightness", target=labels, boxes=boxes)
    assert {row["pointing_game"] for row in table} == {table[0]["pointing_game"]}    # the same map every time
