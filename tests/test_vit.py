"""cvattn's Vision Transformer: parity with timm, the two attention paths, attention maps, local attention, errors."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

from cvattn.models import create_model, list_models
from cvattn.models.vit import DropPath, VisionTransformer, local_attention_mask

TINY_28 = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=3, num_heads=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pair_with_timm(**config) -> tuple[VisionTransformer, TimmViT]:
    """cvattn's model and timm's (dynamic image size, so other sizes run), same config and weights, eval mode."""
    theirs = TimmViT(dynamic_img_size=True, **config).eval()
    ours = VisionTransformer(**config).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("name, kwargs, size", [
    ("vit_tiny_patch16_224", dict(depth=2), 224),
    ("vit_tiny_patch16_224", dict(depth=2, global_pool="avg", num_classes=7), 224),
    ("vit_tiny_patch4_28", dict(depth=4), 28),
])
def test_timm_weights_give_timm_logits(name, kwargs, size):
    ours = create_model(name, **kwargs).eval()
    config = {k: getattr(ours, k) for k in ("in_chans", "num_classes", "global_pool", "embed_dim")}
    theirs = TimmViT(img_size=size, patch_size=ours.patch_embed.patch_size[0], depth=len(ours.blocks),
                     num_heads=ours.blocks[0].attn.num_heads, **config).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, ours.in_chans, size, size)
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.forward_attention(x)[0], expected, atol=1e-5, rtol=0)


def test_registered_configs_match_timm_names():
    assert {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_tiny_patch4_28",
            "vit_tiny_patch4_32", "vit_small_patch4_32"} <= set(list_models("vit_*"))
    for name in ("vit_small_patch16_224", "vit_base_patch16_224"):
        with torch.device("meta"):
            ours, theirs = create_model(name), timm.create_model(name, pretrained=False)
        assert ({k: v.shape for k, v in ours.state_dict().items()}
                == {k: v.shape for k, v in theirs.state_dict().items()})
    # omihub777/ViT-CIFAR's from-scratch model has 6.3M parameters.
    params = sum(p.numel() for p in create_model("vit_small_patch4_32").parameters())
    assert 6.2e6 < params < 6.4e6


def test_attention_weights_equal_timm_explicit_path():
    ours, theirs = _pair_with_timm(**TINY_28)
    captured = []
    for block in theirs.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        theirs(x)
        _, attn = ours.forward_attention(x)
    torch.testing.assert_close(attn, torch.stack(captured, dim=1), atol=1e-6, rtol=0)


def test_attention_written_out_by_hand():
    model = VisionTransformer(**TINY_28).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        _, attn = model.forward_attention(x)
        tokens, _, _ = model._embed(x)
        block = model.blocks[0]
        w_q, w_k, _ = block.attn.qkv.weight.chunk(3)
        b_q, b_k, _ = block.attn.qkv.bias.chunk(3)
        h = block.norm1(tokens)
        q = (h @ w_q.T + b_q).unflatten(-1, (3, 16)).transpose(1, 2)            # (B, heads, T, 16)
        k = (h @ w_k.T + b_k).unflatten(-1, (3, 16)).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-2, -1) / 16 ** 0.5, dim=-1)
    torch.testing.assert_close(attn[:, 0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("local_window", [None, 1])
def test_fused_and_explicit_paths_agree(local_window):
    model = VisionTransformer(**TINY_28, local_window=local_window).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        tokens, mask, _ = model._embed(x)
        for block in model.blocks:
            fused, no_weights = block.attn(block.norm1(tokens), mask)
            explicit, weights = block.attn(block.norm1(tokens), mask, need_weights=True)
            assert no_weights is None and weights is not None
            torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)
            tokens, _ = block(tokens, mask)
        torch.testing.assert_close(model.forward_attention(x)[0], model(x), atol=1e-5, rtol=0)


def test_attention_shape_and_rows_sum_to_one_in_training_mode_too():
    model = VisionTransformer(**TINY_28, attn_drop_rate=0.5, drop_path_rate=0.2).train()
    logits, attn = model.forward_attention(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    assert attn.shape == (4, 3, 3, 50, 50)                                       # (B, layers, heads, T, T)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 3, 3, 50))


def test_gradients_reach_the_attention_maps():
    model = VisionTransformer(**TINY_28).eval()
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    logits, maps = model.forward_attention(x, stack=False)
    assert len(maps) == 3 and maps[0].shape == (2, 3, 50, 50)
    grads = torch.autograd.grad(logits[:, 4].sum(), maps)
    assert all(g.shape == m.shape and g.abs().sum() > 0 for g, m in zip(grads, maps))
    # With class-token pooling only the class token's output of the last block reaches the head.
    assert grads[-1][:, :, 1:].abs().max() == 0 and grads[-1][:, :, 0].abs().max() > 0

    # The stacked maps are in the graph too: a loss on them trains the model and reaches the input.
    _, attn = model.forward_attention(x)
    attn[:, :, :, 0, 1:].max(-1).values.sum().backward()
    assert x.grad.abs().sum() > 0 and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_drop_path_drops_whole_samples_in_training_only():
    drop = DropPath(0.25).train()
    out = drop(torch.ones(4000, 5, 3))
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    assert 0.2 < (per_sample[:, 0] == 0).float().mean() < 0.3
    x = torch.randn(8, 5, 3)
    assert drop.eval()(x) is x


def test_ordinary_forward_stays_fused(monkeypatch):
    model = VisionTransformer(**TINY_28).eval()
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    x = torch.randn(1, 1, 28, 28)
    model(x)
    assert len(calls) == 3
    model.forward_attention(x)
    assert len(calls) == 3


@pytest.mark.parametrize("size", [(32, 32), (20, 36)])
def test_other_input_sizes_resample_pos_embed_like_timm(size):
    ours, theirs = _pair_with_timm(**TINY_28)
    x = torch.randn(2, 1, *size)
    grid = ours.grid_size_for(size)
    assert grid == (size[0] // 4, size[1] // 4) and ours.patch_embed.grid_size == (7, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
        logits, attn = ours.forward_attention(x)
    tokens = 1 + grid[0] * grid[1]
    assert attn.shape == (2, 3, 3, tokens, tokens)
    torch.testing.assert_close(logits, theirs(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("output_fmt", ["NCHW", "NLC"])
def test_forward_intermediates_match_timm(output_fmt):
    ours, theirs = _pair_with_timm(**TINY_28)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, intermediates = ours.forward_intermediates(x, output_fmt=output_fmt)
        timm_final, timm_intermediates = theirs.forward_intermediates(x, output_fmt=output_fmt)
        torch.testing.assert_close(final, ours.forward_features(x), atol=0, rtol=0)
        torch.testing.assert_close(final, timm_final, atol=1e-5, rtol=0)
        assert len(intermediates) == 3
        for mine, reference in zip(intermediates, timm_intermediates):
            assert mine.shape == ((2, 48, 7, 7) if output_fmt == "NCHW" else (2, 49, 48))
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
        only = ours.forward_intermediates(x, indices=[0, -2], norm=True, intermediates_only=True)
        timm_only = theirs.forward_intermediates(x, indices=[0, -2], norm=True, intermediates_only=True)
    assert len(only) == 2
    for mine, reference in zip(only, timm_only):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)


def test_features_only_returns_block_maps():
    backbone = VisionTransformer(**TINY_28, features_only=True, out_indices=(0, 2)).eval()
    full = VisionTransformer(**TINY_28).eval()
    backbone.load_state_dict(full.state_dict(), strict=False)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        maps = backbone(x)
        expected = full.forward_intermediates(x, intermediates_only=True)
    assert [info["module"] for info in backbone.feature_info] == ["blocks.0", "blocks.2"]
    assert all(info["num_chs"] == 48 and info["reduction"] == 4 for info in backbone.feature_info)
    assert [m.shape for m in maps] == [(2, 48, 7, 7)] * 2
    torch.testing.assert_close(maps, [expected[0], expected[2]], atol=0, rtol=0)
    assert not any(k.startswith("head") for k in backbone.state_dict())


def test_local_attention_masks_far_patches_exactly():
    window = 1
    model = VisionTransformer(**TINY_28, local_window=window).eval()
    with torch.no_grad():
        _, attn = model.forward_attention(torch.randn(2, 1, 28, 28))
    rows, cols = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    far = torch.maximum((rows[:, None] - rows).abs(), (cols[:, None] - cols).abs()) > window   # (49, 49)
    patches = attn[..., 1:, 1:]
    assert (patches[..., far] == 0).all()
    assert (patches[..., ~far] > 0).all()
    assert (attn[..., 0, :] > 0).all() and (attn[..., :, 0] > 0).all()          # class token: global
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    # Patch (3, 3) sees its 3×3 neighbourhood plus the class token.
    assert local_attention_mask((7, 7), window)[1 + 3 * 7 + 3].sum() == 1 + 9


def test_local_window_covering_the_grid_is_global_attention():
    local = VisionTransformer(**TINY_28, local_window=6).eval()
    global_ = VisionTransformer(**TINY_28).eval()
    global_.load_state_dict(local.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(local(x), global_(x), atol=1e-5, rtol=0)


def test_pretrained_copies_timm_weights(monkeypatch):
    reference = {}

    def fake_create_model(name, pretrained=False, **kwargs):
        reference.update(name=name, pretrained=pretrained, kwargs=kwargs)
        reference["model"] = TimmViT(**{**dict(patch_size=16, embed_dim=192, num_heads=3), **kwargs})
        return reference["model"]

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = create_model("vit_tiny_patch16_224", pretrained=True, depth=2, num_classes=5, local_window=2,
                         attn_score="scaled_dot", stem_channels=())
    assert reference["name"] == "vit_tiny_patch16_224" and reference["pretrained"] is True
    assert reference["kwargs"] == dict(depth=2, num_classes=5)                  # cvattn-only options stay here
    for key, value in reference["model"].state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0)


def test_bad_configurations_name_the_values():
    with pytest.raises(ValueError, match=r"img_size \(30, 30\) is not divisible by patch_size 4"):
        VisionTransformer(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="embed_dim=100 is not divisible by num_heads=3"):
        VisionTransformer(img_size=28, patch_size=4, embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="Unknown global_pool 'avgs'. Did you mean 'avg'"):
        VisionTransformer(**{**TINY_28, "global_pool": "avgs"})
    with pytest.raises(ValueError, match="'drop_path_rate': 1.0"):
        VisionTransformer(**TINY_28, drop_path_rate=1.0)
    with pytest.raises(ValueError, match="local_window"):
        VisionTransformer(**TINY_28, local_window=-1)
    with pytest.raises(ValueError, match=r"Block indices \[5\] out of range for depth 3"):
        VisionTransformer(**TINY_28, features_only=True, out_indices=[5])
    with pytest.raises(ValueError, match=r"Block indices are empty: give at least one of 0..2"):
        VisionTransformer(**TINY_28).forward_intermediates(torch.randn(1, 1, 28, 28), indices=[],
                                                           intermediates_only=True)
    with pytest.raises(ValueError, match="patch_size must be a positive number of pixels, got 0"):
        VisionTransformer(img_size=28, patch_size=0)
    with pytest.raises(ValueError, match="num_heads must be ≥ 1, got 0"):
        VisionTransformer(**{**TINY_28, "num_heads": 0})
    with pytest.raises(ValueError, match="No pretrained weights for 'vit_tiny_patch4_28'"):
        create_model("vit_tiny_patch4_28", pretrained=True)


def test_bad_inputs_name_the_values():
    model = VisionTransformer(**TINY_28)
    with pytest.raises(ValueError, match=r"in_chans=1 .* shape \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"Input size \(30, 28\) is not divisible by patch_size 4"):
        model.forward_attention(torch.randn(2, 1, 30, 28))
    with pytest.raises(ValueError, match="Unknown output_fmt 'NHWC'"):
        model.forward_intermediates(torch.randn(2, 1, 28, 28), output_fmt="NHWC")


def test_foreign_state_dict_error_names_keys_and_shapes():
    model = VisionTransformer(**TINY_28)
    with pytest.raises(ValueError, match=r"missing keys: 1 \(e\.g\. blocks\.0\.attn\.proj\.bias\); "
                                         r"unexpected keys: 1 \(e\.g\. conv1\.weight"):
        model.load_state_dict({"conv1.weight": torch.zeros(1), **{k: v for k, v in model.state_dict().items()
                                                                   if k != "blocks.0.attn.proj.bias"}})
    wider = VisionTransformer(**{**TINY_28, "embed_dim": 96})
    with pytest.raises(ValueError, match=r"keys of another shape: \d+ \(e\.g\. blocks\.0\.attn\.proj\.bias \(96,\) in "
                                         r"the checkpoint vs \(48,\) in the model"):
        model.load_state_dict(wider.state_dict())
    with pytest.raises(ValueError, match="unexpected keys"):
        model.load_state_dict(create_model("resnet20").state_dict())


@pytest.mark.parametrize("patch_size, stem, strides, projection", [
    (16, [8, 16, 32, 64], [2, 2, 2, 2], 1),   # Xiao et al.'s stem: stride-2 convolutions, then a 1×1 projection
    (10, [16, 32], [2, 1], 5),                # 10 = 2 · 5: one halving, then the 5×5 projection covers the rest
    (4, [8], [2], 2),
])
def test_conv_stem_covers_the_patch_exactly(patch_size, stem, strides, projection):
    size = 4 * patch_size
    model = VisionTransformer(img_size=size, patch_size=patch_size, in_chans=1, num_classes=3, embed_dim=24,
                              depth=2, num_heads=2, stem_channels=stem).eval()
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == strides and [c.out_channels for c in convs] == stem
    assert model.patch_embed.proj.kernel_size == (projection, projection) == model.patch_embed.proj.stride
    x = torch.randn(2, 1, size, size)
    tokens = model.patch_embed(x)
    assert tokens.shape == (2, 16, 24) and model.grid_size_for((size, size)) == (4, 4)
    # token r·4 + c depends on patch (r, c) and, through the 3×3 convolutions, a few pixels around it only
    changed = x.clone()
    changed[..., :patch_size, :patch_size] += 1.0                      # patch (0, 0)
    moved = (model.patch_embed(changed) - tokens).abs().sum(-1).reshape(2, 4, 4)     # (B, rows, columns)
    assert (moved[:, 0, 0] > 0).all() and (moved[:, 2:, :] == 0).all() and (moved[:, :, 2:] == 0).all()
    with torch.no_grad():
        logits, attn = model.forward_attention(x)
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    assert attn.shape == (2, 2, 2, 17, 17)


def test_conv_stem_bad_values_are_named():
    with pytest.raises(ValueError, match=r"stem_channels must be positive widths .* got \[16, 0\]"):
        VisionTransformer(**TINY_28, stem_channels=[16, 0])
    with pytest.raises(ValueError, match=r"pretrained=True needs stem_channels=\(\)"):
        create_model("vit_tiny_patch16_224", pretrained=True, stem_channels=[8])
