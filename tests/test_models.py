"""Registry and CNN backbones: names, attention slots, backbone reuse, input checks."""
import pytest
import torch

import cvattn
from cvattn.contracts import FeatureBackbone
from cvattn.layers import CbamModule, EcaModule, SEModule, SpatialAttn, capture_attention
from cvattn.models.resnet import BasicBlock


def test_registry_lists_and_filters():
    names = cvattn.list_models()
    assert names == sorted(names)
    assert {"resnet20", "resnet56", "resnet18", "se_resnet20", "cbam_resnet56", "convnet2"} <= set(names)
    assert cvattn.list_models("cbam_*") == [n for n in names if n.startswith("cbam_")]
    with pytest.raises(ValueError, match=r"Unknown model 'resnet21'.*Did you mean 'resnet20'.*Registered models:"):
        cvattn.create_model("resnet21")


@pytest.mark.parametrize("name, blocks", [("resnet20", 9), ("resnet56", 27), ("resnet18", 8)])
def test_resnet_depths(name, blocks):
    model = cvattn.create_model(name, num_classes=7, in_chans=1)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == blocks
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("attn, block_type", [("se", SEModule), ("eca", EcaModule), ("cbam", CbamModule),
                                              ("spatial", SpatialAttn)])
def test_attention_slot_after_last_bn(attn, block_type):
    model = cvattn.create_model(f"{attn}_resnet20", num_classes=10, in_chans=3)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(isinstance(b.attn, block_type) for b in blocks)
    assert list(dict(blocks[0].named_children())) == ["conv1", "bn1", "act1", "conv2", "bn2", "attn", "shortcut",
                                                      "act2"]
    same = cvattn.create_model("resnet20", attn_layer=attn, num_classes=10, in_chans=3)
    assert same.state_dict().keys() == model.state_dict().keys()


def test_attention_changes_the_block_output():
    torch.manual_seed(0)
    block = BasicBlock(8, 8, attn_layer="cbam").eval()
    torch.nn.init.ones_(block.bn2.weight)
    x = torch.randn(2, 8, 6, 6)
    with capture_attention(block) as maps:
        out = block(x)
    branch = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))
    expected = torch.relu(branch * maps["attn.channel"] * maps["attn.spatial"] + x)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", ["cbam_resnet20", "resnet18", "convnet2"])
def test_backbone_reuse(name):
    model = cvattn.create_model(name, num_classes=10, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(features), model(x))
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    info = model.feature_info
    assert info[-1]["num_chs"] == features.shape[1] == model.num_features
    assert 32 // info[-1]["reduction"] == features.shape[-1]


def test_features_only_matches_forward_features():
    model = cvattn.create_model("se_resnet20", num_classes=10, in_chans=3).eval()
    backbone = cvattn.create_model("se_resnet20", num_classes=10, in_chans=3, features_only=True).eval()
    backbone.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    maps = backbone(x)
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in backbone.feature_info] == [16, 32, 64]
    assert [32 // m.shape[-1] for m in maps] == [f["reduction"] for f in backbone.feature_info] == [1, 2, 4]
    torch.testing.assert_close(maps[-1], model.forward_features(x))
    picked = cvattn.create_model("resnet18", in_chans=3, features_only=True, out_indices=(1, 3))
    assert [f["num_chs"] for f in picked.feature_info] == [128, 512]
    assert [m.shape[1] for m in picked(x)] == [128, 512]


def test_wrong_input_channels_names_both():
    model = cvattn.create_model("resnet20", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match=r"in_chans=1.*shape \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"Unknown attention 'sse'"):
        cvattn.create_model("resnet20", attn_layer="sse")


def test_models_train_on_a_tiny_batch():
    """A few SGD steps on one batch drive the loss down: the blocks are wired into the graph."""
    torch.manual_seed(0)
    model = cvattn.create_model("cbam_resnet20", num_classes=4, in_chans=1)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.stages[0][0].attn.spatial.conv.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, typo, suggestion", [("convnet2", "widht", "width"), ("resnet20", "attn_layers",
                                                   "attn_layer"), ("vit_tiny_patch4_28", "num_head", "num_heads")])
def test_a_misspelt_model_argument_suggests_the_right_one(name, typo, suggestion):
    with pytest.raises(ValueError, match=rf"Model '{name}' does not take the argument '{typo}'. Did you mean "
                                         rf"'{suggestion}'"):
        cvattn.create_model(name, **{typo: 1})


def test_conv_fc_baseline_is_mnih_2014s():
    """One conv of 8 10×10 filters with stride 5 (no padding: 60 → 11), 256 hidden units, a classifier."""
    model = cvattn.create_model("conv_fc_baseline", num_classes=10, in_chans=1).eval()
    assert (model.conv.weight.shape, model.conv.stride, model.conv.padding) == ((8, 1, 10, 10), (5, 5), (0, 0))
    assert (model.fc.in_features, model.fc.out_features) == (8 * 11 * 11, 256)
    assert sum(p.numel() for p in model.parameters()) == 251_442
    x = torch.randn(2, 1, 60, 60)
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 256)
    with pytest.raises(ValueError, match=r"\(B, 1, 60, 60\).*\(2, 1, 28, 28\)"):
        model(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="img_size=8 is smaller than kernel_size=10"):
        cvattn.create_model("conv_fc_baseline", img_size=8)


# ---- every registered model: builds, trains, and honours (or explicitly refuses) the backbone contract ----------
NOT_BACKBONES = {name for name in cvattn.list_models() if name.startswith("ram_")}   # hard attention: no maps


def natural_input(name: str, model: torch.nn.Module) -> torch.Tensor:
    """A small batch at the size the model is made for: the name's suffix (_28, _60, _224...), else 28 for convnet2,
    60 for the RAM paper's conv baseline (alone or behind a transformer) and 32 for the CIFAR-style ResNets."""
    suffix = name.rsplit("_", 1)[-1]
    sizes = {"convnet2": 28, "conv_fc_baseline": 60, "st_conv_fc_baseline": 60}
    size = int(suffix) if suffix.isdigit() else sizes.get(name, 32)
    in_chans = model.in_chans if hasattr(model, "in_chans") else len(model.sensor.pad_value)
    return torch.randn(1 if size >= 224 else 2, in_chans, size, size, generator=torch.Generator().manual_seed(0))


def output_of(model: torch.nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The output of the module at ``path`` during ``model.forward_features(x)`` (a ViT block's: its tokens)."""
    kept = []
    handle = model.get_submodule(path).register_forward_hook(lambda m, i, out: kept.append(out))
    try:
        model.forward_features(x)
    finally:
        handle.remove()
    out = kept[-1]
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.endswith("_224") else n
                                  for n in cvattn.list_models()])
def test_every_registered_model_trains_and_keeps_the_backbone_contract(name):
    torch.manual_seed(0)
    model = cvattn.create_model(name)
    x = natural_input(name, model).requires_grad_(True)
    logits = model(x)
    assert logits.shape[0] == x.shape[0] and logits.ndim == 2 and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0        # the backward pass reached the input
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    x = x.detach()
    if name in NOT_BACKBONES:
        assert not isinstance(model, FeatureBackbone) and not hasattr(model, "feature_info")
        with pytest.raises(ValueError, match=r"no feature maps, so no features_only backbone"):
            cvattn.create_model(name, features_only=True)
        return
    assert isinstance(model, FeatureBackbone)
    model.eval()
    info, size = model.feature_info, x.shape[-1]
    features = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(features), model(x))
    last = output_of(model, info[-1]["module"], x)
    if features.ndim == 4:      # CNNs: forward_features is exactly the named module's map
        torch.testing.assert_close(features, last, rtol=0, atol=0)
        assert features.shape[1] == info[-1]["num_chs"] and size // features.shape[-1] == info[-1]["reduction"]
    else:                       # ViTs: the named block's tokens after the final norm (timm's layout)
        torch.testing.assert_close(features, model.norm(last), rtol=0, atol=0)
        grid = size // info[-1]["reduction"]
        assert features.shape[1:] == (model.num_prefix_tokens + grid * grid, info[-1]["num_chs"])

    backbone = cvattn.create_model(name, features_only=True).eval()
    backbone.load_state_dict(model.state_dict(), strict=False)
    maps = backbone(x)
    assert backbone.feature_info == info
    # reduction: the total stride, so input size // map size (an unpadded convolution's map is a little smaller)
    assert [(m.shape[1], size // m.shape[-2], size // m.shape[-1]) for m in maps] == [
        (f["num_chs"], f["reduction"], f["reduction"]) for f in backbone.feature_info]
    if features.ndim == 4:
        torch.testing.assert_close(maps[-1], features)
    else:                       # the same block's patch tokens, as a (B, C, H/p, W/p) map
        patches = last[:, model.num_prefix_tokens:].transpose(1, 2).reshape(maps[-1].shape)
        torch.testing.assert_close(maps[-1], patches)
