"""Saliency for timm, torchvision and Hugging Face models: the same maps as cvattn's twins holding the same weights,
the model left as it was (fused attention on, no hooks, train/eval modes), clear errors for what does not apply."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from cvattn.layers import create_attn
from cvattn.models.vit import VisionTransformer
from cvattn.saliency import available_methods, saliency
from cvattn.saliency.adapters import adapt
from cvattn.saliency.methods.gradcam import default_layer
from cvattn.saliency.registry import METHODS

VIT_METHODS = ("attention", "rollout", "grad_rollout", "gradcam", "gradcam++")
SMALL_VIT = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=48, depth=3, num_heads=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _state(model: nn.Module) -> dict:
    """Everything saliency must leave as it was: modes, hooks, timm's fused flags, torchvision's forwards."""
    return {
        "training": [m.training for m in model.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "fused": [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")],
        "instance_forwards": sum("forward" in m.__dict__ for m in model.modules()),
        "grads": [p.grad for p in model.parameters() if p.grad is not None],
        "weights": [p.detach().clone() for p in model.state_dict().values()],
    }


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _state(model)
    for key in ("training", "hooks", "fused", "instance_forwards", "grads"):
        assert after[key] == before[key], key
    for old, new in zip(before["weights"], after["weights"]):
        assert torch.equal(old, new)


def _maps_equal(theirs: nn.Module, ours: nn.Module, images: torch.Tensor, methods=VIT_METHODS, atol=1e-6) -> None:
    targets = torch.arange(images.shape[0]) % 10      # fixed targets: no argmax tie can differ between the two
    for method in methods:
        torch.testing.assert_close(saliency(theirs, images, method, target=targets),
                                   saliency(ours, images, method, target=targets), atol=atol, rtol=0, msg=method)


# --- timm ViTs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_timm_vit_maps_equal_cvattn_vit_with_the_same_weights(global_pool):
    theirs = TimmViT(global_pool=global_pool, **SMALL_VIT)
    ours = VisionTransformer(global_pool=global_pool, **SMALL_VIT).eval()
    ours.load_state_dict(theirs.state_dict())
    theirs.train()                                                # saliency runs it in eval mode, then restores
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = theirs.eval()(images)
    theirs.train()
    before = _state(theirs)
    assert all(before["fused"]) and len(before["fused"]) == SMALL_VIT["depth"]

    assert set(VIT_METHODS) <= set(available_methods(theirs))
    _maps_equal(theirs, ours, images)

    _assert_unchanged(before, theirs)
    with torch.no_grad():
        assert torch.equal(theirs.eval()(images), logits)        # the next (fused) forward is unchanged


def test_timm_vit_forward_attention_reads_the_forward_that_made_the_logits():
    model = TimmViT(**SMALL_VIT).eval()
    view = adapt(model)
    assert view is not model and isinstance(view, TimmViT) and adapt(view) is view
    assert dict(view.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert all(a is b for a, b in zip(view.parameters(), model.parameters()))     # shared, not copied
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    logits, maps = view.forward_attention(images, stack=False)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images), atol=1e-5, rtol=0)
    assert len(maps) == SMALL_VIT["depth"] and maps[0].shape == (2, 3, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 3, 17))
    grads = torch.autograd.grad(logits[:, 0].sum(), maps)                      # every map is in the graph
    assert all(g.abs().sum() > 0 for g in grads)
    assert all(block.attn.fused_attn for block in model.blocks)


def _hand_last_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ·scale) of the last block, head mean (B, T, T), from its input in a plain (fused) forward."""
    inputs = []
    attn = model.blocks[-1].attn
    handle = attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    tokens = inputs[0]
    B, T, _ = tokens.shape
    q, k, _ = attn.qkv(tokens).reshape(B, T, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1).mean(1).detach()


def test_timm_vit_as_a_new_user_creates_it():
    model = timm.create_model("vit_tiny_patch16_224", depth=4, num_classes=10)   # the depth only for speed
    images = torch.randn(1, 3, 224, 224)
    for method in ("attention", "rollout", "grad_rollout", "gradcam"):
        maps = saliency(model, images, method)
        assert maps.shape == (1, 224, 224) and maps.max() == 1 and maps.min() == 0


@pytest.mark.slow
def test_torchvision_vit_b_16_at_its_native_size():
    model = torchvision.models.vit_b_16(weights=None)
    before = _state(model)
    assert saliency(model, torch.randn(1, 3, 224, 224), "grad_rollout").shape == (1, 224, 224)
    _assert_unchanged(before, model)


@pytest.mark.parametrize("build, prefix, pool", [
    (lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=2, num_classes=10), 2, "token"),
    (lambda: TimmViT(reg_tokens=4, **SMALL_VIT), 5, "token"),
    (lambda: TimmViT(reg_tokens=2, class_token=False, global_pool="avg", **SMALL_VIT), 2, "avg"),
    (lambda: TimmViT(dynamic_img_size=True, **SMALL_VIT), 1, "token"),
])
def test_timm_vit_prefix_tokens_and_pooling(build, prefix, pool):
    model = build().eval()
    view = adapt(model)
    assert (view.num_prefix_tokens, view.global_pool) == (prefix, pool)
    size = 48 if model.dynamic_img_size else 32                  # dynamic size: another grid than the build one
    images = torch.randn(2, 3, size, size)
    grid = view.grid_size_for(images.shape[-2:])
    attn = _hand_last_attention(model, images)
    row = attn[:, 0, prefix:] if pool == "token" else attn[:, prefix:, prefix:].mean(1)
    raw = METHODS["attention"].fn(view, images, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(raw, row.reshape(2, *grid), atol=1e-6, rtol=0)
    assert saliency(model, images, "grad_rollout").shape == (2, size, size)


def test_timm_transformers_with_other_attention_get_a_clear_error():
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 1), num_classes=10)
    eva = timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1, num_classes=10)
    attention_pool = TimmViT(global_pool="map", **SMALL_VIT)
    for model, size in ((swin, 32), (eva, 28), (attention_pool, 32)):
        assert "attention" not in available_methods(model)
        with pytest.raises(ValueError, match=r"does not apply to .*Methods that apply to this model: 'gradcam'"):
            saliency(model, torch.randn(1, 3, size, size), "rollout")
    with pytest.raises(ValueError, match=r"channels-last \(NHWC\).*layer="):
        saliency(swin, torch.randn(1, 3, 32, 32), "gradcam")
    for model, size in ((eva, 28), (attention_pool, 32)):
        with pytest.raises(ValueError, match=r"attention cvattn does not read .* no token grid .*layer="):
            saliency(model, torch.randn(1, 3, size, size), "gradcam")
    layer = saliency(attention_pool, torch.randn(1, 3, 32, 32), "gradcam", layer="patch_embed.proj")
    assert layer.shape == (1, 32, 32)


def test_wrong_images_for_a_foreign_model_get_a_clear_error():
    vit = TimmViT(**SMALL_VIT)
    with pytest.raises(ValueError, match=r"takes 3-channel images; got 1 channels"):
        saliency(vit, torch.randn(1, 1, 32, 32), "attention")
    with pytest.raises(ValueError, match=r"built for 32×32 images .* got 64×64"):
        saliency(vit, torch.randn(1, 3, 64, 64), "rollout")
    resnet = torchvision.models.resnet18(weights=None, num_classes=10)
    with pytest.raises(ValueError, match=r"ResNet takes 3-channel images; got 4 channels"):
        saliency(resnet, torch.randn(1, 4, 64, 64), "gradcam")


# --- torchvision -------------------------------------------------------------------------------------------------

def _cvattn_from_torchvision(model: TorchvisionViT) -> VisionTransformer:
    renames = [("class_token", "cls_token"), ("conv_proj", "patch_embed.proj"), ("encoder.pos_embedding", "pos_embed"),
               ("encoder.layers.encoder_layer_", "blocks."), ("ln_1", "norm1"), ("ln_2", "norm2"),
               ("self_attention.in_proj_", "attn.qkv."), ("self_attention.out_proj", "attn.proj"),
               ("mlp.0", "mlp.fc1"), ("mlp.3", "mlp.fc2"), ("encoder.ln", "norm"), ("heads.head", "head")]
    state = {}
    for key, value in model.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        state[key] = value
    ours = VisionTransformer(img_size=model.image_size, patch_size=model.patch_size, num_classes=model.num_classes,
                             embed_dim=model.hidden_dim, depth=len(model.encoder.layers),
                             num_heads=model.encoder.layers[0].num_heads,
                             mlp_ratio=model.mlp_dim / model.hidden_dim)
    ours.load_state_dict(state)
    return ours.eval()


def test_torchvision_vit_maps_equal_cvattn_vit_with_the_same_weights():
    theirs = TorchvisionViT(image_size=32, patch_size=8, num_layers=3, num_heads=3, hidden_dim=48, mlp_dim=192,
                            num_classes=10)
    ours = _cvattn_from_torchvision(theirs)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(images), ours(images), atol=1e-5, rtol=0)
    before = _state(theirs)
    assert set(VIT_METHODS) <= set(available_methods(theirs))
    assert default_layer(adapt(theirs)) == "encoder.layers.encoder_layer_2.ln_1"
    _maps_equal(theirs, ours, images)
    _assert_unchanged(before, theirs)


@pytest.mark.parametrize("name, layer", [("resnet18", "layer4"), ("efficientnet_b0", "features"),
                                         ("convnext_tiny", "features")])
def test_torchvision_cnn_gradcam_finds_the_last_feature_map(name, layer):
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    assert default_layer(model) == layer
    images = torch.randn(2, 3, 64, 64)
    before = _state(model)
    torch.testing.assert_close(saliency(model, images, "gradcam", target=1),
                               saliency(model, images, "gradcam", target=1, layer=layer), atol=0, rtol=0)
    _assert_unchanged(before, model)


@pytest.mark.parametrize("name, layer", [("resnet18", "layer4"), ("efficientnet_b0", "bn2"),
                                         ("regnety_002", "s4"), ("convnext_atto", "stages")])
def test_timm_cnn_default_layer_is_the_last_feature_map(name, layer):
    model = timm.create_model(name, num_classes=10)
    assert default_layer(model) == layer
    assert saliency(model, torch.randn(1, 3, 64, 64), "gradcam").shape == (1, 64, 64)


# --- timm's attention CNNs ---------------------------------------------------------------------------------------

def _with_cvattn_blocks(model: nn.Module) -> nn.Module:
    """A copy whose timm SE/ECA/CBAM blocks are cvattn's timm-convention blocks holding the same weights."""
    twin = copy.deepcopy(model)
    for path, block in list(twin.named_modules()):
        kind = type(block).__name__
        if kind == "SEModule":
            ours = create_attn("se_timm", block.fc1.in_channels, rd_channels=block.fc1.out_channels)
        elif kind == "EcaModule":
            channels = twin.get_submodule(path.rsplit(".", 1)[0]).bn2.num_features
            ours = create_attn("eca", channels, kernel_size=block.conv.kernel_size[0])
        elif kind == "CbamModule":
            ours = create_attn("cbam_timm", block.channel.fc1.in_channels, rd_channels=block.channel.fc1.out_channels)
        else:
            continue
        ours.load_state_dict(block.state_dict())
        parent, name = path.rsplit(".", 1)
        setattr(twin.get_submodule(parent), name, ours)
    return twin.eval()


@pytest.mark.parametrize("build, methods", [
    (lambda: timm.create_model("seresnet18", num_classes=10), ["channel_gate"]),
    (lambda: timm.create_model("resnet18d", block_args=dict(attn_layer="eca"), num_classes=10), ["channel_gate"]),
    (lambda: timm.create_model("resnet18d", block_args=dict(attn_layer="cbam"), num_classes=10),
     ["channel_gate", "spatial_gate"]),
])
def test_timm_gate_maps_equal_cvattn_blocks_with_the_same_weights(build, methods):
    theirs = build().eval()
    ours = _with_cvattn_blocks(theirs)
    assert not any(type(m).__module__.startswith("timm.layers") and hasattr(m, "gate") for m in ours.modules())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(theirs(images), ours(images), atol=1e-5, rtol=0)
    before = _state(theirs)
    assert sorted(m for m in available_methods(theirs) if m.endswith("_gate")) == methods
    for method in methods:
        for blocks in (None, "layer3"):
            torch.testing.assert_close(saliency(theirs, images, method, blocks=blocks),
                                       saliency(ours, images, method, blocks=blocks), atol=1e-6, rtol=0)
    _assert_unchanged(before, theirs)


def test_efficientnet_squeeze_excite_gives_channel_gate_maps():
    for model in (timm.create_model("efficientnet_b0", num_classes=10),
                  torchvision.models.efficientnet_b0(weights=None, num_classes=10)):
        assert "channel_gate" in available_methods(model)
        assert saliency(model, torch.randn(1, 3, 64, 64), "channel_gate").shape == (1, 64, 64)


# --- Hugging Face ------------------------------------------------------------------------------------------------

def _hf_pair(kind: str):
    transformers = pytest.importorskip("transformers", reason="the optional extra cvattn[hf]")
    config_class = getattr(transformers, f"{kind}Config")
    config = config_class(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=192,
                          image_size=32, patch_size=8, num_labels=10, layer_norm_eps=1e-6)
    theirs = getattr(transformers, f"{kind}ForImageClassification")(config).eval()
    return theirs


def _cvattn_from_hf(model: nn.Module) -> VisionTransformer:
    state = model.state_dict()
    depth = model.config.num_hidden_layers
    prefix = model.base_model_prefix
    blocks = next(key for key in state if ".0.layernorm_before" in key).split(".0.layernorm_before")[0]
    ours = {"cls_token": state[f"{prefix}.embeddings.cls_token"],
            "pos_embed": state[f"{prefix}.embeddings.position_embeddings"],
            "norm.weight": state[f"{prefix}.layernorm.weight"], "norm.bias": state[f"{prefix}.layernorm.bias"],
            "head.weight": state["classifier.weight"], "head.bias": state["classifier.bias"]}
    for end in ("weight", "bias"):
        ours[f"patch_embed.proj.{end}"] = state[f"{prefix}.embeddings.patch_embeddings.projection.{end}"]
        for i in range(depth):
            hf = f"{blocks}.{i}"
            ours[f"blocks.{i}.attn.qkv.{end}"] = torch.cat([state[f"{hf}.attention.{p}_proj.{end}"] for p in "qkv"])
            for mine, theirs in (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"),
                                 ("norm2", "layernorm_after"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                ours[f"blocks.{i}.{mine}.{end}"] = state[f"{hf}.{theirs}.{end}"]
    cvattn_vit = VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=48, depth=depth, num_heads=3)
    cvattn_vit.load_state_dict(ours)
    return cvattn_vit.eval()


def test_hugging_face_vit_maps_equal_cvattn_vit_with_the_same_weights():
    theirs = _hf_pair("ViT")
    ours = _cvattn_from_hf(theirs)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixel_values=images).logits, ours(images), atol=1e-5, rtol=0)
    implementation = theirs.config._attn_implementation
    before = _state(theirs)
    assert set(VIT_METHODS) <= set(available_methods(theirs))
    _maps_equal(theirs, ours, images, atol=1e-5)
    _assert_unchanged(before, theirs)
    assert theirs.config._attn_implementation == implementation


def test_hugging_face_deit_reads_the_class_token_after_two_prefix_tokens():
    model = _hf_pair("DeiT")
    view = adapt(model)
    assert view.num_prefix_tokens == 2
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.config._attn_implementation = "eager"
        attentions = model(pixel_values=images, output_attentions=True).attentions
        model.config._attn_implementation = "sdpa"
    expected = attentions[-1].mean(1)[:, 0, 2:].reshape(2, 4, 4)
    raw = METHODS["attention"].fn(view, images, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(raw, expected, atol=1e-6, rtol=0)
    assert saliency(model, images, "grad_rollout").shape == (2, 32, 32)


def test_other_hugging_face_classifiers_get_gradcam_on_their_logits():
    transformers = pytest.importorskip("transformers", reason="the optional extra cvattn[hf]")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    model = transformers.ResNetForImageClassification(config).eval()
    view = adapt(model)
    assert adapt(view) is view and view.adapted_model is model
    assert available_methods(model)[:2] == ["gradcam", "gradcam++"]
    images = torch.randn(2, 3, 64, 64)
    layer = default_layer(view)
    assert view.get_submodule(layer) is model.get_submodule(layer)
    before = _state(model)
    torch.testing.assert_close(saliency(model, images, "gradcam", target=3),
                               saliency(model, images, "gradcam", target=3, layer=layer), atol=0, rtol=0)
    _assert_unchanged(before, model)
