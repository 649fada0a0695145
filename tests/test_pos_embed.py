"""The ViT's position encodings: the sinusoidal table against its formula and timm, 'none', 'learned' unchanged,
other grids, checkpoints and bad names."""
from __future__ import annotations

import math

import pytest
import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT

from cvattn.layers.pos_embed import sincos_1d, sincos_2d
from cvattn.models import create_model
from cvattn.models.vit import VisionTransformer

TINY_28 = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=3, num_heads=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _vaswani(pos: int, channel: int, dim: int) -> float:
    """Vaswani et al. 2017, section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    i = channel // 2
    angle = pos / 10000 ** (2 * i / dim)
    return math.sin(angle) if channel % 2 == 0 else math.cos(angle)


def test_1d_table_is_the_papers_formula():
    dim = 10
    table = sincos_1d(torch.arange(60), dim)
    expected = torch.tensor([[_vaswani(pos, c, dim) for c in range(dim)] for pos in range(60)])
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=0)
    assert table[0, 0::2].eq(0).all() and table[0, 1::2].eq(1).all()            # sin 0 = 0, cos 0 = 1


def test_2d_table_is_row_then_column_and_zero_for_the_class_token():
    height, width, dim = 3, 5, 16
    table = sincos_2d((height, width), dim)
    assert table.shape == (1, 1 + height * width, dim)
    assert table[0, 0].eq(0).all()                                               # class token
    for r in range(height):
        for c in range(width):
            token = table[0, 1 + r * width + c]
            expected = [_vaswani(r, k, dim // 2) for k in range(dim // 2)] + \
                       [_vaswani(c, k, dim // 2) for k in range(dim // 2)]
            torch.testing.assert_close(token, torch.tensor(expected), atol=1e-6, rtol=0)
    # Two prefix tokens: two zero rows, the grid unchanged.
    torch.testing.assert_close(sincos_2d((height, width), dim, num_prefix_tokens=2)[:, 1:], table)


def test_2d_table_equals_timms_up_to_the_order_of_sin_and_cos():
    # timm's build_sincos2d_pos_embed(interleave_sin_cos=True) is MAE's layout: per axis (rows, then columns) all
    # sines, then all cosines, at the same frequencies 1 / 10000^(k / (dim/4)) = 1 / 10000^(2k / (dim/2)). Ours
    # interleaves sin/cos within each axis, as the paper does: the same numbers, channels permuted.
    grid, dim = (6, 4), 32
    quarter = dim // 4
    interleave = torch.arange(2 * quarter).view(2, quarter).T.flatten()          # sin0, cos0, sin1, cos1, ...
    order = torch.cat([interleave, interleave + 2 * quarter])
    theirs = build_sincos2d_pos_embed(list(grid), dim, interleave_sin_cos=True)  # (H·W, dim)
    torch.testing.assert_close(sincos_2d(grid, dim)[0, 1:], theirs[:, order], atol=1e-6, rtol=0)


def test_sinusoidal_model_adds_the_fixed_table_and_learns_nothing_there():
    model = VisionTransformer(**TINY_28, pos_embed="sinusoidal")
    assert "pos_embed" not in dict(model.named_parameters()) and "pos_embed" not in model.state_dict()
    torch.testing.assert_close(model.pos_embed, sincos_2d((7, 7), 48), atol=0, rtol=0)
    x = torch.randn(2, 1, 28, 28)
    tokens, _, _ = model._embed(x)
    expected = torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], dim=1) + sincos_2d((7, 7), 48)
    torch.testing.assert_close(tokens, expected, atol=0, rtol=0)
    # A training step moves the weights, not the table; the table follows the model's dtype.
    torch.optim.SGD(model.parameters(), lr=1.0).zero_grad()
    model(x).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= p.grad if p.grad is not None else 0
    torch.testing.assert_close(model.pos_embed, sincos_2d((7, 7), 48), atol=0, rtol=0)
    assert model.double().pos_embed.dtype == torch.float64


def test_sinusoidal_model_gives_timms_logits_with_the_table_as_its_pos_embed():
    ours = VisionTransformer(**TINY_28, pos_embed="sinusoidal").eval()
    theirs = TimmViT(**TINY_28).eval()
    theirs.load_state_dict({**ours.state_dict(), "pos_embed": ours.pos_embed})
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_none_adds_nothing_and_matches_timms_none():
    ours = VisionTransformer(**TINY_28, pos_embed="none").eval()
    assert ours.pos_embed is None and not any("pos_embed" in key for key in ours.state_dict())
    x = torch.randn(2, 1, 28, 28)
    tokens, _, _ = ours._embed(x)
    torch.testing.assert_close(tokens, torch.cat([ours.cls_token.expand(2, -1, -1), ours.patch_embed(x)], dim=1),
                               atol=0, rtol=0)
    theirs = TimmViT(**TINY_28, pos_embed="none").eval()
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_without_position_encoding_shuffling_the_patches_changes_nothing():
    # With no position information and a mean over the patch tokens, the model sees a set of patches: shuffling
    # the 4×4 patches of the image leaves the logits as they were. With either encoding it does not.
    x = torch.randn(2, 1, 28, 28)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 1, 49, 4, 4)          # (B, 1, 49, 4, 4), row-major
    shuffled = patches[:, :, torch.randperm(49)].reshape(2, 1, 7, 7, 4, 4).permute(0, 1, 2, 4, 3, 5)
    shuffled = shuffled.reshape(2, 1, 28, 28)
    for pos_embed, invariant in (("none", True), ("sinusoidal", False), ("learned", False)):
        model = VisionTransformer(**TINY_28, global_pool="avg", pos_embed=pos_embed).eval()
        with torch.no_grad():
            same = torch.allclose(model(shuffled), model(x), atol=1e-5, rtol=0)
        assert same == invariant, pos_embed


def test_learned_is_the_default_and_unchanged():
    default = VisionTransformer(**TINY_28)
    torch.manual_seed(0)
    learned = VisionTransformer(**TINY_28, pos_embed="learned")
    assert isinstance(learned.pos_embed, torch.nn.Parameter) and learned.pos_embed.shape == (1, 50, 48)
    assert list(learned.state_dict()) == list(TimmViT(**TINY_28).state_dict())
    for (key, a), b in zip(default.state_dict().items(), learned.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=key)
    assert 0.015 < learned.pos_embed.std() < 0.025                               # trunc_normal_(std=0.02) as in timm


def test_sinusoidal_on_another_grid_is_recomputed_and_keeps_each_patchs_code():
    model = VisionTransformer(**TINY_28, pos_embed="sinusoidal").eval()
    table = model.pos_embed_for((9, 5))                                          # a 36×20 image
    torch.testing.assert_close(table, sincos_2d((9, 5), 48), atol=0, rtol=0)
    own = model.pos_embed[0, 1:].reshape(7, 7, 48)
    torch.testing.assert_close(table[0, 1:].reshape(9, 5, 48)[:7], own[:, :5], atol=0, rtol=0)
    # Same as a model built for that size with the same weights (the checkpoint holds no table).
    other = VisionTransformer(**{**TINY_28, "img_size": (36, 20)}, pos_embed="sinusoidal").eval()
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 36, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x), other(x), atol=0, rtol=0)
        logits, attn = model.forward_attention(x)
    assert attn.shape == (2, 3, 3, 46, 46)
    torch.testing.assert_close(logits, other(x), atol=1e-5, rtol=0)


def test_learned_on_another_grid_is_resampled_and_none_needs_nothing():
    learned = VisionTransformer(**TINY_28).eval()
    resampled = learned.pos_embed_for((9, 5))
    assert resampled.shape == (1, 46, 48)
    torch.testing.assert_close(resampled[:, 0], learned.pos_embed[:, 0], atol=0, rtol=0)   # class token kept
    assert learned.pos_embed_for((7, 7)) is learned.pos_embed
    none = VisionTransformer(**TINY_28, pos_embed="none").eval()
    assert none.pos_embed_for((9, 5)) is None
    assert none(torch.randn(1, 1, 36, 20)).shape == (1, 10)


def test_checkpoints_round_trip_and_a_foreign_encoding_is_named(tmp_path):
    x = torch.randn(2, 1, 28, 28)
    for pos_embed in ("learned", "sinusoidal", "none"):
        model = VisionTransformer(**TINY_28, pos_embed=pos_embed).eval()
        torch.save(model.state_dict(), tmp_path / f"{pos_embed}.pt")
        torch.manual_seed(1)
        restored = VisionTransformer(**TINY_28, pos_embed=pos_embed).eval()
        restored.load_state_dict(torch.load(tmp_path / f"{pos_embed}.pt", weights_only=True))
        with torch.no_grad():
            torch.testing.assert_close(restored(x), model(x), atol=0, rtol=0)
    learned = torch.load(tmp_path / "learned.pt", weights_only=True)
    with pytest.raises(ValueError, match=r"pos_embed='sinusoidal'\): unexpected keys: 1 \(e\.g\. pos_embed\)"):
        VisionTransformer(**TINY_28, pos_embed="sinusoidal").load_state_dict(learned)
    with pytest.raises(ValueError, match=r"pos_embed='learned'\): missing keys: 1 \(e\.g\. pos_embed\)"):
        VisionTransformer(**TINY_28).load_state_dict(torch.load(tmp_path / "sinusoidal.pt", weights_only=True))


def test_bad_names_and_sizes_say_what_is_accepted():
    with pytest.raises(ValueError, match=r"Unknown pos_embed 'learn'. Did you mean 'learned'\? Accepted: 'learned', "
                                         r"'sinusoidal', 'none'"):
        VisionTransformer(**TINY_28, pos_embed="learn")
    with pytest.raises(ValueError, match=r"Unknown pos_embed 'sinusiodal'. Did you mean 'sinusoidal'"):
        create_model("vit_tiny_patch4_28", pos_embed="sinusiodal")
    with pytest.raises(ValueError, match="embed_dim divisible by 4 .* got 42"):
        VisionTransformer(**{**TINY_28, "embed_dim": 42}, pos_embed="sinusoidal")
    with pytest.raises(ValueError, match="even number of channels .* got 5"):
        sincos_1d(torch.arange(3), 5)
    with pytest.raises(ValueError, match="pretrained=True needs pos_embed='learned'"):
        create_model("vit_tiny_patch16_224", pretrained=True, pos_embed="sinusoidal")
