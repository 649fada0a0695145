"""Spatial transformer (Jaderberg et al. 2015): the block, the ST-CNN and its wrapper, its saliency map, and the
rotated / RTS distorted datasets."""
from __future__ import annotations

import gzip
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import cvattn
from cvattn.contracts import AttentionBlock, FeatureBackbone, RegionSampler
from cvattn.data import DistortedFashionMNISTDataModule, DistortedMNISTDataModule
from cvattn.data.distorted import DistortedDataset
from cvattn.layers.create_attn import list_attn
from cvattn.layers.spatial_transformer import SpatialTransformer, theta_boxes
from cvattn.models.st_cnn import SpatialTransformerNet
from cvattn.saliency import available_methods, saliency
from cvattn.saliency.methods.transformer import transformer_boxes


def set_theta(st: SpatialTransformer, params: list[float]) -> None:
    """Make ``st`` predict the free parameters ``params`` for every image (regressor weight 0, bias params)."""
    with torch.no_grad():
        st.regressor.weight.zero_()
        st.regressor.bias.copy_(torch.tensor(params))


# ---- the block ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transform", ["affine", "scale_translation", "translation"])
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (3, 3, 42, 42), (2, 2, 7, 13)])
def test_identity_init_returns_the_input(transform, shape):
    torch.manual_seed(0)
    st = SpatialTransformer(shape[1], transform=transform)
    x = torch.randn(shape)
    out = st(x)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)     # float rounding in the grid only
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(shape[0], 2, 3)
    torch.testing.assert_close(st.last_theta, identity, rtol=0, atol=0)
    assert not st.last_theta.requires_grad and not st.last_outside.any()
    torch.testing.assert_close(st.sampled_boxes(shape[-2:]), torch.tensor([[0.0, 0.0, shape[3], shape[2]]] * shape[0]))


@pytest.mark.parametrize("transform, free", [("affine", 6), ("scale_translation", 3), ("translation", 2)])
def test_each_transform_predicts_theta_of_its_form(transform, free):
    torch.manual_seed(0)
    st = SpatialTransformer(1, transform=transform)
    assert st.regressor.out_features == free
    torch.nn.init.normal_(st.regressor.weight, std=0.5)
    st(torch.randn(4, 1, 16, 16))
    theta = st.last_theta                                                       # (4, 2, 3)
    a, b, tx, c, d, ty = theta.flatten(1).unbind(1)
    assert tx.std() > 0 and ty.std() > 0                                        # translations vary per image
    if transform == "affine":
        assert min(b.abs().min(), c.abs().min()) > 0 and not torch.allclose(a, d)
    elif transform == "scale_translation":
        assert (b == 0).all() and (c == 0).all() and torch.equal(a, d) and a.std() > 0
    else:
        assert (a == 1).all() and (d == 1).all() and (b == 0).all() and (c == 0).all()


def test_the_identity_control_is_a_parameter_free_resize():
    """transform='identity' (no localisation net) at half the size is 2×2 average pooling: the control that
    separates what a learned θ adds from what the transformer's resizing does."""
    x = torch.randn(3, 2, 60, 60)
    st = SpatialTransformer(2, transform="identity", out_size=30)
    assert sum(p.numel() for p in st.parameters()) == 0
    torch.testing.assert_close(st(x), F.avg_pool2d(x, 2), rtol=1e-4, atol=1e-4)     # grid rounding only
    torch.testing.assert_close(st.sampled_boxes((60, 60)), torch.tensor([[0.0, 0.0, 60.0, 60.0]] * 3))
    control = cvattn.create_model("st_convnet2", transform="identity", out_size=30, width=8)
    plain = cvattn.create_model("convnet2", width=8)
    assert sum(p.numel() for p in control.parameters()) == sum(p.numel() for p in plain.parameters())


def test_a_quadrant_zoom_samples_exactly_its_pixels_and_box():
    x = torch.randn(2, 3, 28, 28)
    st = SpatialTransformer(3, transform="scale_translation", out_size=14)
    set_theta(st, [0.5, -0.5, 0.5])                                             # (s, tx, ty): bottom-left quadrant
    out = st(x)
    torch.testing.assert_close(out, x[:, :, 14:, :14], rtol=0, atol=1e-5)
    torch.testing.assert_close(st.sampled_boxes((28, 28)), torch.tensor([[0.0, 14.0, 14.0, 28.0]] * 2))


def test_boxes_of_a_rotation_bound_the_parallelogram():
    angle = math.radians(45)
    s = 0.5
    theta = torch.tensor([[[s * math.cos(angle), -s * math.sin(angle), 0.0],
                           [s * math.sin(angle), s * math.cos(angle), 0.0]]])
    half = s * math.sqrt(2) * 20                                                # corner radius in pixels (40 / 2)
    torch.testing.assert_close(theta_boxes(theta, (40, 40)), torch.tensor([[20 - half, 20 - half, 20 + half,
                                                                             20 + half]]))
    # One image's box lies off the image: not clipped.
    shifted = theta_boxes(torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]]), (10, 20))
    torch.testing.assert_close(shifted, torch.tensor([[20.0, 0.0, 40.0, 10.0]]))


def test_a_grid_outside_the_image_is_reported_not_raised():
    st = SpatialTransformer(1, transform="translation")
    set_theta(st, [0.0, 0.0])
    x = torch.rand(3, 1, 16, 16) + 0.1
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]],
                          [[1.0, 0.0, 0.0], [0.0, 1.0, -2.5]]])
    with pytest.warns(RuntimeWarning, match=r"grid of 2 of 3 images lies entirely outside the input.*once"):
        out = st.sample(x, theta)
    assert st.last_outside.tolist() == [False, True, True]
    assert (out[1:] == 0).all() and (out[0] > 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                          # once per transformer
        st.sample(x, theta)
    assert st.last_outside.tolist() == [False, True, True]


def test_gradients_reach_the_localisation_net():
    torch.manual_seed(0)
    model = cvattn.create_model("st_convnet2", num_classes=4, in_chans=1, width=8)
    x, y = torch.randn(8, 1, 20, 20), torch.randint(0, 4, (8,))
    F.cross_entropy(model(x), y).backward()
    regressor, first_conv = model.transformer.regressor, model.transformer.localisation[0]
    assert regressor.weight.grad.abs().sum() > 0 and regressor.bias.grad.abs().sum() > 0
    # The regressor's weight starts at 0, so the localisation convs get their first gradient after one step.
    assert first_conv.weight.grad.abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", [True, False])
def test_batchnorm_keeps_the_localisation_net_from_switching_off(norm):
    """Hidden biases pushed far negative (what AdamW did on cluttered canvases): without BatchNorm every hidden
    ReLU is off and θ is the same for every image; with it, units stay on and θ still depends on the image."""
    torch.manual_seed(0)
    st = SpatialTransformer(1, transform="translation", norm=norm).train()
    hidden = [m for m in st.localisation if isinstance(m, torch.nn.Linear)][0]
    with torch.no_grad():
        hidden.bias.fill_(-100.0)
        torch.nn.init.normal_(st.regressor.weight, std=0.5)
    x = torch.rand(8, 1, 32, 32)
    alive = (st.localisation(x) > 0).any(0).sum().item()
    st(x)
    varies = st.last_theta[:, :, 2].std(0).max().item()
    if norm:
        assert alive > 0 and varies > 1e-3
    else:
        assert alive == 0 and varies == 0


def test_theta_stays_float32_under_bfloat16_autocast():
    st = SpatialTransformer(1, transform="scale_translation")
    set_theta(st, [0.3001, 0.1234, -0.4321])                                   # not representable in bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        st(torch.rand(2, 1, 12, 12))
    assert st.last_theta.dtype == torch.float32
    torch.testing.assert_close(st.last_theta[0, :, 2], torch.tensor([0.1234, -0.4321]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=0), r"SpatialTransformer needs a positive integer number of channels, got 0"),
    (dict(channels=1, transform="afine"), r"Unknown transform 'afine'. Did you mean 'affine'\? Accepted: 'affine', "
                                          r"'scale_translation', 'translation'"),
    (dict(channels=1, out_size=(8,)), r"out_size must be None \(the input's size\), an int or an \(H, W\) pair"),
    (dict(channels=1, out_size=0), r"out_size height must be a positive integer, got 0"),
    (dict(channels=1, loc_width=2.5), r"loc_width must be a positive integer, got 2.5"),
    (dict(channels=1, norm="yes"), r"norm must be True \(BatchNorm in the localisation net\) or False.*got 'yes'"),
])
def test_bad_constructor_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpatialTransformer(**kwargs)


def test_bad_input_is_named():
    st = SpatialTransformer(3)
    with pytest.raises(ValueError, match=r"channels=3.*\(B, 3, H, W\).*shape \(2, 1, 8, 8\)"):
        st(torch.randn(2, 1, 8, 8))
    with pytest.raises(RuntimeError, match="needs a forward pass first"):
        st.sampled_boxes((8, 8))


def test_it_is_a_region_sampler_not_an_attention_block():
    st = SpatialTransformer(1)
    assert isinstance(st, RegionSampler) and not isinstance(st, AttentionBlock)
    assert "st" not in list_attn() and "spatial_transformer" not in list_attn()


# ---- the models --------------------------------------------------------------------------------------------------

def test_st_convnet2_is_convnet2_behind_a_transformer():
    torch.manual_seed(0)
    model = cvattn.create_model("st_convnet2", num_classes=10, in_chans=1, width=8, transform="translation").eval()
    plain = cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=8).eval()
    plain.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items()
                           if k.startswith("backbone.")})
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-4)        # identity θ at initialisation
    assert model.transformer.transform == "translation"
    assert [f["module"] for f in model.feature_info] == ["backbone.blocks.0", "backbone.blocks.1"]
    with pytest.raises(ValueError, match=r"Model 'st_convnet2' does not take the argument 'widht'"):
        cvattn.create_model("st_convnet2", widht=8)


def test_st_conv_fc_baseline_sizes_its_cnn_for_the_transformers_output():
    torch.manual_seed(0)
    model = cvattn.create_model("st_conv_fc_baseline", num_classes=10, in_chans=1).eval()
    plain = cvattn.create_model("conv_fc_baseline", num_classes=10, in_chans=1).eval()
    plain.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items()
                           if k.startswith("backbone.")})
    x = torch.randn(2, 1, 60, 60)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-4)        # identity θ at initialisation
    zoom = cvattn.create_model("st_conv_fc_baseline", out_size=30, transform="scale_translation").eval()
    assert zoom.backbone.img_size == 30 and zoom(x).shape == (2, 10)             # 60×60 in, a 30×30 view to the CNN
    with pytest.raises(ValueError, match=r"img_size=60 and out_size=30.*give out_size only"):
        cvattn.create_model("st_conv_fc_baseline", img_size=60, out_size=30)


def test_the_wrapper_puts_a_transformer_in_front_of_a_timm_model():
    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", num_classes=3, in_chans=1)
    model = SpatialTransformerNet(backbone, in_chans=1, transform="scale_translation").eval()
    assert isinstance(model, FeatureBackbone)
    assert model.feature_info[-1]["module"] == "backbone." + backbone.feature_info[-1]["module"]
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
    assert {"transformer", "gradcam"} <= set(available_methods(model))
    with pytest.raises(ValueError, match=r"cannot tell how many channels.*pass in_chans"):
        SpatialTransformerNet(torch.nn.Linear(4, 2))


# ---- saliency ----------------------------------------------------------------------------------------------------

def test_the_transformer_map_is_the_sampled_box():
    torch.manual_seed(0)
    model = cvattn.create_model("st_convnet2", num_classes=10, in_chans=1, width=8,
                                transform="scale_translation").eval()
    assert "transformer" in available_methods(model)
    assert "transformer" not in available_methods(cvattn.create_model("convnet2", in_chans=1))
    set_theta(model.transformer, [0.25, 0.5, -0.5])                             # a 10×10 box centred at (30, 10)
    images = torch.randn(2, 1, 40, 40)
    boxes = transformer_boxes(model, images)
    torch.testing.assert_close(boxes, torch.tensor([[25.0, 5.0, 35.0, 15.0]] * 2))
    maps = saliency(model, images, method="transformer")
    inside = torch.zeros(40, 40, dtype=torch.bool)
    inside[5:15, 25:35] = True
    assert (maps[:, inside] == 1).all() and (maps[:, ~inside] == 0).all()
    set_theta(model.transformer, [0.25, 0.55, -0.5])                           # ends at 26 and 36: half pixels
    half = saliency(model, images, method="transformer")
    assert half[0, 10, 26].item() == pytest.approx(1.0) and half[0, 10, 25].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"transformer='stn' is not one of this model's spatial transformers: "
                                         r"\['transformer'\]"):
        saliency(model, images, method="transformer", transformer="stn")


# ---- distorted datasets ------------------------------------------------------------------------------------------

def dot_images(n: int = 50) -> torch.Tensor:
    """uint8 (n, 28, 28, 1): black, with a bright 2×2 dot 8 pixels right of the centre (centre 13.5 + 8)."""
    images = torch.zeros(n, 28, 28, 1, dtype=torch.uint8)
    images[:, 13:15, 21:23] = 255
    return images


def dot_centre(image: torch.Tensor) -> tuple[float, float]:
    """The brightness-weighted centre (x, y) of a (1, H, W) image, in pixel-edge coordinates."""
    weights = image[0].double()
    rows, cols = torch.meshgrid(torch.arange(image.shape[1]) + 0.5, torch.arange(image.shape[2]) + 0.5,
                                indexing="ij")
    return ((weights * cols).sum() / weights.sum()).item(), ((weights * rows).sum() / weights.sum()).item()


def test_rts_samples_are_rotated_scaled_and_placed_as_drawn():
    labels = torch.arange(50) % 10
    data = DistortedDataset(dot_images(), labels, (0.0,), (1.0,), max_angle=45, scale_range=(0.7, 1.2),
                            canvas_size=42, seed=3, train=True)
    angles, scales = [], []
    for index in range(50):
        image, label, box = data[(1, index)]
        angle, scale, cx, cy = data.params((1, index))
        angles.append(angle)
        scales.append(scale)
        assert image.shape == (1, 42, 42) and image.dtype == torch.float32 and label == labels[index]
        assert 0 <= image.min() and image.max() <= 1
        assert -45 <= angle <= 45 and 0.7 <= scale <= 1.2
        half = 14 * scale
        torch.testing.assert_close(box, torch.tensor([cx - half, cy - half, cx + half, cy + half]))
        assert box[:2].min() >= 0 and box[2:].max() <= 42                   # the scaled image lies on the canvas
        # The dot, 8 px right of the source centre, lands at centre + s·R(angle)·(8, 0) (OpenCV: counter-clockwise)
        x, y = dot_centre(image)
        rad = math.radians(angle)
        assert abs(x - (cx + 8 * scale * math.cos(rad))) < 0.3 and abs(y - (cy - 8 * scale * math.sin(rad))) < 0.3
    assert max(angles) - min(angles) > 60 and max(scales) - min(scales) > 0.3   # the ranges are used
    again = DistortedDataset(dot_images(), labels, (0.0,), (1.0,), 45, (0.7, 1.2), 42, seed=3, train=True)
    torch.testing.assert_close(again[(1, 7)][0], data[(1, 7)][0], rtol=0, atol=0)
    assert not torch.equal(data[(2, 7)][0], data[(1, 7)][0])                  # a new sample every epoch
    evaluation = DistortedDataset(dot_images(), labels, (0.0,), (1.0,), 45, (0.7, 1.2), 42, seed=3)
    assert torch.equal(evaluation[(1, 7)][0], evaluation[(2, 7)][0])          # evaluation samples fixed


def test_rotated_samples_keep_their_frame():
    data = DistortedDataset(dot_images(), torch.arange(50) % 10, (0.0,), (1.0,), 90, (1.0, 1.0), 28, seed=0)
    for index in range(20):
        image, _, box = data[index]
        angle, scale, cx, cy = data.params(index)
        assert image.shape == (1, 28, 28) and -90 <= angle <= 90 and scale == 1.0 and (cx, cy) == (14.0, 14.0)
        torch.testing.assert_close(box, torch.tensor([0.0, 0.0, 28.0, 28.0]))
        x, y = dot_centre(image)
        assert math.hypot(x - 14, y - 14) == pytest.approx(8, abs=0.3)        # rotated about the centre


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_angle=200), r"max_angle must be a number of degrees in \[0, 180\], got 200"),
    (dict(scale_range=(1.2, 0.7)), r"scale_range must be \(smallest, largest\) with 0 < smallest <= largest"),
    (dict(scale_range=(0.7,)), r"scale_range must be"),
    (dict(canvas_size=30), r"canvas_size=30 cannot hold a 28x28 image scaled by 1.2 \(34 pixels\); use "
                           r"canvas_size >= 34"),
])
def test_bad_distortion_arguments_are_named(kwargs, message):
    args = dict(max_angle=45, scale_range=(0.7, 1.2), canvas_size=42) | kwargs
    with pytest.raises(ValueError, match=message):
        DistortedDataset(dot_images(4), torch.arange(4), (0.0,), (1.0,), **args)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("distortion, size", [("rts", 42), ("rotated", 28)])
def test_the_datamodules_batch_distorted_images_with_boxes(tmp_path, distortion, size):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    for module_class in (DistortedMNISTDataModule, DistortedFashionMNISTDataModule):
        datamodule = module_class(distortion, data_dir=str(tmp_path), batch_size=8, num_workers=0, download=False)
        assert datamodule.image_size == (size, size) and datamodule.mean == (0.0,)
        datamodule.setup("fit")
        images, labels, boxes = next(iter(datamodule.train_dataloader()))
        assert images.shape == (8, 1, size, size) and labels.shape == (8,) and boxes.shape == (8, 4)
        assert 0 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match=r"Unknown distortion 'rst'. Did you mean 'rts'\? Accepted: 'rotated', 'rts'"):
        DistortedMNISTDataModule("rst", data_dir=str(tmp_path))
